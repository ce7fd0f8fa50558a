"""The table contract in code: schemas of the silver tables every analytic step reads.

Refine writes exactly these columns (it may add more); customer 360, value, segment, basket
and churn read them, and tests build inline DataFrames with them. Ids are pseudonymised:
``customer_key`` and ``account_id`` hold keyed hashes, never raw ids.
"""
from __future__ import annotations

from pyspark.sql import types as T


def _schema(*fields: tuple[str, T.DataType]) -> T.StructType:
    return T.StructType([T.StructField(name, dtype, True) for name, dtype in fields])


S, L, D, TS, DT, B, I = (T.StringType(), T.LongType(), T.DoubleType(), T.TimestampType(),
                         T.DateType(), T.BooleanType(), T.IntegerType())

#: One row per retail line item kept for analytics. Returns have negative quantity and
#: amount and ``is_return`` true; ``customer_key`` is null for anonymous sales (kept for
#: basket analysis, excluded from customer analytics).
SILVER_RETAIL_LINES = _schema(
    ("invoice_id", S), ("customer_key", S), ("ts", TS), ("product_id", S), ("quantity", L),
    ("unit_price", D), ("amount", D), ("is_return", B), ("country", S), ("_batch_id", S),
)

#: One row per product code seen in retail lines.
SILVER_PRODUCTS = _schema(("product_id", S), ("description", S), ("category", S))

#: One row per customer per domain (``retail`` or ``banking``).
SILVER_CUSTOMERS = _schema(
    ("customer_key", S), ("domain", S), ("country", S), ("district_id", S), ("gender", S),
    ("birth_year", I), ("first_activity", TS), ("last_activity", TS),
)

#: Retail customer ↔ bank client, where a linking key (loyalty card) exists.
SILVER_CUSTOMER_LINK = _schema(("retail_customer_key", S), ("bank_customer_key", S))

#: Bank transactions. ``direction`` is credit/debit; ``amount`` is positive; ``operation``
#: and ``category`` are English names of Berka's codes (null where the code is empty).
SILVER_BANK_TRANSACTIONS = _schema(
    ("txn_id", S), ("account_id", S), ("customer_key", S), ("ts", TS), ("direction", S),
    ("amount", D), ("balance", D), ("operation", S), ("category", S),
)

#: Accounts with the owner's customer key; ``frequency`` of statements in English.
SILVER_BANK_ACCOUNTS = _schema(
    ("account_id", S), ("customer_key", S), ("district_id", S), ("frequency", S), ("opened_date", DT),
)

SILVER_BANK_CARDS = _schema(
    ("card_id", S), ("account_id", S), ("customer_key", S), ("card_type", S), ("issued_date", DT),
)

#: ``status`` is Berka's code A–D; ``status_desc`` reads finished_ok, finished_default,
#: running_ok or running_in_debt.
SILVER_BANK_LOANS = _schema(
    ("loan_id", S), ("account_id", S), ("customer_key", S), ("granted_date", DT), ("amount", D),
    ("duration_months", I), ("monthly_payment", D), ("status", S), ("status_desc", S),
)

#: Standing orders; ``category`` is the English name of k_symbol (household, insurance,
#: leasing, loan_payment, other).
SILVER_BANK_ORDERS = _schema(
    ("order_id", S), ("account_id", S), ("customer_key", S), ("amount", D), ("category", S),
)

SILVER_DISTRICTS = _schema(
    ("district_id", S), ("district_name", S), ("region", S), ("inhabitants", L),
    ("urban_ratio", D), ("avg_salary", D), ("unemployment_rate_95", D), ("unemployment_rate_96", D),
    ("entrepreneurs_per_1000", D), ("crimes_95", L), ("crimes_96", L),
)

SILVER_SCHEMAS: dict[str, T.StructType] = {
    "silver_retail_lines": SILVER_RETAIL_LINES,
    "silver_products": SILVER_PRODUCTS,
    "silver_customers": SILVER_CUSTOMERS,
    "silver_customer_link": SILVER_CUSTOMER_LINK,
    "silver_bank_transactions": SILVER_BANK_TRANSACTIONS,
    "silver_bank_accounts": SILVER_BANK_ACCOUNTS,
    "silver_bank_cards": SILVER_BANK_CARDS,
    "silver_bank_loans": SILVER_BANK_LOANS,
    "silver_bank_orders": SILVER_BANK_ORDERS,
    "silver_districts": SILVER_DISTRICTS,
}

#: What the Berka refine returns (``crm_mining.refine.bank``) → the contract schema of each
#: output; the bank customers go into ``silver_customers`` with the retail ones.
BANK_OUTPUT_SCHEMAS: dict[str, T.StructType] = {
    **{name: SILVER_SCHEMAS[name] for name in (
        "silver_bank_transactions", "silver_bank_accounts", "silver_bank_cards", "silver_bank_loans",
        "silver_bank_orders", "silver_districts")},
    "silver_customers_bank": SILVER_CUSTOMERS,
}


def schema_mismatches(frames: dict, contract: dict[str, T.StructType]) -> dict[str, list]:
    """Per table, the leading (name, type) fields that differ from the contract (empty: all agree).

    Outputs may carry more columns after the contract's.
    """
    out = {}
    for name, schema in contract.items():
        got = [(f.name, f.dataType) for f in frames[name].schema.fields[:len(schema.fields)]]
        want = [(f.name, f.dataType) for f in schema.fields]
        if got != want:
            out[name] = [(g, w) for g, w in zip(got, want) if g != w] or [("missing", want[len(got):])]
    return out


#: Lineage columns every bronze table carries besides the raw columns (all strings).
BRONZE_LINEAGE = ("_source_file", "_batch_id", "_ingested_at", "_line_number", "_corrupt_record")

#: Columns of every ``quarantine_<source>`` table besides the raw columns of the row.
QUARANTINE_COLUMNS = ("_reason", "_batch_id")
