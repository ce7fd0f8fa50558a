"""Refine, bank room: PKDD'99 Berka bronze tables → typed, validated, pseudonymised silver tables.

Pure functions DataFrame → DataFrame; the refine step (``crm_mining.refine``) reads bronze, calls
:func:`refine_bank` and writes what it returns. Everything source-specific (column names, date
patterns, Czech codes and their English names) comes from the source definition
``conf/sources/berka.yaml``; this module knows only the silver contract
(:mod:`crm_mining.schemas`) and the rules below.

Rules, per bronze row, first failing rule wins (the row goes to ``quarantine_berka_<table>`` with
a ``_reason`` of the form ``<kind>: <file column>='<value>'``):

1. ``malformed_line`` — the reader could not split the line (``_corrupt_record`` set).
2. ``missing_value`` — the table's key or a required field is empty.
3. ``duplicate`` — an exact copy of an earlier row (same raw columns); ``duplicate_key`` — a
   different row with a key already seen. The first by (batch, line) is kept.
4. ``invalid_value`` — a number or date that does not parse (or a negative amount);
   ``unknown_code`` — a code with no entry in ``refine.codes``.
5. ``unknown_district`` / ``unknown_client`` / ``unknown_account`` / ``unknown_disp`` — the row
   refers to a parent that is not among the accepted rows of its table; ``extra_owner`` — a
   second OWNER disposition of an account.

Missing markers (Berka's ``?`` in district columns A12 and A15) become null, not a rejection.
Ids become keyed hashes (:func:`crm_mining.pii.pseudonymize`): client ids in namespace ``bank``
(shared with ``silver_customer_link``), the others in a namespace named after their table. An
account, its transactions, loans and orders belong to the account's OWNER client; a card to the
client of its disposition. Birth numbers give gender and birth year and are then dropped;
partner bank accounts never leave bronze.
"""
from __future__ import annotations

import dataclasses
from functools import reduce
from typing import Callable, Mapping, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from crm_mining.pii import pseudonymize
from crm_mining.schemas import (BRONZE_LINEAGE, SILVER_BANK_ACCOUNTS, SILVER_BANK_CARDS, SILVER_BANK_LOANS,
                                SILVER_BANK_ORDERS, SILVER_BANK_TRANSACTIONS, SILVER_CUSTOMERS, SILVER_DISTRICTS)

#: Berka tables in the order they are refined (parents before children).
TABLES = ("district", "client", "account", "disp", "trans", "card", "loan", "order")

#: Namespace of each table's pseudonymised id; client ids share ``bank`` with the link table.
NAMESPACES = {"client": "bank", "account": "account", "disp": "disp", "trans": "trans",
              "card": "card", "loan": "loan", "order": "order"}

_DECIMAL = r"^[+-]?[0-9]+(\.[0-9]*)?$"
_INTEGER = r"^[+-]?[0-9]+$"
_PREFIX = "__"  # typed working columns; never part of an output


@dataclasses.dataclass(frozen=True)
class Field:
    """A canonical field of a table: how to type it and whether it may be empty."""

    name: str
    kind: str = "text"          # text | long | int | double | date | timestamp | code | birth_number
    required: bool = True
    nonnegative: bool = False


_F = Field
#: The fields refine needs from each table; the first one is the table's key.
FIELDS: dict[str, tuple[Field, ...]] = {
    "district": (_F("district_id"), _F("district_name", required=False), _F("region", required=False),
                 *(_F(n, "long", False) for n in ("inhabitants", "municipalities_under_500",
                                                  "municipalities_500_1999", "municipalities_2000_9999",
                                                  "municipalities_10000_plus", "cities", "crimes_95",
                                                  "crimes_96")),
                 *(_F(n, "double", False) for n in ("urban_ratio", "avg_salary", "unemployment_rate_95",
                                                    "unemployment_rate_96", "entrepreneurs_per_1000"))),
    "client": (_F("client_id"), _F("birth_number", "birth_number"), _F("district_id")),
    "account": (_F("account_id"), _F("district_id"), _F("frequency", "code"), _F("opened_date", "date")),
    "disp": (_F("disp_id"), _F("client_id"), _F("account_id"), _F("disp_type", "code")),
    "trans": (_F("txn_id"), _F("account_id"), _F("ts", "timestamp"), _F("direction", "code"),
              _F("amount", "double", nonnegative=True), _F("balance", "double"),
              _F("operation", "code", False), _F("category", "code", False)),
    "card": (_F("card_id"), _F("disp_id"), _F("card_type", "code"), _F("issued_date", "date")),
    "loan": (_F("loan_id"), _F("account_id"), _F("granted_date", "date"),
             _F("amount", "double", nonnegative=True), _F("duration_months", "int", nonnegative=True),
             _F("monthly_payment", "double", nonnegative=True), _F("status", "code"), _F("status_desc", "code")),
    "order": (_F("order_id"), _F("account_id"), _F("amount", "double", nonnegative=True),
              _F("category", "code", False)),
}


