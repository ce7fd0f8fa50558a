"""Retail line items of one chunk of customers, with planted dirt, in the UCI Online Retail CSV format.

A chunk is generated in three stages, all vectorised over lines:

1. clean purchases: invoices from the customers' purchase process, baskets of noise items
   plus the planted rule bundles, quantities and prices (these are the *clean baskets*);
2. dirt, always as extra lines so the clean baskets stay intact: cancellation invoices
   (``C`` prefix, negative quantities of items the customer bought earlier), invoices
   without CustomerID, exact duplicate lines, zero-price lines, non-product stock codes
   and malformed lines (too few fields, non-numeric Quantity, impossible date);
3. rendering: invoices are numbered in time order, lines sorted by invoice, and the text
   is built column-wise and written as one block per slice.

A line is *clean* when it parses, its InvoiceNo has no ``C`` prefix, Quantity > 0,
UnitPrice > 0, CustomerID is present and StockCode is a product code; clean lines hold
exactly the clean baskets (one basket = the set of StockCodes of an InvoiceNo), and the
only exact duplicates in the file are the planted ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import csvtext
from .catalogue import NON_PRODUCT_CODES, NON_PRODUCT_PRICE_CENTS, Catalogue
from .customers import (CHURN_CAUSES, COUNTRIES, COUNTRY_WEIGHTS, RETAIL_START, SEGMENT_NAMES,
                        SEGMENTS, CustomerBlock, Purchases, WINDOW_DAYS, draw_customers,
                        simulate_purchases)

RETAIL_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
FIRST_INVOICE_NUMBER = 536365
FIRST_CUSTOMER_ID = 12346
DEFAULT_LINES_PER_CUSTOMER = 100.0

# Planted dirt rates (per clean invoice, or per clean line where said).
CANCELLED_INVOICE_RATE = 0.02
CANCELLED_EXTRA_LINE_PROBABILITY = 0.25
ANONYMOUS_INVOICE_RATE = 0.03
DUPLICATE_LINE_RATE = 0.004          # per clean line
ZERO_PRICE_INVOICE_RATE = 0.004
NON_PRODUCT_INVOICE_RATE = 0.02
MALFORMED_LINE_RATE = 0.0001         # per clean line and malformed kind, at least one each
ANONYMOUS_BASKET_MEAN = 8.0

# Line kinds, in the order their counts are reported.
CLEAN, CANCELLATION, ANONYMOUS, DUPLICATE, ZERO_PRICE, NON_PRODUCT = 0, 1, 2, 3, 4, 5
TOO_FEW_FIELDS, NON_NUMERIC_QUANTITY, IMPOSSIBLE_DATE = 6, 7, 8
MALFORMED_KINDS = {TOO_FEW_FIELDS: "too_few_fields", NON_NUMERIC_QUANTITY: "non_numeric_quantity",
                   IMPOSSIBLE_DATE: "impossible_date"}
_BAD_QUANTITIES = ("12a", "N/A", "1O", "two", "3..")
_IMPOSSIBLE_DATES = ("2011-02-30", "2011-04-31", "2011-06-31", "2011-09-31", "2011-11-31", "2011-13-01")

_DAY_SECONDS = 86_400
_OPENING_MINUTE, _TRADING_MINUTES = 8 * 60, 12 * 60


@dataclass
class Lines:
    """Line items (arrays of equal length); ``invoice`` indexes the chunk's invoice table."""

    invoice: np.ndarray
    product: np.ndarray      # catalogue index, or catalogue size + non-product code index
    quantity: np.ndarray
    price_cents: np.ndarray
    kind: np.ndarray

    @staticmethod
    def concat(parts: list["Lines"]) -> "Lines":
        return Lines(*(np.concatenate([getattr(p, f) for p in parts]) for f in Lines.__dataclass_fields__))

    def subset(self, mask_or_index) -> "Lines":
        return Lines(*(getattr(self, f)[mask_or_index] for f in Lines.__dataclass_fields__))

    def __len__(self) -> int:
        return len(self.invoice)


@dataclass
class Invoices:
    """The chunk's invoices: customer (-1 when anonymous), time, cancellation flag, country."""

    customer: np.ndarray
    seconds: np.ndarray      # seconds since RETAIL_START
    cancelled: np.ndarray
    country: np.ndarray

    def __len__(self) -> int:
        return len(self.customer)


