"""Refine, retail room: bronze retail line items → typed, validated, pseudonymised silver tables.

Pure functions DataFrame → DataFrame; the refine step (:mod:`crm_mining.refine`) reads bronze,
calls them and writes the results. Column names of a source come from its definition
(``sources.<name>.tables.<table>.columns``), so the UCI Online Retail and Online Retail II
layouts differ only in configuration.

Cleaning policy (settings under ``refine.retail``)
--------------------------------------------------
Every bronze row is either accepted into ``silver_retail_lines`` or quarantined in
``quarantine_<source>`` with a ``_reason``; the first rule that holds decides, in this order:

1. ``malformed_line: line N of <file>`` — the line did not split into the header's fields.
2. ``duplicate`` — an exact copy (all raw columns equal) of an earlier row; the first copy by
   (file, line) stays, every later copy is quarantined (``drop_duplicates``).
3. ``missing_value: <column>=''`` — no invoice number or no stock code.
4. ``bad_quantity`` / ``bad_price`` / ``bad_timestamp: <column>='<value>'`` — the value does
   not parse (a quantity must be a whole number; a price a finite number; a timestamp must
   match one of the source's ``timestamp_formats``, tried in order).
   ``future_timestamp: <column>='2099-…'`` — a timestamp later than the moment its file was
   ingested (``_ingested_at``): a line cannot have been recorded after it was delivered.
5. ``adjustment_invoice: <column>='A…'`` — "adjust bad debt" bookings (``adjustment_prefixes``).
6. ``non_product_code: <column>='POST'`` — postage, discounts, manual entries, bank charges,
   fees and the like (``non_product_codes``, compared case-insensitively; the UCI data's gift
   vouchers by ``non_product_patterns``): they are not products, so they would distort baskets,
   product counts and customer value. ``non_product_action: keep`` keeps them instead.
7. ``non_positive_price: <column>='0'`` — unit price ≤ 0 (``reject_non_positive_price``).
8. ``zero_quantity`` — quantity 0.
9. ``stock_adjustment: <column>='-5'`` — a negative quantity on an invoice that is not a
   cancellation: stock write-offs (damaged, lost), not customer returns.
10. ``positive_quantity_on_cancellation`` — a cancellation invoice line with quantity > 0.

Accepted rows: cancellation lines (invoice prefix ``C``, ``cancellation_prefixes``) are returns:
``is_return`` true with negative quantity and amount, attributed to the customer (so net spend
subtracts them). Sales without a customer id stay with ``customer_key`` null: usable for baskets,
left out of customer analytics. Customer ids are trimmed, a float export's ``.0`` dropped, and
pseudonymised (:func:`crm_mining.pii.pseudonymize`, namespace ``retail``). ``amount`` =
quantity × unit price; text fields are trimmed.
"""
from __future__ import annotations

from functools import reduce
from typing import Mapping, Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from crm_mining.pii import pseudonymize
from crm_mining.quality import first_reason, malformed_line_reason, mark_exact_duplicates, reason
from crm_mining.schemas import BRONZE_LINEAGE, SILVER_CUSTOMERS, SILVER_PRODUCTS, SILVER_RETAIL_LINES
from crm_mining.sources import bronze_column

#: Canonical columns a retail source must map.
REQUIRED_COLUMNS = ("invoice_id", "product_id", "quantity", "ts", "unit_price", "customer_id", "country")

DEFAULT_SETTINGS = {
    "drop_duplicates": True,
    "cancellation_prefixes": ["C"],
    "adjustment_prefixes": ["A"],
    "non_product_codes": ["POST", "D", "M", "DOT", "BANK CHARGES", "AMAZONFEE", "CRUK", "C2", "PADS", "S", "B"],
    "non_product_patterns": ["^GIFT_0001_"],
    "non_product_action": "quarantine",
    "reject_non_positive_price": True,
}


def _settings(settings: Mapping | None) -> dict:
    merged = {**DEFAULT_SETTINGS, **dict(settings or {})}
    if merged["non_product_action"] not in ("quarantine", "keep"):
        raise ValueError(f"refine.retail.non_product_action must be quarantine or keep, "
                         f"got {merged['non_product_action']!r}")
    return merged


def _check_columns(bronze: DataFrame, columns: Mapping[str, str]) -> dict[str, str]:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"retail column mapping lacks {missing} (sources.<name>.tables.<table>.columns)")
    mapped = {canonical: bronze_column(raw) for canonical, raw in columns.items()}
    absent = [raw for raw in mapped.values() if raw not in bronze.columns]
    if absent:
        raise ValueError(f"bronze table has no column(s) {absent}; it has {bronze.columns}")
    return mapped