# --------------------------------------------------------------------------- column rules

def clean_text(text: Column, *, missing_markers: Sequence[str] = ()) -> Column:
    """Trimmed text; empty, blank and missing-marker values become null.

    Examples
    --------
    >>> df.select(clean_text(F.col("A12"), missing_markers=["?"]).alias("a12"))
    """
    trimmed = F.trim(text, F.lit(" \t\r\n"))
    unknown = (trimmed == "") | trimmed.isin(list(missing_markers)) if missing_markers else trimmed == ""
    return F.when(unknown, F.lit(None).cast("string")).otherwise(trimmed)


def parse_number(text: Column, *, dtype: str = "double") -> Column:
    """A plain decimal (or, for integer types, integer) literal as ``dtype``; null if it is not one.

    Exponents, ``NaN`` and ``Infinity`` are refused, as are integers out of range.

    Examples
    --------
    >>> df.select(parse_number(F.col("amount")).alias("amount"))
    """
    pattern = _INTEGER if dtype in ("int", "long") else _DECIMAL
    return F.when(text.rlike(pattern), text.try_cast(dtype))


def parse_timestamp(text: Column, *, fmt: str, century: str | None = None) -> Column:
    """Parse text with a Spark datetime pattern; null when it does not fit or is no real date.

    A pattern starting with a two-digit year (``yyMMdd``) gets ``century`` in front of the
    value, so ``930101`` reads as 1993-01-01 with ``century='19'`` (Spark's own ``yy``
    would read 2093).

    Examples
    --------
    >>> df.select(parse_timestamp(F.col("date"), fmt="yyMMdd", century="19").alias("ts"))
    """
    if century and fmt.startswith("yy") and not fmt.startswith("yyy"):
        text, fmt = F.concat(F.lit(str(century)), text), "yy" + fmt
    return F.try_to_timestamp(text, F.lit(fmt))


def translate(code: Column, mapping: Mapping[str, str]) -> Column:
    """The English name of a code (``PRIJEM`` → ``credit``); null for a code not in ``mapping``.

    Examples
    --------
    >>> df.select(translate(F.col("type"), {"PRIJEM": "credit", "VYDAJ": "debit"}).alias("direction"))
    """
    if not mapping:
        raise ValueError("translate needs a non-empty code mapping")
    cases = [(code == F.lit(str(k)), F.lit(str(v))) for k, v in mapping.items()]
    return reduce(lambda acc, case: acc.when(*case), cases[1:], F.when(*cases[0]))


def birth_date(birth_number: Column, *, female_month_offset: int = 50, century: str = "19") -> Column:
    """Birth date (timestamp at 00:00) of a Berka birth number YYMMDD, women's month + offset.

    Null when the number is not six digits or not a real date once the offset is removed.

    Examples
    --------
    >>> df.select(F.year(birth_date(F.col("birth_number"))).alias("birth_year"))
    """
    month = F.substring(birth_number, 3, 2).try_cast("int")
    month = F.when(month > female_month_offset, month - female_month_offset).otherwise(month)
    text = F.concat(F.lit(str(century)), F.substring(birth_number, 1, 2),
                    F.lpad(month.cast("string"), 2, "0"), F.substring(birth_number, 5, 2))
    return F.when(birth_number.rlike(r"^[0-9]{6}$"), F.try_to_timestamp(text, F.lit("yyyyMMdd")))


def gender(birth_number: Column, *, female_month_offset: int = 50, female: str = "F", male: str = "M") -> Column:
    """``female`` when the month digits of a birth number exceed the offset, else ``male``."""
    month = F.substring(birth_number, 3, 2).try_cast("int")
    return F.when(month > female_month_offset, F.lit(female)).when(month.isNotNull(), F.lit(male))


