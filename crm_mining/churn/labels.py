"""Churn labels: the cutoff dates, who is in the population at a cutoff, and who churned after it.

Retail is non-contractual: a customer churned at a cutoff when they bought nothing in the
``horizon_days`` after it. Banking is dormancy: no customer-initiated transaction (interest,
fees and penalty interest booked by the bank do not count) in the horizon, or the account
closed in it where a closure date is known. Only customers active in the ``lookback_days``
before a cutoff belong to its population.
"""
from __future__ import annotations

import datetime as dt
from typing import Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

CUTOFF_COL = "cutoff_date"
LABEL_COL = "churned"


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def training_cutoffs(*, as_of: dt.date, horizon_days: int, n_cutoffs: int, step_days: int) -> list[dt.date]:
    """Cutoffs whose label windows end by ``as_of``, oldest first.

    The latest is ``as_of - horizon_days``; each earlier one is ``step_days`` before the next.

    Examples
    --------
    >>> training_cutoffs(as_of=dt.date(2011, 12, 8), horizon_days=90, n_cutoffs=2, step_days=30)
    [datetime.date(2011, 8, 10), datetime.date(2011, 9, 9)]
    """
    if not isinstance(as_of, dt.date):
        raise TypeError(f"as_of must be a date, got {type(as_of).__name__}")
    for name, value in (("horizon_days", horizon_days), ("n_cutoffs", n_cutoffs), ("step_days", step_days)):
        _positive_int(name, value)
    latest = as_of - dt.timedelta(days=horizon_days)
    return sorted(latest - dt.timedelta(days=k * step_days) for k in range(n_cutoffs))


def cutoff_frame(spark: SparkSession, cutoffs: Sequence[dt.date]) -> DataFrame:
    """A one-column DataFrame of cutoff dates (small: broadcast it in joins)."""
    if not cutoffs:
        raise ValueError("at least one cutoff date is needed")
    return spark.createDataFrame([(c,) for c in cutoffs], f"{CUTOFF_COL} date")


def retail_invoices(lines: DataFrame) -> DataFrame:
    """One row per customer invoice: time, gross and returned amounts, line count.

    An invoice with any non-return line is a purchase (``is_purchase``); anonymous lines
    (null ``customer_key``) are left out.
    """
    is_return = F.coalesce(F.col("is_return"), F.lit(False))
    return (
        lines.filter(F.col("customer_key").isNotNull())
        .groupBy("customer_key", "invoice_id")
        .agg(
            F.min("ts").alias("ts"),
            F.sum(F.when(~is_return, F.col("amount")).otherwise(0.0)).alias("gross_amount"),
            F.sum(F.when(is_return, F.abs(F.col("amount"))).otherwise(0.0)).alias("returned_amount"),
            F.sum(F.when(~is_return, 1).otherwise(0)).alias("purchase_lines"),
        )
        .withColumn("is_purchase", F.col("purchase_lines") > 0)
    )


def _window_hits(events: DataFrame, cutoffs: DataFrame, *, horizon_days: int) -> DataFrame:
    """(customer_key, cutoff_date) pairs with an event in [cutoff, cutoff + horizon)."""
    day = F.to_date("ts")
    cond = (day >= F.col(CUTOFF_COL)) & (day < F.date_add(F.col(CUTOFF_COL), horizon_days))
    return events.join(F.broadcast(cutoffs), cond).select("customer_key", CUTOFF_COL).distinct()


def _active_before(events: DataFrame, cutoffs: DataFrame, *, lookback_days: int) -> DataFrame:
    """(customer_key, cutoff_date) pairs with an event in [cutoff - lookback, cutoff)."""
    day = F.to_date("ts")
    cond = (day < F.col(CUTOFF_COL)) & (day >= F.date_sub(F.col(CUTOFF_COL), lookback_days))
    return events.join(F.broadcast(cutoffs), cond).select("customer_key", CUTOFF_COL).distinct()