def clean_text(col: Column) -> Column:
    """Trimmed text; empty becomes null."""
    trimmed = F.trim(col)
    return F.when(trimmed == "", F.lit(None)).otherwise(trimmed)


def clean_customer_id(col: Column) -> Column:
    """A customer id as text: trimmed, a float export's trailing ``.0`` dropped, empty → null.

    Examples
    --------
    >>> df.select(clean_customer_id(F.lit(" 17850.0 ")))  # '17850'
    """
    return clean_text(F.regexp_replace(F.trim(col), r"\.0+$", ""))


def parse_quantity(col: Column) -> Column:
    """A whole number of units as long; null when the text is not a whole number."""
    number = clean_text(col).try_cast("decimal(20,4)")
    return F.when(number == F.floor(number), number.cast("long"))


def parse_price(col: Column) -> Column:
    """A finite price as double; null when the text is not a finite number."""
    number = clean_text(col).try_cast("double")
    return F.when(~F.isnan(number) & (F.abs(number) < float("inf")), number)


def parse_timestamp(col: Column, *, formats: Sequence[str]) -> Column:
    """The first of ``formats`` that parses the text (``try_to_timestamp``), else null."""
    if not formats:
        raise ValueError("at least one timestamp format is needed (timestamp_formats)")
    text = clean_text(col)
    return F.coalesce(*[F.try_to_timestamp(text, F.lit(fmt)) for fmt in formats])


def _starts_with_any(col: Column, prefixes: Sequence[str]) -> Column:
    return reduce(lambda a, b: a | b, [col.startswith(p) for p in prefixes], F.lit(False))


def classify_lines(bronze: DataFrame, *, columns: Mapping[str, str], timestamp_formats: Sequence[str],
                   settings: Mapping | None = None) -> DataFrame:
    """Bronze retail rows with typed working columns (``__*``), ``__is_non_product`` and ``_reason``.

    Parameters
    ----------
    bronze : bronze rows (raw string columns named by :func:`crm_mining.sources.bronze_column`
        plus the lineage columns).
    columns : canonical name → raw column name (``invoice_id: InvoiceNo``...).
    timestamp_formats : Spark datetime patterns, tried in order.
    settings : the ``refine.retail`` settings (defaults in :data:`DEFAULT_SETTINGS`).

    Examples
    --------
    >>> checked = classify_lines(bronze, columns={"invoice_id": "InvoiceNo", ...},
    ...                          timestamp_formats=["yyyy-MM-dd HH:mm:ss"])
    >>> checked.groupBy("_reason").count()
    """
    opts, raw = _settings(settings), _check_columns(bronze, columns)
    raw_cols = [c for c in bronze.columns if c not in BRONZE_LINEAGE]
    df = bronze.select(
        *bronze.columns,
        clean_text(F.col(raw["invoice_id"])).alias("__invoice_id"),
        clean_text(F.col(raw["product_id"])).alias("__product_id"),
        (clean_text(F.col(raw["description"])) if "description" in raw else F.lit(None).cast("string"))
        .alias("__description"),
        parse_quantity(F.col(raw["quantity"])).alias("__quantity"),
        parse_price(F.col(raw["unit_price"])).alias("__unit_price"),
        parse_timestamp(F.col(raw["ts"]), formats=timestamp_formats).alias("__ts"),
        clean_customer_id(F.col(raw["customer_id"])).alias("__customer_id"),
        clean_text(F.col(raw["country"])).alias("__country"),
    )
    codes = [str(c).upper() for c in opts["non_product_codes"]]
    code = F.upper(F.col("__product_id"))
    non_product = reduce(lambda a, b: a | b, [code.rlike(p) for p in opts["non_product_patterns"]],
                         code.isin(codes) if codes else F.lit(False))
    df = df.withColumn("__is_non_product", F.coalesce(non_product, F.lit(False)))
    df = df.withColumn("__is_cancellation",
                       F.coalesce(_starts_with_any(F.col("__invoice_id"), opts["cancellation_prefixes"]), F.lit(False)))
    if opts["drop_duplicates"]:
        df = mark_exact_duplicates(df, raw_cols=[*raw_cols, "_corrupt_record"], out_col="__is_duplicate")
    else:
        df = df.withColumn("__is_duplicate", F.lit(False))

    def bad(kind: str, canonical: str) -> tuple[Column, Column]:
        return (F.col(f"__{canonical}").isNull() & clean_text(F.col(raw[canonical])).isNotNull(),
                reason(kind, columns[canonical], F.col(raw[canonical])))

    def missing(canonical: str) -> tuple[Column, Column]:
        return F.col(f"__{canonical}").isNull(), reason("missing_value", columns[canonical], F.col(raw[canonical]))

    quantity, price = F.col("__quantity"), F.col("__unit_price")
    rules = [
        malformed_line_reason(),
        (F.col("__is_duplicate"), F.lit("duplicate")),
        missing("invoice_id"), missing("product_id"),
        bad("bad_quantity", "quantity"), missing("quantity"),
        bad("bad_price", "unit_price"), missing("unit_price"),
        bad("bad_timestamp", "ts"), missing("ts"),
        (F.col("__ts") > F.col("_ingested_at"), reason("future_timestamp", columns["ts"], F.col(raw["ts"]))),
        (_starts_with_any(F.col("__invoice_id"), opts["adjustment_prefixes"]),
         reason("adjustment_invoice", columns["invoice_id"], F.col(raw["invoice_id"]))),
    ]
    if opts["non_product_action"] == "quarantine":
        rules.append((F.col("__is_non_product"), reason("non_product_code", columns["product_id"], F.col(raw["product_id"]))))
    if opts["reject_non_positive_price"]:
        rules.append((price <= 0, reason("non_positive_price", columns["unit_price"], F.col(raw["unit_price"]))))
    rules += [
        (quantity == 0, reason("zero_quantity", columns["quantity"], F.col(raw["quantity"]))),
        ((quantity < 0) & ~F.col("__is_cancellation"), reason("stock_adjustment", columns["quantity"], F.col(raw["quantity"]))),
        ((quantity > 0) & F.col("__is_cancellation"), reason("positive_quantity_on_cancellation", columns["quantity"],
                                                              F.col(raw["quantity"]))),
    ]
    return df.withColumn("_reason", first_reason(rules))