def reason(kind: str, column: str, value: Column | None = None) -> Column:
    """A quarantine reason ``<kind>: <column>='<value>'`` (the value as read)."""
    if value is None:
        return F.lit(f"{kind}: {column}")
    return F.concat(F.lit(f"{kind}: {column}='"), F.coalesce(value.cast("string"), F.lit("")), F.lit("'"))


def first_reason(checks: Sequence[tuple[Column, Column]]) -> Column:
    """The reason of the first check whose condition is true, else null."""
    return F.coalesce(*[F.when(condition, why) for condition, why in checks], F.lit(None).cast("string"))


# --------------------------------------------------------------------------- table rules

def _typed(field: Field, text: Column, *, table: str, settings: Mapping) -> Column:
    """The typed value of one field from its cleaned text."""
    rules = settings["refine"]
    if field.kind == "text":
        return text
    if field.kind in ("long", "int", "double"):
        return parse_number(text, dtype=field.kind)
    if field.kind in ("date", "timestamp"):
        fmt = (settings["tables"][table].get("formats") or {}).get(field.name, rules["date_format"])
        parsed = parse_timestamp(text, fmt=fmt, century=rules.get("century"))
        return parsed.cast("date") if field.kind == "date" else parsed
    if field.kind == "code":
        return translate(text, rules["codes"][field.name])
    if field.kind == "birth_number":
        return birth_date(text, female_month_offset=int(rules["female_month_offset"]), century=rules["century"])
    raise ValueError(f"unknown field kind {field.kind!r} of {table}.{field.name}")


def _checked_settings(table: str, settings: Mapping) -> dict[str, str]:
    """The table's canonical → file column mapping, with every field refine needs present."""
    if not isinstance(settings, Mapping) or not isinstance(settings.get("refine"), Mapping):
        raise ValueError("settings must be the berka source definition with a 'refine' section "
                         "(conf/sources/berka.yaml)")
    columns = dict(((settings.get("tables") or {}).get(table) or {}).get("columns") or {})
    missing = [f.name for f in FIELDS[table] if f.name not in columns]
    if missing:
        raise ValueError(f"sources.berka.tables.{table}.columns lacks {missing}")
    codes = settings["refine"].get("codes") or {}
    absent = [f.name for f in FIELDS[table] if f.kind == "code" and not codes.get(f.name)]
    if absent:
        raise ValueError(f"sources.berka.refine.codes lacks the code mappings {absent}")
    return columns


def _checked_bronze(bronze: DataFrame, *, table: str, settings: Mapping) -> dict[str, str]:
    """The table's column mapping, once every mapped column is known to be in the bronze table."""
    columns = _checked_settings(table, settings)
    absent = sorted({c for c in columns.values() if c not in bronze.columns})
    if absent:
        raise ValueError(f"bronze table berka/{table} has no column(s) {absent}; it has {bronze.columns}")
    return columns


def typed_fields(bronze: DataFrame, *, table: str, settings: Mapping) -> DataFrame:
    """Add ``__<field>`` (typed value) and ``__reason`` (first field rule broken) to a bronze table.

    Examples
    --------
    >>> typed = typed_fields(bronze["trans"], table="trans", settings=cfg.section("sources.berka"))
    """
    columns = _checked_bronze(bronze, table=table, settings=settings)
    rules, blank = settings["refine"], (settings["tables"][table].get("blank") or {})
    markers = list(rules.get("missing_markers") or [])
    values, checks = {}, []
    for field in FIELDS[table]:
        raw = F.col(columns[field.name])
        text = clean_text(raw, missing_markers=markers)
        value = _typed(field, text, table=table, settings=settings)
        if field.name in blank:
            value = F.when(text.isNull(), F.lit(str(blank[field.name]))).otherwise(value)
        values[_PREFIX + field.name] = value
        typed = F.col(_PREFIX + field.name)
        bad = "unknown_code" if field.kind == "code" else "invalid_value"
        if field.required:
            checks.append((typed.isNull() & text.isNull(), reason("missing_value", columns[field.name])))
        checks.append((typed.isNull() & text.isNotNull(), reason(bad, columns[field.name], raw)))
        if field.nonnegative:
            checks.append((typed < 0, reason("invalid_value", columns[field.name], raw)))
    # One projection for all fields (a withColumn per field makes the plan slow to analyse).
    return _with_lineage(bronze).withColumns(values).withColumn("__reason", first_reason(checks))