def retail_population(invoices: DataFrame, cutoffs: DataFrame, *, lookback_days: int) -> DataFrame:
    """(customer_key, cutoff_date) of customers with a purchase in the lookback before the cutoff."""
    _positive_int("lookback_days", lookback_days)
    return _active_before(invoices.filter("is_purchase"), cutoffs, lookback_days=lookback_days)


def bank_population(transactions: DataFrame, cutoffs: DataFrame, *, lookback_days: int,
                    bank_initiated: Sequence[str]) -> DataFrame:
    """(customer_key, cutoff_date) of customers with an own transaction in the lookback before the cutoff."""
    _positive_int("lookback_days", lookback_days)
    own = customer_initiated(transactions, bank_initiated=bank_initiated)
    return _active_before(own, cutoffs, lookback_days=lookback_days)


def retail_labels(invoices: DataFrame, cutoffs: DataFrame, *, horizon_days: int, lookback_days: int) -> DataFrame:
    """Population and label per cutoff: ``customer_key``, ``cutoff_date``, ``churned`` (0/1).

    Examples
    --------
    >>> retail_labels(retail_invoices(lines), cutoff_frame(spark, [dt.date(2011, 9, 9)]),
    ...               horizon_days=90, lookback_days=365).show()
    """
    _positive_int("horizon_days", horizon_days)
    _positive_int("lookback_days", lookback_days)
    purchases = invoices.filter("is_purchase")
    population = _active_before(purchases, cutoffs, lookback_days=lookback_days)
    bought = _window_hits(purchases, cutoffs, horizon_days=horizon_days).withColumn("_bought", F.lit(1))
    return population.join(bought, ["customer_key", CUTOFF_COL], "left").select(
        "customer_key", CUTOFF_COL, F.col("_bought").isNull().cast("int").alias(LABEL_COL)
    )


def customer_initiated(transactions: DataFrame, *, bank_initiated: Sequence[str]) -> DataFrame:
    """Transactions the customer made: not interest, fees or penalties booked by the bank."""
    return transactions.filter(F.col("customer_key").isNotNull() & ~booked_by_bank(bank_initiated))


def booked_by_bank(bank_initiated: Sequence[str]) -> Column:
    """True for a transaction whose operation or category is one the bank books on its own."""
    codes = [str(c).lower() for c in bank_initiated]
    return F.lower(F.coalesce(F.col("category"), F.lit(""))).isin(codes) | F.lower(
        F.coalesce(F.col("operation"), F.lit(""))).isin(codes)


def bank_labels(
    transactions: DataFrame,
    accounts: DataFrame | None,
    cutoffs: DataFrame,
    *,
    horizon_days: int,
    lookback_days: int,
    bank_initiated: Sequence[str],
) -> DataFrame:
    """Population and dormancy label per cutoff: ``customer_key``, ``cutoff_date``, ``churned``.

    ``accounts`` with a ``closed_date`` column also marks as churned a customer whose accounts
    all close within the horizon; without it, dormancy alone decides.
    """
    _positive_int("horizon_days", horizon_days)
    _positive_int("lookback_days", lookback_days)
    own = customer_initiated(transactions, bank_initiated=bank_initiated)
    population = _active_before(own, cutoffs, lookback_days=lookback_days)
    active = _window_hits(own, cutoffs, horizon_days=horizon_days).withColumn("_active", F.lit(1))
    labelled = population.join(active, ["customer_key", CUTOFF_COL], "left")
    churned = F.col("_active").isNull()
    if accounts is not None and "closed_date" in accounts.columns:
        open_after = (
            accounts.join(F.broadcast(cutoffs), F.col("closed_date").isNull()
                          | (F.col("closed_date") >= F.date_add(F.col(CUTOFF_COL), horizon_days)))
            .select("customer_key", CUTOFF_COL).distinct().withColumn("_open", F.lit(1))
        )
        labelled = labelled.join(open_after, ["customer_key", CUTOFF_COL], "left")
        churned = churned | F.col("_open").isNull()
    return labelled.select("customer_key", CUTOFF_COL, churned.cast("int").alias(LABEL_COL))
