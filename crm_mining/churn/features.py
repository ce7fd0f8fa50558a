"""Point-in-time churn features: per customer and cutoff, computed only from events before it.

Every feature of a (customer, cutoff) row comes from events with ``ts`` before the cutoff's
midnight (the events are joined to the cutoffs on ``ts < cutoff``), so several cutoffs stack
into one training set in one pass over the events and nothing after a cutoff can leak in.

Retail: recency, tenure, purchase counts and spend over 30/90/180/365 days, their trend
(last 90 days vs the 90 before), mean gap between purchases and recency relative to it,
basket value and size, return rate. Banking: days since the last customer-initiated
transaction, its counts and flows over 30/90/180 days and their trend, last / mean /
minimum balance, tenure and number of accounts.
"""
from __future__ import annotations

from typing import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from .labels import CUTOFF_COL, booked_by_bank

RETAIL_FEATURES: tuple[str, ...] = (
    "recency_days", "tenure_days", "purchases_total", "purchases_30d", "purchases_90d",
    "purchases_180d", "purchases_365d", "spend_total", "spend_90d", "spend_365d",
    "purchase_trend", "spend_trend", "mean_gap_days", "recency_to_gap", "avg_basket_value",
    "avg_basket_lines", "return_rate",
)

BANK_FEATURES: tuple[str, ...] = (
    "days_since_activity", "tenure_days", "accounts", "txn_30d", "txn_90d", "txn_180d",
    "txn_trend", "credit_90d", "debit_90d", "net_flow_90d", "balance_last", "balance_mean_90d",
    "balance_min_90d", "credit_trend",
)


def _before_cutoff(events: DataFrame, cutoffs: DataFrame) -> DataFrame:
    """Each event paired with every cutoff it precedes, with its age in days at that cutoff."""
    joined = events.join(F.broadcast(cutoffs), F.col("ts") < F.col(CUTOFF_COL).cast("timestamp"))
    return joined.withColumn("age_days", F.datediff(F.col(CUTOFF_COL), F.to_date("ts")))


def _within(days: int, value: Column | int = 1, *, after: int = 0) -> Column:
    """Sum of ``value`` over events aged (after, days] days."""
    inside = (F.col("age_days") <= days) & (F.col("age_days") > after)
    value = F.lit(value) if isinstance(value, int) else value
    return F.sum(F.when(inside, value).otherwise(0))


def _trend(recent: str, previous: str) -> Column:
    """(recent - previous) / (recent + previous + 1): -1 fading, 0 steady, +1 growing."""
    return (F.col(recent) - F.col(previous)) / (F.col(recent) + F.col(previous) + 1.0)


def retail_features(invoices: DataFrame, cutoffs: DataFrame) -> DataFrame:
    """Retail features per (customer_key, cutoff_date) from invoices before each cutoff.

    Parameters
    ----------
    invoices : from :func:`crm_mining.churn.labels.retail_invoices`.
    cutoffs : one ``cutoff_date`` column (:func:`crm_mining.churn.labels.cutoff_frame`).

    Examples
    --------
    >>> retail_features(retail_invoices(lines), cutoff_frame(spark, [dt.date(2011, 9, 9)]))
    """
    buys = _before_cutoff(invoices.filter("is_purchase"), cutoffs)
    spend = F.col("gross_amount")
    aggregated = buys.groupBy("customer_key", CUTOFF_COL).agg(
        F.min("age_days").alias("recency_days"),
        F.max("age_days").alias("tenure_days"),
        F.count(F.lit(1)).alias("purchases_total"),
        _within(30).alias("purchases_30d"), _within(90).alias("purchases_90d"),
        _within(180).alias("purchases_180d"), _within(365).alias("purchases_365d"),
        _within(180, after=90).alias("_purchases_prev_90d"),
        F.sum(spend).alias("spend_total"),
        _within(90, spend).alias("spend_90d"), _within(365, spend).alias("spend_365d"),
        _within(180, spend, after=90).alias("_spend_prev_90d"),
        F.sum("purchase_lines").alias("_lines"),
    )
    returns = (
        _before_cutoff(invoices, cutoffs).groupBy("customer_key", CUTOFF_COL)
        .agg(F.sum("returned_amount").alias("_returned"))
    )
    gap = (F.col("tenure_days") - F.col("recency_days")) / F.greatest(F.col("purchases_total") - 1, F.lit(1))
    out = (
        aggregated.join(returns, ["customer_key", CUTOFF_COL], "left")
        .withColumn("purchase_trend", _trend("purchases_90d", "_purchases_prev_90d"))
        .withColumn("spend_trend", _trend("spend_90d", "_spend_prev_90d"))
        .withColumn("mean_gap_days", F.when(F.col("purchases_total") > 1, gap).otherwise(F.col("tenure_days")))
        .withColumn("recency_to_gap", F.col("recency_days") / F.greatest(F.col("mean_gap_days"), F.lit(1.0)))
        .withColumn("avg_basket_value", F.col("spend_total") / F.col("purchases_total"))
        .withColumn("avg_basket_lines", F.col("_lines") / F.col("purchases_total"))
        .withColumn("return_rate", F.coalesce(F.col("_returned"), F.lit(0.0))
                    / F.greatest(F.col("spend_total"), F.lit(1e-9)))
    )
    return _as_doubles(out, RETAIL_FEATURES)