def _with_lineage(bronze: DataFrame) -> DataFrame:
    """The bronze rows with every lineage column present (null strings where the reader had none).

    ``_line_number`` and ``_ingested_at`` may be strings or typed (long, timestamp): both work.
    """
    for name in BRONZE_LINEAGE:
        if name not in bronze.columns:
            bronze = bronze.withColumn(name, F.lit(None).cast("string"))
    return bronze


def mark_duplicates(df: DataFrame, *, key_col: str, raw_cols: Sequence[str]) -> DataFrame:
    """Add ``__dup``: null for the first row of a key, ``duplicate`` for an exact copy of that
    first row, ``duplicate_key`` for another row with the same key.

    Rows are ranked by (well-formed first, ``_batch_id``, ``_line_number``), so a rerun keeps
    the same row.
    """
    order = Window.partitionBy(key_col).orderBy(
        F.col("_corrupt_record").isNotNull(), F.col("_batch_id"), F.col("_source_file"),
        F.col("_line_number").try_cast("long"), F.col("_line_number"))
    row = F.struct(*[F.col(c) for c in raw_cols])
    # A ROWS frame, so that among ties the first row is the one row_number calls 1.
    first_row = F.first(row).over(order.rowsBetween(Window.unboundedPreceding, Window.currentRow))
    return df.withColumn(
        "__dup", F.when(F.row_number().over(order) == 1, F.lit(None).cast("string"))
        .when(first_row.eqNullSafe(row), F.lit("duplicate")).otherwise(F.lit("duplicate_key")))


def validate(bronze: DataFrame, *, table: str, settings: Mapping,
             references: Sequence[tuple[str, DataFrame, str]] = ()) -> DataFrame:
    """Bronze rows of one table with typed ``__<field>`` columns and ``_reason`` (null = accepted).

    Parameters
    ----------
    bronze : the bronze table (raw string columns plus lineage).
    table : Berka table name (a key of :data:`FIELDS`).
    settings : the berka source definition.
    references : ``(field, parent, kind)``: ``parent`` has the accepted parent keys in its first
        column (unique) and payload columns named ``_ref_*``; a row whose ``field`` is not found
        gets the reason ``kind``.

    Examples
    --------
    >>> checked = validate(bronze["account"], table="account", settings=berka, references=[
    ...     ("district_id", district_keys, "unknown_district")])
    """
    columns = _checked_settings(table, settings)
    raw_cols = [c for c in bronze.columns if c not in BRONZE_LINEAGE]
    key = FIELDS[table][0].name
    df = mark_duplicates(typed_fields(bronze, table=table, settings=settings),
                         key_col=_PREFIX + key, raw_cols=raw_cols)
    ref_checks = []
    for i, (field, parent, kind) in enumerate(references):
        found = f"__found_{i}"
        parent = parent.withColumnRenamed(parent.columns[0], f"__parent_{i}").withColumn(found, F.lit(True))
        df = df.join(parent, F.col(_PREFIX + field) == F.col(f"__parent_{i}"), "left").drop(f"__parent_{i}")
        ref_checks.append((F.col(found).isNull(), reason(kind, columns[field], F.col(columns[field]))))
    key_col = F.col(_PREFIX + key)
    checks = [(F.col("_corrupt_record").isNotNull(),
               F.concat(F.lit("malformed_line: line "), F.coalesce(F.col("_line_number").cast("string"), F.lit("?")))),
              (key_col.isNull() & F.col("__reason").isNotNull(), F.col("__reason")),
              (F.col("__dup").isNotNull(), reason_with_key(F.col("__dup"), columns[key], F.col(columns[key]))),
              (F.col("__reason").isNotNull(), F.col("__reason")), *ref_checks]
    return df.withColumn("_reason", first_reason(checks))


def reason_with_key(kind: Column, column: str, value: Column) -> Column:
    """``duplicate`` stays as it is; ``duplicate_key`` names the key: ``duplicate_key: id='7'``."""
    return F.when(kind == "duplicate", kind).otherwise(
        F.concat(kind, F.lit(f": {column}='"), F.coalesce(value, F.lit("")), F.lit("'")))


