"""Customer 360: one row per customer as of a date, retail and bank features side by side.

The step ``customer360`` reads the silver tables, keeps only events strictly before the as-of
date, and writes ``gold_customer_360``:

- retail features (from ``silver_retail_lines``): first and last purchase, tenure, invoices,
  purchase days, gross and net spend (net = after returns), return rate, average basket value
  and size, distinct products, inter-purchase gap mean and trend, net spend in the last N days;
- bank features (from ``silver_bank_*``): accounts, average / minimum / latest balance, monthly
  credit and debit flows, transaction counts by category, best card type, loan amount and
  status, standing-order amounts by category, fees and penalty interest;
- the two joined for linked customers through ``silver_customer_link``. The link is made
  one-to-one first (the smallest key wins on either side), so the join never duplicates a
  customer.

``customer_key`` is the retail key, else the bank key; ``domain`` is ``retail``, ``banking`` or
``linked`` (both sides have activity before the as-of date). Which categories become columns
lives in the ``customer360:`` section of the configuration.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Mapping, Sequence

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from .pipeline import StepContext, StepResult

log = logging.getLogger(__name__)

OUTPUT_TABLE = "gold_customer_360"
KEY_COLUMNS = ("customer_key", "retail_customer_key", "bank_customer_key", "domain")


def _check_date(as_of: dt.date) -> dt.date:
    if not isinstance(as_of, dt.date):
        raise TypeError(f"as_of must be a datetime.date, got {type(as_of).__name__}")
    return as_of


def _require(df: DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; has {df.columns}")


def _slug(value: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(value).lower()).strip("_") or "none"


def before(df: DataFrame, as_of: dt.date, *, ts_col: str = "ts") -> DataFrame:
    """Rows whose ``ts_col`` is strictly before the as-of date (midnight of ``as_of``)."""
    return df.filter(F.col(ts_col) < F.lit(dt.datetime.combine(_check_date(as_of), dt.time())))


# -- retail ------------------------------------------------------------------------------
def retail_features(lines: DataFrame, *, as_of: dt.date,
                    spend_windows_days: Sequence[int] = (30, 90, 365)) -> DataFrame:
    """Per retail customer: purchase history features from ``silver_retail_lines``.

    Purchases are non-return lines; returns (negative amounts) reduce ``net_spend`` and make
    ``return_rate`` = returned value / gross value. ``gap_days_mean`` is the mean number of
    days between consecutive purchase days and ``gap_days_trend`` the least-squares slope of
    those gaps over their order (positive = purchases drifting apart).

    Examples
    --------
    >>> retail_features(lines, as_of=dt.date(2011, 12, 10)).select("net_spend").show()
    """
    _require(lines, ["customer_key", "ts", "invoice_id", "product_id", "quantity", "amount",
                     "is_return"], "silver_retail_lines")
    as_of_lit = F.lit(_check_date(as_of))
    known = before(lines, as_of).filter(F.col("customer_key").isNotNull())
    is_buy = ~F.coalesce(F.col("is_return"), F.lit(False))
    windows = [F.sum(F.when(F.col("ts") >= F.lit(dt.datetime.combine(as_of - dt.timedelta(days=int(n)),
                                                                    dt.time())), F.col("amount"))
                     .otherwise(0.0)).alias(f"spend_last_{int(n)}d") for n in spend_windows_days]
    per_customer = known.groupBy("customer_key").agg(
        F.min(F.when(is_buy, F.col("ts"))).alias("first_purchase_ts"),
        F.max(F.when(is_buy, F.col("ts"))).alias("last_purchase_ts"),
        F.countDistinct(F.when(is_buy, F.col("invoice_id"))).alias("invoices"),
        F.countDistinct(F.when(is_buy, F.to_date("ts"))).alias("purchase_days"),
        F.sum(F.when(is_buy, F.col("amount")).otherwise(0.0)).alias("gross_spend"),
        F.sum(F.when(~is_buy, -F.col("amount")).otherwise(0.0)).alias("returned_value"),
        F.sum(F.when(is_buy, F.col("quantity")).otherwise(0)).alias("_items"),
        F.sum("amount").alias("net_spend"),
        F.countDistinct(F.when(is_buy, F.col("product_id"))).alias("distinct_products"),
        *windows,
    )
    out = (per_customer
           .withColumn("tenure_days", F.datediff(as_of_lit, F.to_date("first_purchase_ts")))
           .withColumn("recency_days", F.datediff(as_of_lit, F.to_date("last_purchase_ts")))
           .withColumn("return_rate", F.when(F.col("gross_spend") > 0,
                                             F.col("returned_value") / F.col("gross_spend")))
           .withColumn("avg_basket_value", F.when(F.col("invoices") > 0,
                                                  F.col("gross_spend") / F.col("invoices")))
           .withColumn("avg_basket_size", F.when(F.col("invoices") > 0,
                                                 F.col("_items") / F.col("invoices")))
           .drop("_items"))
    return out.join(purchase_gaps(known), "customer_key", "left")


def purchase_gaps(lines: DataFrame) -> DataFrame:
    """Per customer: mean and trend (OLS slope) of the day gaps between purchase days."""
    days = (lines.filter(~F.coalesce(F.col("is_return"), F.lit(False)))
            .select("customer_key", F.to_date("ts").alias("day")).distinct())
    order = Window.partitionBy("customer_key").orderBy("day")
    gaps = (days.withColumn("gap", F.datediff("day", F.lag("day").over(order)))
            .withColumn("k", F.row_number().over(order).cast("double"))
            .filter(F.col("gap").isNotNull()))
    return gaps.groupBy("customer_key").agg(
        F.avg("gap").cast("double").alias("gap_days_mean"),
        F.regr_slope(F.col("gap").cast("double"), F.col("k")).alias("gap_days_trend"),
    )


# -- banking -------------------------------------------------------------------------------
def bank_transaction_features(transactions: DataFrame, *, as_of: dt.date, categories: Sequence[str],
                              fee_categories: Sequence[str],
                              penalty_categories: Sequence[str]) -> DataFrame:
    """Per bank customer: balances, monthly flows, counts by category, fees and penalties.

    Balances are taken per account (average, minimum, latest = balance after the last
    transaction) and summed over the customer's accounts. Monthly flows divide the credit and
    debit totals by the months between the first transaction and the as-of date (at least 1).
    """
    _require(transactions, ["account_id", "customer_key", "ts", "direction", "amount", "balance",
                            "category"], "silver_bank_transactions")
    known = (before(transactions, as_of).filter(F.col("customer_key").isNotNull())
             .withColumn("category", F.lower(F.col("category"))))
    direction = F.lower(F.col("direction"))
    fee_categories = [str(c).lower() for c in fee_categories]
    penalty_categories = [str(c).lower() for c in penalty_categories]
    counts = [F.sum(F.when(F.col("category") == str(c).lower(), 1).otherwise(0)).alias(f"txn_count_{_slug(c)}")
              for c in categories]
    per_account = known.groupBy("customer_key", "account_id").agg(
        F.avg("balance").alias("avg_balance"),
        F.min("balance").alias("min_balance"),
        F.max_by("balance", F.struct("ts", "txn_id")).alias("latest_balance"),
        F.min("ts").alias("_first_ts"),
        F.sum(F.when(direction == "credit", F.col("amount")).otherwise(0.0)).alias("_credit"),
        F.sum(F.when(direction == "debit", F.col("amount")).otherwise(0.0)).alias("_debit"),
        F.count(F.lit(1)).alias("txn_count"),
        F.sum(F.when(F.col("category").isin(list(fee_categories)), F.col("amount"))
              .otherwise(0.0)).alias("fees"),
        F.sum(F.when(F.col("category").isin(list(penalty_categories)), F.col("amount"))
              .otherwise(0.0)).alias("penalty_interest"),
        *counts,
    )
    sums = [F.sum(c).alias(c) for c in per_account.columns
            if c not in ("customer_key", "account_id", "_first_ts", "_credit", "_debit")]
    per_customer = per_account.groupBy("customer_key").agg(
        F.min("_first_ts").alias("first_transaction_ts"), F.sum("_credit").alias("_credit"),
        F.sum("_debit").alias("_debit"), *sums)
    months = F.greatest(F.lit(1.0), F.months_between(F.lit(as_of), F.to_date("first_transaction_ts")))
    return (per_customer.withColumn("monthly_credit", F.col("_credit") / months)
            .withColumn("monthly_debit", F.col("_debit") / months).drop("_credit", "_debit"))


def bank_product_features(*, accounts: DataFrame, cards: DataFrame | None, loans: DataFrame | None,
                          orders: DataFrame | None, as_of: dt.date, card_rank: Sequence[str],
                          order_categories: Sequence[str]) -> DataFrame:
    """Per bank customer: accounts held, best card type, loans and standing orders.

    ``card_type`` is the highest-ranked card held (``card_rank`` lists types best first);
    ``loan_amount`` sums loans granted before the as-of date and ``loan_status`` is the
    ``status_desc`` of the latest one; ``order_amount_<category>`` sums standing orders.
    """
    as_of_lit = F.lit(_check_date(as_of))
    out = (accounts.filter(F.col("customer_key").isNotNull())
           .filter(F.col("opened_date").isNull() | (F.col("opened_date") < as_of_lit))
           .groupBy("customer_key").agg(F.countDistinct("account_id").alias("accounts"),
                                        F.min("opened_date").alias("first_account_date")))
    if cards is not None:
        rank = F.array_position(F.array(*[F.lit(c) for c in card_rank]), F.lower(F.col("card_type")))
        rank = F.when(rank == 0, F.lit(len(card_rank) + 1)).otherwise(rank)
        best = (cards.filter(F.col("issued_date").isNull() | (F.col("issued_date") < as_of_lit))
                .groupBy("customer_key")
                .agg(F.min_by(F.lower(F.col("card_type")), rank).alias("card_type"),
                     F.count(F.lit(1)).alias("cards")))
        out = out.join(best, "customer_key", "left")
    if loans is not None:
        loan = (loans.filter(F.col("granted_date") < as_of_lit).groupBy("customer_key")
                .agg(F.sum("amount").alias("loan_amount"),
                     F.max_by("status_desc", F.struct("granted_date", "loan_id")).alias("loan_status"),
                     F.sum("monthly_payment").alias("loan_monthly_payment")))
        out = out.join(loan, "customer_key", "left")
    if orders is not None:
        sums = [F.sum(F.when(F.lower(F.col("category")) == str(c).lower(), F.col("amount")).otherwise(0.0))
                .alias(f"order_amount_{_slug(c)}") for c in order_categories]
        orders_df = orders.groupBy("customer_key").agg(F.sum("amount").alias("order_amount_total"), *sums)
        out = out.join(orders_df, "customer_key", "left")
    return out


# -- joining the domains ----------------------------------------------------------------
def one_to_one_links(link: DataFrame) -> DataFrame:
    """Make the customer link one-to-one: each retail key keeps its smallest bank key, then
    each bank key keeps its smallest retail key. Deterministic, so reruns agree."""
    _require(link, ["retail_customer_key", "bank_customer_key"], "silver_customer_link")
    pairs = link.dropna(subset=["retail_customer_key", "bank_customer_key"])
    by_retail = pairs.groupBy("retail_customer_key").agg(F.min("bank_customer_key").alias("bank_customer_key"))
    return by_retail.groupBy("bank_customer_key").agg(F.min("retail_customer_key").alias("retail_customer_key"))


def join_domains(retail: DataFrame | None, bank: DataFrame | None, link: DataFrame | None) -> DataFrame:
    """Full outer join of retail and bank features through the one-to-one link.

    ``retail`` and ``bank`` are keyed by ``customer_key`` (one row each). Returns one row per
    customer with ``customer_key``, ``retail_customer_key``, ``bank_customer_key``, ``domain``
    and the features of both sides (prefixed nothing: the feature names do not collide).
    """
    if retail is None and bank is None:
        raise ValueError("customer 360 needs retail or bank features")
    r = retail.withColumnRenamed("customer_key", "retail_customer_key") if retail is not None else None
    b = bank.withColumnRenamed("customer_key", "bank_customer_key") if bank is not None else None
    if r is None:
        joined = b.withColumn("retail_customer_key", F.lit(None).cast("string"))
    elif b is None:
        joined = r.withColumn("bank_customer_key", F.lit(None).cast("string"))
    else:
        if link is not None:
            pairs = one_to_one_links(link).withColumnRenamed("bank_customer_key", "_linked_bank")
            r = r.join(pairs, "retail_customer_key", "left")
        else:
            r = r.withColumn("_linked_bank", F.lit(None).cast("string"))
        b = b.withColumn("_has_bank", F.lit(True))
        joined = (r.withColumn("_has_retail", F.lit(True))
                  .join(b, r["_linked_bank"] == b["bank_customer_key"], "full_outer")
                  .drop("_linked_bank"))
    has_r, has_b = F.col("retail_customer_key").isNotNull(), F.col("bank_customer_key").isNotNull()
    domain = F.when(has_r & has_b, "linked").when(has_r, "retail").otherwise("banking")
    joined = joined.drop("_has_bank", "_has_retail")
    keys = [F.coalesce("retail_customer_key", "bank_customer_key").alias("customer_key"),
            "retail_customer_key", "bank_customer_key", domain.alias("domain")]
    return joined.select(*keys, *[c for c in joined.columns if c not in KEY_COLUMNS])


def customer_360(*, as_of: dt.date, settings: Mapping, retail_lines: DataFrame | None = None,
                 bank_transactions: DataFrame | None = None, bank_accounts: DataFrame | None = None,
                 bank_cards: DataFrame | None = None, bank_loans: DataFrame | None = None,
                 bank_orders: DataFrame | None = None, customer_link: DataFrame | None = None,
                 customers: DataFrame | None = None) -> DataFrame:
    """The customer 360 rows (without ``as_of_date`` / ``run_id``) from the silver tables.

    Parameters
    ----------
    as_of : only events strictly before this date are used.
    settings : the ``customer360`` configuration section.
    retail_lines, bank_* , customer_link, customers : silver tables; any may be ``None``.

    Examples
    --------
    >>> rows = customer_360(as_of=dt.date(2011, 12, 10), settings=cfg.section("customer360"),
    ...                     retail_lines=spark.table("crm.silver_retail_lines"))
    """
    _check_date(as_of)
    retail = None
    if retail_lines is not None:
        retail = retail_features(retail_lines, as_of=as_of,
                                 spend_windows_days=settings.get("spend_windows_days", (30, 90, 365)))
    bank = None
    if bank_transactions is not None:
        bank = bank_transaction_features(
            bank_transactions, as_of=as_of, categories=settings.get("transaction_categories", ()),
            fee_categories=settings.get("fee_categories", ()),
            penalty_categories=settings.get("penalty_categories", ()))
        if bank_accounts is not None:
            products = bank_product_features(
                accounts=bank_accounts, cards=bank_cards, loans=bank_loans, orders=bank_orders,
                as_of=as_of, card_rank=settings.get("card_rank", ()),
                order_categories=settings.get("order_categories", ()))
            bank = bank.join(products, "customer_key", "left")
    out = join_domains(retail, bank, customer_link)
    if customers is not None:
        out = _with_profile(out, customers)
    return out


def _with_profile(rows: DataFrame, customers: DataFrame) -> DataFrame:
    """Add country (retail side) and district, gender, birth year (bank side)."""
    retail = (customers.filter(F.col("domain") == "retail")
              .groupBy("customer_key").agg(F.first("country", ignorenulls=True).alias("country"))
              .withColumnRenamed("customer_key", "retail_customer_key"))
    bank = (customers.filter(F.col("domain") == "banking").groupBy("customer_key")
            .agg(F.first("district_id", ignorenulls=True).alias("district_id"),
                 F.first("gender", ignorenulls=True).alias("gender"),
                 F.first("birth_year", ignorenulls=True).alias("birth_year"))
            .withColumnRenamed("customer_key", "bank_customer_key"))
    return rows.join(retail, "retail_customer_key", "left").join(bank, "bank_customer_key", "left")


RETAIL_TABLE = "silver_retail_lines"
BANK_TABLES = {"bank_transactions": "silver_bank_transactions", "bank_accounts": "silver_bank_accounts",
               "bank_cards": "silver_bank_cards", "bank_loans": "silver_bank_loans",
               "bank_orders": "silver_bank_orders"}


def run(ctx: StepContext) -> StepResult:
    """The ``customer360`` step: silver tables → ``gold_customer_360`` for the as-of date."""
    settings = ctx.config.section("customer360")
    names = {"retail_lines": RETAIL_TABLE, **BANK_TABLES, "customer_link": "silver_customer_link",
             "customers": "silver_customers"}
    present = {arg: table for arg, table in names.items() if ctx.lake.exists(table)}
    if RETAIL_TABLE not in present.values() and "silver_bank_transactions" not in present.values():
        raise ValueError("customer360 needs silver_retail_lines or silver_bank_transactions; run refine first")
    result = StepResult(inputs={t: ctx.lake.version(t) for t in present.values()})
    frames = {arg: ctx.lake.read(table) for arg, table in present.items()}
    rows = ctx.stamp(customer_360(as_of=ctx.as_of, settings=settings, **frames))
    result.outputs[OUTPUT_TABLE] = ctx.lake.replace_partition(rows, OUTPUT_TABLE, as_of_date=ctx.as_of)
    written = ctx.lake.read(OUTPUT_TABLE).filter(F.col("as_of_date") == F.lit(ctx.as_of))
    counts = {r["domain"]: r["n"] for r in written.groupBy("domain").agg(F.count(F.lit(1)).alias("n")).collect()}
    result.rows_out = int(sum(counts.values()))
    result.metrics = {f"customers_{d}": float(n) for d, n in counts.items()}
    result.metrics["customers"] = float(result.rows_out)
    _log_tracking(ctx, result)
    log.info("[customer360] %d customers as of %s (%s)", result.rows_out, ctx.as_of,
             ", ".join(f"{d} {n}" for d, n in sorted(counts.items())))
    return result


def _log_tracking(ctx: StepContext, result: StepResult) -> None:
    from . import tracking

    if not tracking.is_enabled() or tracking.active_run_id() is None:
        return
    tracking.log_params({"as_of_date": ctx.as_of.isoformat(), "config_hash": ctx.config.hash,
                         **{f"input_version.{k}": v for k, v in result.inputs.items()}})
    tracking.log_metrics(result.metrics)