def bank_features(
    transactions: DataFrame, accounts: DataFrame | None, cutoffs: DataFrame, *, bank_initiated: Sequence[str]
) -> DataFrame:
    """Banking features per (customer_key, cutoff_date) from transactions before each cutoff.

    Balances use every transaction (the bank's own bookings move the balance too); counts and
    flows use customer-initiated ones only.
    """
    tx = _before_cutoff(transactions.filter(F.col("customer_key").isNotNull()), cutoffs)
    tx = tx.withColumn("_own", ~booked_by_bank(bank_initiated)).withColumn("_credit", (F.col("direction") == "credit") & F.col("_own"))
    one = F.when(F.col("_own"), 1).otherwise(0)
    credit = F.when(F.col("_credit"), F.col("amount")).otherwise(0.0)
    debit = F.when(F.col("_own") & (F.col("direction") == "debit"), F.col("amount")).otherwise(0.0)
    recent_balance = F.when(F.col("age_days") <= 90, F.col("balance"))
    per_account = tx.groupBy("customer_key", "account_id", CUTOFF_COL).agg(
        F.min(F.when(F.col("_own"), F.col("age_days"))).alias("days_since_activity"),
        _within(30, one).alias("txn_30d"), _within(90, one).alias("txn_90d"),
        _within(180, one).alias("txn_180d"), _within(180, one, after=90).alias("_txn_prev_90d"),
        _within(90, credit).alias("credit_90d"), _within(90, debit).alias("debit_90d"),
        _within(180, credit, after=90).alias("_credit_prev_90d"),
        F.max_by("balance", F.struct("ts", "txn_id")).alias("balance_last"),
        F.avg(recent_balance).alias("balance_mean_90d"), F.min(recent_balance).alias("balance_min_90d"),
        F.max("age_days").alias("_first_txn_age"),
    )
    sums = ["txn_30d", "txn_90d", "txn_180d", "_txn_prev_90d", "credit_90d", "debit_90d",
            "_credit_prev_90d", "balance_last", "balance_mean_90d", "balance_min_90d"]
    customer = per_account.groupBy("customer_key", CUTOFF_COL).agg(
        F.min("days_since_activity").alias("days_since_activity"),
        F.count(F.lit(1)).alias("accounts"), F.max("_first_txn_age").alias("_first_txn_age"),
        *[F.sum(c).alias(c) for c in sums],
    )
    tenure = F.col("_first_txn_age")
    if accounts is not None and "opened_date" in accounts.columns:
        opened = accounts.groupBy("customer_key").agg(F.min("opened_date").alias("_opened"))
        customer = customer.join(opened, "customer_key", "left")
        # an opening date after the cutoff is not yet known at the cutoff: ignore it
        known = F.when(F.col("_opened") < F.col(CUTOFF_COL), F.datediff(F.col(CUTOFF_COL), F.col("_opened")))
        tenure = F.coalesce(known, tenure)
    out = (
        customer.withColumn("tenure_days", tenure)
        .withColumn("net_flow_90d", F.col("credit_90d") - F.col("debit_90d"))
        .withColumn("txn_trend", _trend("txn_90d", "_txn_prev_90d"))
        .withColumn("credit_trend", _trend("credit_90d", "_credit_prev_90d"))
        .withColumn("days_since_activity", F.coalesce(F.col("days_since_activity"), F.col("tenure_days")))
    )
    return _as_doubles(out, BANK_FEATURES)


def _as_doubles(df: DataFrame, features: Sequence[str]) -> DataFrame:
    """Keep the key, cutoff and features, as doubles with missing values set to 0."""
    return df.select("customer_key", CUTOFF_COL,
                     *[F.coalesce(F.col(c).cast("double"), F.lit(0.0)).alias(c) for c in features])


def training_set(features: DataFrame, labels: DataFrame) -> DataFrame:
    """Features of the population with their labels (inner join on key and cutoff)."""
    return labels.join(features, ["customer_key", CUTOFF_COL], "inner")