def quarantine(checked: DataFrame, bronze_cols: Sequence[str]) -> DataFrame:
    """The rejected rows as read (raw and lineage columns) plus ``_reason``."""
    cols = list(bronze_cols) + [c for c in BRONZE_LINEAGE if c not in bronze_cols]
    return checked.filter(F.col("_reason").isNotNull()).select(*cols, "_reason")


def accepted(checked: DataFrame) -> DataFrame:
    """The rows that passed every rule."""
    return checked.filter(F.col("_reason").isNull())


def conform(df: DataFrame, schema: T.StructType, extras: Sequence[str] = ()) -> DataFrame:
    """Select the contract's columns in order, cast to the contract's types, then ``extras``."""
    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields], *extras)


# --------------------------------------------------------------------------- silver tables

def _hash(field: str, table: str, key: bytes) -> Column:
    return pseudonymize(F.col(_PREFIX + field), key, namespace=NAMESPACES[table])


def silver_districts(ok: DataFrame) -> DataFrame:
    """Accepted district rows in the contract's shape (municipality counts and cities as extras)."""
    extras = ["municipalities_under_500", "municipalities_500_1999", "municipalities_2000_9999",
              "municipalities_10000_plus", "cities"]
    names = [f.name for f in SILVER_DISTRICTS.fields] + extras
    return conform(ok.select(*[F.col(_PREFIX + n).alias(n) for n in names], "_batch_id"),
                   SILVER_DISTRICTS, [*extras, "_batch_id"])


def account_owners(disp_ok: DataFrame) -> DataFrame:
    """(``_ref_account``, ``_ref_owner``): raw account id → raw client id of its OWNER disposition."""
    return (disp_ok.filter(F.col("__disp_type") == "owner")
            .select(F.col("__account_id").alias("_ref_account"), F.col("__client_id").alias("_ref_owner")))


def accounts_with_owner(account_ok: DataFrame, owners: DataFrame) -> DataFrame:
    """Accepted accounts keyed by raw id with the raw owner client id (``_ref_owner``, may be null)."""
    return (account_ok.join(owners, F.col("__account_id") == F.col("_ref_account"), "left")
            .select(F.col("__account_id").alias("_ref_account_id"), "_ref_owner"))


def silver_accounts(ok: DataFrame, owners: DataFrame, *, key: bytes) -> DataFrame:
    """Accepted accounts: hashed id, the owner's customer key, district, frequency, opening date."""
    joined = ok.join(owners, F.col("__account_id") == F.col("_ref_account"), "left")
    return conform(joined.select(
        _hash("account_id", "account", key).alias("account_id"),
        pseudonymize(F.col("_ref_owner"), key, namespace=NAMESPACES["client"]).alias("customer_key"),
        F.col("__district_id").alias("district_id"), F.col("__frequency").alias("frequency"),
        F.col("__opened_date").alias("opened_date"), "_batch_id"), SILVER_BANK_ACCOUNTS, ["_batch_id"])


def _owner_key(key: bytes) -> Column:
    return pseudonymize(F.col("_ref_owner"), key, namespace=NAMESPACES["client"]).alias("customer_key")


def silver_transactions(ok: DataFrame, *, key: bytes) -> DataFrame:
    """Accepted transactions (validated against accounts with owner) in the contract's shape."""
    return conform(ok.select(
        _hash("txn_id", "trans", key).alias("txn_id"), _hash("account_id", "account", key).alias("account_id"),
        _owner_key(key), *[F.col(_PREFIX + n).alias(n) for n in
                           ("ts", "direction", "amount", "balance", "operation", "category")],
        "_batch_id"), SILVER_BANK_TRANSACTIONS, ["_batch_id"])


def silver_cards(ok: DataFrame, *, key: bytes) -> DataFrame:
    """Accepted cards; account and customer come from the card's disposition."""
    return conform(ok.select(
        _hash("card_id", "card", key).alias("card_id"),
        pseudonymize(F.col("_ref_disp_account"), key, namespace=NAMESPACES["account"]).alias("account_id"),
        pseudonymize(F.col("_ref_disp_client"), key, namespace=NAMESPACES["client"]).alias("customer_key"),
        F.col("__card_type").alias("card_type"), F.col("__issued_date").alias("issued_date"), "_batch_id"),
        SILVER_BANK_CARDS, ["_batch_id"])