def quarantined(checked: DataFrame, *, bronze_cols: Sequence[str]) -> DataFrame:
    """The rejected rows as read (raw and lineage columns) plus ``_reason``."""
    return checked.filter(F.col("_reason").isNotNull()).select(*bronze_cols, "_reason")


def accepted(checked: DataFrame) -> DataFrame:
    """The rows that passed every rule (typed working columns included)."""
    return checked.filter(F.col("_reason").isNull())


def silver_lines(ok: DataFrame, *, key: bytes, source: str) -> DataFrame:
    """Accepted rows in the ``silver_retail_lines`` contract, plus ``source`` and ``_line_number``.

    Examples
    --------
    >>> silver_lines(accepted(checked), key=resolve_key(demo=True), source="online_retail")
    """
    quantity, price = F.col("__quantity"), F.col("__unit_price")
    values = {
        "invoice_id": F.col("__invoice_id"),
        "customer_key": pseudonymize(F.col("__customer_id"), key, namespace="retail"),
        "ts": F.col("__ts"), "product_id": F.col("__product_id"), "quantity": quantity,
        "unit_price": price, "amount": quantity * price, "is_return": quantity < 0,
        "country": F.col("__country"), "_batch_id": F.col("_batch_id"),
    }
    return ok.select(*[values[f.name].cast(f.dataType).alias(f.name) for f in SILVER_RETAIL_LINES.fields],
                     F.lit(source).alias("source"), F.col("_line_number").cast("long").alias("_line_number"))


def silver_products(ok: DataFrame) -> DataFrame:
    """One row per product code: its most frequent description (ties: the smallest); no category."""
    out = ok.groupBy(F.col("__product_id").alias("product_id")).agg(
        F.mode(F.col("__description"), True).alias("description"))
    return out.select("product_id", "description", F.lit(None).cast("string").alias("category"))


def silver_customers_retail(lines: DataFrame) -> DataFrame:
    """The retail part of ``silver_customers``: one row per customer key seen in ``lines``.

    ``country`` is the customer's most frequent country (ties: the smallest); first and last
    activity span all accepted lines, returns included.
    """
    known = lines.filter(F.col("customer_key").isNotNull())
    out = known.groupBy("customer_key").agg(
        F.mode(F.col("country"), True).alias("country"),
        F.min("ts").alias("first_activity"), F.max("ts").alias("last_activity"))
    values = {"domain": F.lit("retail"), "district_id": F.lit(None), "gender": F.lit(None),
              "birth_year": F.lit(None)}
    return out.select(*[(values[f.name] if f.name in values else F.col(f.name)).cast(f.dataType).alias(f.name)
                        for f in SILVER_CUSTOMERS.fields])


__all__ = ["classify_lines", "quarantined", "accepted", "silver_lines", "silver_products",
           "silver_customers_retail", "parse_quantity", "parse_price", "parse_timestamp",
           "clean_customer_id", "clean_text", "DEFAULT_SETTINGS", "SILVER_PRODUCTS"]
