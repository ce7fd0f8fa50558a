"""Vectorised rendering of columns into delimited text lines, and writing them to files.

The generator renders millions of lines per chunk, so nothing here loops per line in
Python: columns are pyarrow string arrays, joined element-wise in C++, and the joined
array's character buffer is written to the file as one block.
"""
from __future__ import annotations

from typing import BinaryIO, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Rows are rendered and written in slices of this many lines, which keeps string buffers
# well below pyarrow's 2 GiB limit for 32-bit offsets and bounds the memory they take.
WRITE_SLICE_ROWS = 1_000_000


def csv_field(value: str) -> str:
    """Quote one value the way a standard CSV writer does (only when it has to)."""
    if any(ch in value for ch in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def quoted(value: str) -> str:
    """Quote one value always, as the Berka files do for every string column."""
    return '"' + value.replace('"', '""') + '"'


def int_text(values: np.ndarray) -> pa.Array:
    """Decimal text of integers."""
    return pc.cast(pa.array(np.asarray(values, dtype=np.int64)), pa.string())


def cents_text(cents: np.ndarray) -> pa.Array:
    """Text with exactly two decimals of amounts held as integer cents (sign kept)."""
    cents = np.asarray(cents, dtype=np.int64)
    magnitude = np.abs(cents)
    whole = int_text(magnitude // 100)
    fraction = pc.utf8_lpad(int_text(magnitude % 100), 2, "0")
    negative = cents < 0
    if not negative.any():
        return pc.binary_join_element_wise(whole, fraction, ".")
    sign = pc.if_else(pa.array(negative), pa.scalar("-"), pa.scalar(""))
    return pc.binary_join_element_wise(sign, whole, ".", fraction, "")


def take_text(rendered: Sequence[str], index: np.ndarray) -> pa.Array:
    """Pick pre-rendered strings by index (codes, descriptions, dates...)."""
    return pa.array(list(rendered), type=pa.string()).take(pa.array(np.asarray(index, dtype=np.int64)))


def join_fields(fields: Sequence[pa.Array], separator: str) -> pa.Array:
    """Join columns element-wise into lines (no line terminator added)."""
    return pc.binary_join_element_wise(*fields, separator)


def lines_bytes(lines: pa.Array) -> pa.Buffer:
    """The characters of all lines, back to back, as one buffer (no copy)."""
    lines = lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines
    if len(lines) == 0:
        return pa.py_buffer(b"")
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)
    start, stop = offsets[lines.offset], offsets[lines.offset + len(lines)]
    return lines.buffers()[2][start:stop]


def write_lines(handle: BinaryIO, lines: pa.Array, overrides: dict[int, str] | None = None) -> None:
    """Write lines that already end with their terminator; ``overrides`` replace a few rows."""
    if not overrides:
        handle.write(memoryview(lines_bytes(lines)))
        return
    start = 0
    for row in sorted(overrides):
        handle.write(memoryview(lines_bytes(lines.slice(start, row - start))))
        handle.write(overrides[row].encode())
        start = row + 1
    handle.write(memoryview(lines_bytes(lines.slice(start))))