def silver_loans(ok: DataFrame, *, key: bytes) -> DataFrame:
    """Accepted loans; ``status`` keeps the code A–D, ``status_desc`` names it."""
    return conform(ok.select(
        _hash("loan_id", "loan", key).alias("loan_id"), _hash("account_id", "account", key).alias("account_id"),
        _owner_key(key), *[F.col(_PREFIX + n).alias(n) for n in
                           ("granted_date", "amount", "duration_months", "monthly_payment", "status",
                            "status_desc")], "_batch_id"), SILVER_BANK_LOANS, ["_batch_id"])


def silver_orders(ok: DataFrame, *, key: bytes) -> DataFrame:
    """Accepted standing orders (the partner bank and account are not carried)."""
    return conform(ok.select(
        _hash("order_id", "order", key).alias("order_id"), _hash("account_id", "account", key).alias("account_id"),
        _owner_key(key), F.col("__amount").alias("amount"), F.col("__category").alias("category"), "_batch_id"),
        SILVER_BANK_ORDERS, ["_batch_id"])


def client_activity(trans_ok: DataFrame, account_ok: DataFrame, disp_ok: DataFrame) -> DataFrame:
    """(``__client_id``, ``first_activity``, ``last_activity``) over every account a client may use.

    Activity is the account's opening (at 00:00) and its accepted transactions; a client counts
    the accounts of all its dispositions (owner or disponent).
    """
    per_account = (trans_ok.groupBy(F.col("__account_id").alias("_act_account"))
                   .agg(F.min("__ts").alias("_first_ts"), F.max("__ts").alias("_last_ts")))
    opened = account_ok.select(F.col("__account_id").alias("_act_account"),
                               F.col("__opened_date").cast("timestamp").alias("_opened"))
    accounts = opened.join(per_account, "_act_account", "left").select(
        "_act_account", F.least("_opened", "_first_ts").alias("_first"), F.greatest("_opened", "_last_ts").alias("_last"))
    return (disp_ok.select("__client_id", F.col("__account_id").alias("_act_account"))
            .join(accounts, "_act_account").groupBy("__client_id")
            .agg(F.min("_first").alias("first_activity"), F.max("_last").alias("last_activity")))


def silver_customers_bank(client_ok: DataFrame, activity: DataFrame, *, key: bytes, settings: Mapping) -> DataFrame:
    """The banking rows of ``silver_customers``: one per accepted client, no birth number."""
    rules = settings["refine"]
    labels = rules.get("gender") or {}
    raw_birth = clean_text(F.col(settings["tables"]["client"]["columns"]["birth_number"]))
    return conform(client_ok.join(activity, "__client_id", "left").select(
        _hash("client_id", "client", key).alias("customer_key"), F.lit("banking").alias("domain"),
        F.lit(None).cast("string").alias("country"), F.col("__district_id").alias("district_id"),
        gender(raw_birth, female_month_offset=int(rules["female_month_offset"]),
               female=labels.get("female", "F"), male=labels.get("male", "M")).alias("gender"),
        F.year("__birth_number").alias("birth_year"), "first_activity", "last_activity"), SILVER_CUSTOMERS)


# --------------------------------------------------------------------------- the whole source

def _keys(ok: DataFrame, field: str, *payload: tuple[str, str]) -> DataFrame:
    """Accepted parent keys (first column) with payload columns ``_ref_*``."""
    return ok.select(F.col(_PREFIX + field).alias(f"__key_{field}"),
                     *[F.col(_PREFIX + src).alias(dst) for src, dst in payload])


