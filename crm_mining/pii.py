"""Pseudonymisation: customer ids become keyed hashes (HMAC-SHA256) computed inside Spark.

The key comes from the environment (``CRM_PII_KEY`` by default), never from a file, so the
outputs cannot be joined back to raw ids without it. HMAC is built from Spark's own ``sha2``
on the padded key (RFC 2104), so no Python UDF runs per row and no id leaves the executors.
The padded key enters the query as a scalar subquery over a one-row table, never as a literal:
literals print in every plan (``explain``, the Spark UI, event logs kept by a history server),
and the pads give the key back with one XOR.
"""
from __future__ import annotations

import hashlib
import logging
import os
import weakref

from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F

log = logging.getLogger(__name__)

#: Publicly known key used only in demo mode; outputs made with it are not protected.
DEMO_KEY = "crm-mining-demo-key-not-secret"

_BLOCK = 64  # SHA-256 block size in bytes


class MissingKeyError(RuntimeError):
    """No pseudonymisation key in the environment outside demo mode."""


def resolve_key(*, key_env: str = "CRM_PII_KEY", demo: bool = False) -> bytes:
    """Return the HMAC key from ``key_env``; in demo mode fall back to :data:`DEMO_KEY` loudly."""
    value = os.environ.get(key_env)
    if value:
        return value.encode("utf-8")
    if demo:
        log.warning(
            "DEMO MODE: customer ids are pseudonymised with the public demo key; "
            "set %s for real data", key_env,
        )
        return DEMO_KEY.encode("utf-8")
    raise MissingKeyError(
        f"environment variable {key_env} is not set: it holds the key that pseudonymises "
        f"customer ids (HMAC-SHA256). Set it (e.g. export {key_env}=$(openssl rand -hex 32)) "
        f"or run the demo (run.demo=true)."
    )


def _padded(key: bytes) -> bytes:
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    return key.ljust(_BLOCK, b"\x00")


def hmac_sha256(value: Column, key: bytes) -> Column:
    """HMAC-SHA256 of a string column as 64 hex characters; null stays null.

    Examples
    --------
    >>> df.select(hmac_sha256(F.col("customer_id"), b"secret").alias("customer_key"))
    """
    inner_pad, outer_pad = _pads(key)
    message = F.encode(value.cast("string"), "UTF-8")
    inner = F.unhex(F.sha2(F.concat(inner_pad, message), 256))
    return F.sha2(F.concat(outer_pad, inner), 256)


#: session → key → its pads: one table per key, so Spark computes the subqueries once per query.
_PADS: "weakref.WeakKeyDictionary[SparkSession, dict[bytes, tuple[Column, Column]]]" = weakref.WeakKeyDictionary()


def _pads(key: bytes) -> tuple[Column, Column]:
    """The inner and outer HMAC pads as scalar subqueries of the active session (no literal)."""
    spark = SparkSession.active()
    known = _PADS.setdefault(spark, {})
    if key not in known:
        k = _padded(key)
        pads = spark.createDataFrame([(bytes(b ^ 0x36 for b in k), bytes(b ^ 0x5C for b in k))],
                                     "inner_pad binary, outer_pad binary")
        known[key] = (pads.select("inner_pad").scalar(), pads.select("outer_pad").scalar())
    return known[key]


def pseudonymize(value: Column, key: bytes, *, namespace: str) -> Column:
    """Keyed hash of an id within a namespace (``retail``, ``bank``), as a short key.

    The namespace keeps equal raw ids of different systems apart. 24 hex characters
    (96 bits) keep collisions negligible for billions of customers.
    """
    tagged = F.concat(F.lit(f"{namespace}:"), F.trim(value.cast("string")))
    return F.when(value.isNull(), F.lit(None)).otherwise(F.substring(hmac_sha256(tagged, key), 1, 24))