@dataclass
class RetailChunk:
    """What one chunk wrote and what the truth needs from it."""

    customers: pd.DataFrame
    clean_basket_of_line: np.ndarray
    clean_product_of_line: np.ndarray
    clean_baskets: int
    invoices_numbered: int
    rows_written: int
    dirt: dict = field(default_factory=dict)


def _lines(invoice, product, quantity, price, kind) -> Lines:
    # Narrow types: these arrays are reordered and sliced several times per chunk.
    return Lines(invoice.astype(np.int64), product.astype(np.int32), quantity.astype(np.int32),
                 price.astype(np.int32), np.full(len(invoice), kind, dtype=np.int8))


def unique_sorted(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct values (a plain sort is much faster than np.unique's hashing here)."""
    keys = np.sort(keys)
    return keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys


def bits_for(count: int) -> int:
    return max(1, int(count).bit_length())


def line_order(rng, invoice_number_rank: np.ndarray, lines: Lines) -> np.ndarray:
    """Order of lines in the file: by invoice number, random within an invoice.

    Sorting one packed int64 key (rank | random bits | line index) and reading the index
    back from its low bits is several times faster than argsort or lexsort.
    """
    n = len(lines)
    rank_bits, index_bits = bits_for(invoice_number_rank.max(initial=0)), bits_for(n)
    random_bits = max(0, 62 - rank_bits - index_bits)
    random_bits = min(random_bits, 16)
    key = invoice_number_rank[lines.invoice].astype(np.int64) << (random_bits + index_bits)
    if random_bits:
        key |= rng.integers(0, 1 << random_bits, n, dtype=np.int64) << index_bits
    key |= np.arange(n, dtype=np.int64)
    return np.sort(key) & ((1 << index_bits) - 1)


def _pack_table() -> tuple[np.ndarray, np.ndarray]:
    width = max(len(s.pack_sizes) for s in SEGMENTS)
    table = np.zeros((len(SEGMENTS), width), dtype=np.int64)
    sizes = np.array([len(s.pack_sizes) for s in SEGMENTS])
    for k, s in enumerate(SEGMENTS):
        table[k, : len(s.pack_sizes)] = s.pack_sizes
    return table, sizes


def _quantities(rng, segment_of_line: np.ndarray, multiplier_of_line: np.ndarray) -> np.ndarray:
    table, sizes = _pack_table()
    pick = (rng.random(len(segment_of_line)) * sizes[segment_of_line]).astype(np.int64)
    packs = table[segment_of_line, pick]
    return np.maximum(1, np.rint(packs * multiplier_of_line)).astype(np.int64)


def _invoice_seconds(rng, day: np.ndarray) -> np.ndarray:
    minute = _OPENING_MINUTE + rng.integers(0, _TRADING_MINUTES, len(day))
    return np.floor(day).astype(np.int64) * _DAY_SECONDS + minute * 60


def _expected_fixed_items(catalogue: Catalogue) -> float:
    """Expected items per basket that do not scale with its size: rule items and bestsellers."""
    per_rule = sum(r.trigger_probability * (len(r.antecedent) + r.consequent_probability) for r in catalogue.rules)
    background = catalogue.rule_item_background_probability * len(catalogue.rule_items)
    return per_rule + background + float(catalogue.bestseller_probability.sum())


def _basket_products(rng, catalogue: Catalogue, basket_size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Products of each basket: long-tail noise draws, bestsellers, rule bundles, background
    rule items; deduplicated."""
    n = len(basket_size)
    baskets = [np.repeat(np.arange(n), basket_size)]
    products = [catalogue.draw_tail(rng, int(basket_size.sum()))]
    for item, probability in zip(catalogue.bestsellers, catalogue.bestseller_probability):
        hit = np.nonzero(rng.random(n) < probability)[0]
        baskets.append(hit)
        products.append(np.full(len(hit), item))
    for rule in catalogue.rules:
        triggered = np.nonzero(rng.random(n) < rule.trigger_probability)[0]
        for item in rule.antecedent:
            baskets.append(triggered)
            products.append(np.full(len(triggered), item))
        followed = triggered[rng.random(len(triggered)) < rule.consequent_probability]
        baskets.append(followed)
        products.append(np.full(len(followed), rule.consequent))
    for item in catalogue.rule_items:
        hit = np.nonzero(rng.random(n) < catalogue.rule_item_background_probability)[0]
        baskets.append(hit)
        products.append(np.full(len(hit), item))
    # An invoice has at least one line: give the baskets that drew nothing one tail item.
    covered = np.zeros(n, dtype=bool)
    for basket in baskets:
        covered[basket] = True
    empty = np.nonzero(~covered)[0]
    baskets.append(empty)
    products.append(catalogue.draw_tail(rng, len(empty)))
    key = unique_sorted(np.concatenate(baskets).astype(np.int64) * catalogue.size + np.concatenate(products))
    return key // catalogue.size, key % catalogue.size


def clean_purchases(rng, catalogue: Catalogue, block: CustomerBlock, purchases: Purchases,
                    lines_per_customer: float) -> tuple[Invoices, Lines]:
    """Invoices and line items of the customers' purchases (the clean baskets)."""
    n_invoices = len(purchases.customer)
    customer = purchases.customer
    weight = np.array([s.basket_weight for s in SEGMENTS])[block.segment[customer]] * block.basket_factor[customer]
    # Scale basket sizes so that the chunk has about lines_per_customer lines per customer.
    tail_lines_wanted = max(lines_per_customer * block.size - _expected_fixed_items(catalogue) * n_invoices, 0.0)
    basket_size = rng.poisson(weight * tail_lines_wanted / weight.sum())
    basket, product = _basket_products(rng, catalogue, basket_size)
    line_customer = customer[basket]
    quantity = _quantities(rng, block.segment[line_customer], block.spend_multiplier[line_customer])
    invoices = Invoices(customer=customer, seconds=_invoice_seconds(rng, purchases.day),
                        cancelled=np.zeros(n_invoices, dtype=bool), country=block.country[customer])
    lines = _lines(basket, product, quantity, catalogue.price_cents[product], CLEAN)
    return invoices, lines


def _cancellations(rng, invoices: Invoices, lines: Lines, first_new_invoice: int) -> tuple[Invoices, Lines]:
    """C invoices taking back part of the quantity of lines the same customer bought earlier."""
    chosen = rng.random(len(invoices)) < CANCELLED_INVOICE_RATE
    on_chosen = chosen[lines.invoice]
    is_first_line = np.r_[True, lines.invoice[1:] != lines.invoice[:-1]]   # lines sorted by invoice
    picked = on_chosen & (is_first_line | (rng.random(len(lines)) < CANCELLED_EXTRA_LINE_PROBABILITY))
    originals = np.nonzero(chosen)[0]
    new_index = np.full(len(invoices), -1, dtype=np.int64)
    new_index[originals] = first_new_invoice + np.arange(len(originals))
    delay = rng.integers(3_600, 30 * _DAY_SECONDS, len(originals))
    window_end = WINDOW_DAYS * _DAY_SECONDS - 60
    seconds = np.minimum(invoices.seconds[originals] + delay // 60 * 60, window_end)
    c_invoices = Invoices(invoices.customer[originals], seconds, np.ones(len(originals), dtype=bool),
                          invoices.country[originals])
    taken = lines.subset(picked)
    returned = 1 + (rng.random(len(taken)) * taken.quantity).astype(np.int64)
    c_lines = _lines(new_index[taken.invoice], taken.product, -returned, taken.price_cents, CANCELLATION)
    return c_invoices, c_lines


def _anonymous(rng, catalogue: Catalogue, n_clean_invoices: int, first_new_invoice: int) -> tuple[Invoices, Lines]:
    """Invoices with no CustomerID (guest checkouts) holding noise items."""
    n = rng.binomial(n_clean_invoices, ANONYMOUS_INVOICE_RATE)
    day = rng.random(n) * WINDOW_DAYS
    invoices = Invoices(np.full(n, -1, dtype=np.int64), _invoice_seconds(rng, day), np.zeros(n, dtype=bool),
                        rng.choice(len(COUNTRIES), size=n, p=COUNTRY_WEIGHTS))
    size = 1 + rng.poisson(ANONYMOUS_BASKET_MEAN - 1, n)
    key = unique_sorted(np.repeat(np.arange(n), size).astype(np.int64) * catalogue.size
                        + catalogue.draw_noise(rng, int(size.sum())))
    basket, product = key // catalogue.size, key % catalogue.size
    quantity = _quantities(rng, np.full(len(basket), 1), np.ones(len(basket)))
    lines = _lines(first_new_invoice + basket, product, quantity, catalogue.price_cents[product], ANONYMOUS)
    return invoices, lines


def _duplicates(rng, lines: Lines) -> Lines:
    copies = lines.subset(rng.random(len(lines)) < DUPLICATE_LINE_RATE)
    copies.kind[:] = DUPLICATE
    return copies


def _one_line_per_invoice(rng, n_invoices: int, rate: float) -> np.ndarray:
    return np.nonzero(rng.random(n_invoices) < rate)[0]


def _extra_lines(rng, catalogue: Catalogue, invoice: np.ndarray, kind: int) -> Lines:
    """One extra line of a noise product in each given invoice."""
    product = catalogue.draw_noise(rng, len(invoice))
    quantity = 1 + rng.integers(0, 12, len(invoice))
    price = np.zeros(len(invoice)) if kind == ZERO_PRICE else catalogue.price_cents[product]
    return _lines(invoice, product, quantity, price, kind)


def _non_product(rng, catalogue: Catalogue, n_invoices: int) -> Lines:
    invoice = _one_line_per_invoice(rng, n_invoices, NON_PRODUCT_INVOICE_RATE)
    code = rng.choice(len(NON_PRODUCT_CODES), size=len(invoice), p=[0.6, 0.1, 0.15, 0.1, 0.05])
    # A discount is a negative quantity of the "D" code, as in the UCI data.
    quantity = np.where(np.asarray(NON_PRODUCT_CODES)[code] == "D", -1, 1)
    price = np.asarray(NON_PRODUCT_PRICE_CENTS)[code]
    return _lines(invoice, catalogue.size + code, quantity, price, NON_PRODUCT)


def _malformed(rng, catalogue: Catalogue, lines: Lines, n_invoices: int) -> Lines:
    """A few lines per kind that a parser must reject; each in its own clean invoice."""
    per_kind = max(1, int(round(MALFORMED_LINE_RATE * len(lines))))
    invoice = rng.choice(n_invoices, size=min(n_invoices, per_kind * len(MALFORMED_KINDS)), replace=False)
    parts = [_extra_lines(rng, catalogue, invoice[k::len(MALFORMED_KINDS)], kind)
             for k, kind in enumerate(MALFORMED_KINDS)]
    return Lines.concat(parts)


def add_dirt(rng, catalogue: Catalogue, invoices: Invoices, lines: Lines) -> tuple[Invoices, Lines]:
    """Every planted kind of dirt, as extra invoices and lines."""
    n_clean = len(invoices)
    c_invoices, c_lines = _cancellations(rng, invoices, lines, n_clean)
    a_invoices, a_lines = _anonymous(rng, catalogue, n_clean, n_clean + len(c_invoices))
    extra = [
        _duplicates(rng, lines),
        _extra_lines(rng, catalogue, _one_line_per_invoice(rng, n_clean, ZERO_PRICE_INVOICE_RATE), ZERO_PRICE),
        _non_product(rng, catalogue, n_clean),
        _malformed(rng, catalogue, lines, n_clean),
    ]
    all_invoices = Invoices(*(np.concatenate([getattr(i, f) for i in (invoices, c_invoices, a_invoices)])
                              for f in Invoices.__dataclass_fields__))
    return all_invoices, Lines.concat([lines, c_lines, a_lines] + extra)


def _timestamp_text(seconds: np.ndarray) -> pa.Array:
    stamps = (RETAIL_START.astype("datetime64[s]") + seconds.astype("timedelta64[s]"))
    return pc.cast(pa.array(stamps), pa.string())


@dataclass
class InvoiceText:
    """Per-invoice rendered fields, taken by index for each line."""

    invoice_no: pa.Array
    date: pa.Array
    tail: pa.Array           # "CustomerID,Country\n"


def render_invoices(invoices: Invoices, invoice_number: np.ndarray, first_customer_id: int) -> InvoiceText:
    prefix = pc.if_else(pa.array(invoices.cancelled), pa.scalar("C"), pa.scalar(""))
    invoice_no = pc.binary_join_element_wise(prefix, csvtext.int_text(invoice_number), "")
    customer_id = pc.if_else(pa.array(invoices.customer < 0), pa.scalar(""),
                             csvtext.int_text(first_customer_id + np.maximum(invoices.customer, 0)))
    country = csvtext.take_text([csvtext.csv_field(c) + "\n" for c in COUNTRIES], invoices.country)
    return InvoiceText(invoice_no, _timestamp_text(invoices.seconds),
                       pc.binary_join_element_wise(customer_id, country, ","))


def _malformed_text(kind: int, ordinal: int, fields: list[str]) -> str:
    """One malformed line from the fields of a regular one (tail ends with the newline)."""
    invoice_no, product, quantity, date, price, tail = fields
    if kind == TOO_FEW_FIELDS:
        return f"{invoice_no},{product},{quantity},{date}\n"
    if kind == NON_NUMERIC_QUANTITY:
        quantity = _BAD_QUANTITIES[ordinal % len(_BAD_QUANTITIES)]
    else:   # keep the time of day, put an impossible calendar date in front of it
        date = _IMPOSSIBLE_DATES[ordinal % len(_IMPOSSIBLE_DATES)] + date[10:]
    return f"{invoice_no},{product},{quantity},{date},{price},{tail}"


def render_lines(product_fields: pa.Array, price_fields: pa.Array, invoice_text: InvoiceText,
                 lines: Lines, first_ordinal: int = 0) -> tuple[pa.Array, dict[int, str]]:
    """CSV text of the lines (in the given order), each ending with a newline.

    The few malformed lines come back separately, as replacements by row, so the bulk of
    the text is rendered by whole-column operations only.
    """
    inv = pa.array(lines.invoice)
    price_index = np.where(lines.kind == ZERO_PRICE, len(price_fields) - 1, lines.product)
    columns = [invoice_text.invoice_no.take(inv), product_fields.take(pa.array(lines.product)),
               csvtext.int_text(lines.quantity), invoice_text.date.take(inv),
               price_fields.take(pa.array(price_index)), invoice_text.tail.take(inv)]
    text = csvtext.join_fields(columns, ",")
    malformed = np.nonzero(lines.kind >= TOO_FEW_FIELDS)[0]
    rows = [column.take(pa.array(malformed)).to_pylist() for column in columns]
    overrides = {int(row): _malformed_text(int(lines.kind[row]), first_ordinal + k, [c[k] for c in rows])
                 for k, row in enumerate(malformed)}
    return text, overrides


def number_invoices(rng, invoices: Invoices) -> np.ndarray:
    """Rank of each invoice in time order (ties in random order): its number minus the first."""
    order = np.lexsort((rng.random(len(invoices)), invoices.seconds))
    rank = np.empty(len(invoices), dtype=np.int64)
    rank[order] = np.arange(len(invoices))
    return rank


def _dirt_counts(lines: Lines, invoices: Invoices, catalogue: Catalogue) -> dict:
    kind = lines.kind
    non_product = lines.product[kind == NON_PRODUCT] - catalogue.size
    return {
        "cancellation_lines": int((kind == CANCELLATION).sum()),
        "cancellation_invoices": int(invoices.cancelled.sum()),
        "missing_customer_id_lines": int((kind == ANONYMOUS).sum()),
        "missing_customer_id_invoices": int((invoices.customer < 0).sum()),
        "duplicate_lines": int((kind == DUPLICATE).sum()),
        "zero_price_lines": int((kind == ZERO_PRICE).sum()),
        "non_product_lines": int((kind == NON_PRODUCT).sum()),
        "non_product_lines_by_code": {code: int((non_product == k).sum()) for k, code in enumerate(NON_PRODUCT_CODES)},
        "malformed_lines": {name: int((kind == k).sum()) for k, name in MALFORMED_KINDS.items()},
    }


def customers_frame(block: CustomerBlock, purchases: Purchases, lines: Lines, first_customer_index: int,
                    linked_client: np.ndarray) -> pd.DataFrame:
    """Truth rows of the chunk's customers."""
    n = block.size
    invoices_per_customer = np.bincount(purchases.customer, minlength=n)
    spend = np.bincount(purchases.customer[lines.invoice], weights=lines.quantity * lines.price_cents,
                        minlength=n) / 100.0
    churn_date = pd.Series(RETAIL_START + np.floor(np.where(np.isfinite(purchases.churn_day),
                                                           purchases.churn_day, 0)).astype("timedelta64[D]"))
    churn_date = churn_date.dt.strftime("%Y-%m-%d").where(np.isfinite(purchases.churn_day), "")
    first = pd.Series(RETAIL_START + np.floor(block.first_purchase).astype("timedelta64[D]")).dt.strftime("%Y-%m-%d")
    return pd.DataFrame({
        "CustomerID": FIRST_CUSTOMER_ID + first_customer_index + np.arange(n),
        "segment": np.asarray(SEGMENT_NAMES)[block.segment],
        "is_churner": purchases.churn_cause > 0,
        "churn_date": churn_date,
        "churn_cause": np.asarray(CHURN_CAUSES)[purchases.churn_cause],
        "first_purchase_date": first,
        "purchases_per_year": np.round(block.purchases_per_day * 365.0, 4),
        "dropout_probability": np.round(block.dropout_probability, 6),
        "spend_multiplier": np.round(block.spend_multiplier, 4),
        "clean_invoices": invoices_per_customer,
        "clean_spend": np.round(spend, 2),
        "country": np.asarray(COUNTRIES)[block.country],
        "client_id": pd.Series(linked_client).where(linked_client > 0).astype("Int64"),
    })


def write_retail_chunk(handle: BinaryIO, rng: np.random.Generator, catalogue: Catalogue, customers: int,
                       first_customer_index: int, chunk_index: int, chunk_count: int, lines_per_customer: float,
                       linked_client: np.ndarray) -> RetailChunk:
    """Generate one chunk of customers and write its retail lines (with header) to ``handle``.

    Invoice numbers interleave across chunks (``FIRST_INVOICE_NUMBER + rank * chunk_count +
    chunk_index``, rank = time order within the chunk): unique, roughly increasing with time
    over the whole data, and computable without knowing the other chunks.
    """
    block = draw_customers(rng, customers)
    purchases = simulate_purchases(rng, block)
    invoices, clean = clean_purchases(rng, catalogue, block, purchases, lines_per_customer)
    frame = customers_frame(block, purchases, clean, first_customer_index, linked_client)
    all_invoices, all_lines = add_dirt(rng, catalogue, invoices, clean)
    rank = number_invoices(rng, all_invoices)
    ordered = all_lines.subset(line_order(rng, rank, all_lines))
    invoice_number = FIRST_INVOICE_NUMBER + rank * chunk_count + chunk_index
    invoice_text = render_invoices(all_invoices, invoice_number, FIRST_CUSTOMER_ID + first_customer_index)
    product_fields = pa.array(catalogue.code_description_fields() + catalogue.non_product_fields(), pa.string())
    # Unit price is a function of the product (zero-price dirt uses the extra last entry).
    price_fields = csvtext.cents_text(np.concatenate([catalogue.price_cents, NON_PRODUCT_PRICE_CENTS, [0]]))
    handle.write(RETAIL_HEADER.encode())
    malformed_so_far = 0
    for start in range(0, len(ordered), csvtext.WRITE_SLICE_ROWS):
        part = ordered.subset(slice(start, start + csvtext.WRITE_SLICE_ROWS))
        text, overrides = render_lines(product_fields, price_fields, invoice_text, part, malformed_so_far)
        csvtext.write_lines(handle, text, overrides)
        malformed_so_far += len(overrides)
    return RetailChunk(customers=frame, clean_basket_of_line=clean.invoice, clean_product_of_line=clean.product,
                       clean_baskets=len(invoices), invoices_numbered=len(all_invoices),
                       rows_written=len(ordered), dirt=_dirt_counts(all_lines, all_invoices, catalogue))