def refine_bank(bronze: Mapping[str, DataFrame], *, key: bytes, settings: Mapping,
                cache: Callable[[DataFrame], DataFrame] | None = None) -> dict[str, DataFrame]:
    """Refine the eight Berka bronze tables into the silver bank tables and their quarantines.

    Parameters
    ----------
    bronze : table name (``account``, ``client``, ``disp``, ``trans``, ``card``, ``loan``,
        ``order``, ``district``) → bronze DataFrame (raw string columns named as in the file
        header plus lineage columns).
    key : the pseudonymisation key (:func:`crm_mining.pii.resolve_key`).
    settings : the berka source definition (``config.section("sources.berka")``).
    cache : optional; applied to each table's checked rows (typed fields and ``_reason``),
        each of which feeds several outputs (accepted rows, quarantine, child tables). Pass a
        function that persists the frame and remembers it, and unpersist after the writes;
        without it every output recomputes the checks it depends on.

    Returns
    -------
    dict
        ``silver_bank_transactions``, ``silver_bank_accounts``, ``silver_bank_cards``,
        ``silver_bank_loans``, ``silver_bank_orders``, ``silver_districts``,
        ``silver_customers_bank`` and ``quarantine_berka_<table>`` for each table. For every
        table, bronze rows = accepted rows + quarantined rows.

    Examples
    --------
    >>> out = refine_bank(bronze, key=resolve_key(demo=True), settings=cfg.section("sources.berka"))
    >>> out["silver_bank_accounts"].columns[:3]
    ['account_id', 'customer_key', 'district_id']
    """
    missing = [t for t in TABLES if t not in bronze]
    if missing:
        raise ValueError(f"refine_bank needs the bronze tables {missing} (got {sorted(bronze)})")
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise TypeError("key must be non-empty bytes (crm_mining.pii.resolve_key)")
    for table in TABLES:  # every problem named before any plan is built
        _checked_bronze(bronze[table], table=table, settings=settings)
    if cache is not None and not callable(cache):
        raise TypeError("cache must be a function DataFrame -> DataFrame (e.g. one that persists it)")
    keep = cache or (lambda df: df)
    checked: dict[str, DataFrame] = {}

    def check(table: str, *refs: tuple[str, DataFrame, str]) -> DataFrame:
        checked[table] = keep(validate(bronze[table], table=table, settings=settings, references=refs))
        return accepted(checked[table])

    district_ok = check("district")
    district_keys = F.broadcast(_keys(district_ok, "district_id"))
    client_ok = check("client", ("district_id", district_keys, "unknown_district"))
    account_ok = check("account", ("district_id", district_keys, "unknown_district"))
    checked["disp"] = keep(extra_owners(validate(bronze["disp"], table="disp", settings=settings, references=[
        ("client_id", _keys(client_ok, "client_id"), "unknown_client"),
        ("account_id", _keys(account_ok, "account_id"), "unknown_account")]), settings=settings))
    disp_ok = accepted(checked["disp"])
    owners = account_owners(disp_ok)
    owned = accounts_with_owner(account_ok, owners)
    trans_ok = check("trans", ("account_id", owned, "unknown_account"))
    card_ok = check("card", ("disp_id", _keys(disp_ok, "disp_id", ("account_id", "_ref_disp_account"),
                                              ("client_id", "_ref_disp_client")), "unknown_disp"))
    loan_ok = check("loan", ("account_id", owned, "unknown_account"))
    order_ok = check("order", ("account_id", owned, "unknown_account"))
    out = {
        "silver_bank_transactions": silver_transactions(trans_ok, key=key),
        "silver_bank_accounts": silver_accounts(account_ok, owners, key=key),
        "silver_bank_cards": silver_cards(card_ok, key=key),
        "silver_bank_loans": silver_loans(loan_ok, key=key),
        "silver_bank_orders": silver_orders(order_ok, key=key),
        "silver_districts": silver_districts(district_ok),
        "silver_customers_bank": silver_customers_bank(
            client_ok, client_activity(trans_ok, account_ok, disp_ok), key=key, settings=settings),
    }
    for table in TABLES:
        out[f"quarantine_berka_{table}"] = quarantine(checked[table], bronze[table].columns)
    return out


def extra_owners(checked_disp: DataFrame, *, settings: Mapping) -> DataFrame:
    """Reject every OWNER disposition of an account after its first (``extra_owner``), so that
    each account has at most one owner."""
    column = settings["tables"]["disp"]["columns"]["disp_type"]
    is_owner = F.col("_reason").isNull() & (F.col("__disp_type") == "owner")
    order = Window.partitionBy("__account_id", is_owner).orderBy(
        F.col("_batch_id"), F.col("_line_number").try_cast("long"), F.col("_line_number"))
    rank = F.row_number().over(order)
    return checked_disp.withColumn("_reason", F.when(is_owner & (rank > 1), reason(
        "extra_owner", column, F.col(column))).otherwise(F.col("_reason")))
