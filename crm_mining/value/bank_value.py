"""Bank customer value: a margin model on the customer 360's bank features.

Annual margin = positive average balance × ``net_interest_margin``
              + loan amount × ``loan_interest_margin``
              + (fees + penalty interest) annualised over the months observed.
``clv_historic`` = annual margin × years of relationship (first transaction to the as-of
date); ``clv_predicted`` = annual margin spread monthly over ``horizon_months`` and discounted
at ``discount_rate_monthly``. The rates are settings (``value.bank``), documented there.
"""
from __future__ import annotations

from typing import Mapping

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F


def annual_margin_col(settings: Mapping, *, months_col: str = "_months") -> Column:
    """The yearly margin a bank customer brings (see the module docstring)."""
    nim = float(settings.get("net_interest_margin", 0.02))
    loan = float(settings.get("loan_interest_margin", 0.03))

    def col(name: str) -> Column:
        return F.coalesce(F.col(name).cast("double"), F.lit(0.0))

    fees_yearly = (col("fees") + col("penalty_interest")) * 12.0 / F.greatest(F.col(months_col), F.lit(1.0))
    return F.greatest(col("avg_balance"), F.lit(0.0)) * nim + col("loan_amount") * loan + fees_yearly


def bank_value(c360: DataFrame, *, settings: Mapping, as_of) -> DataFrame:
    """Per customer with bank features: ``bank_annual_margin``, ``bank_clv_historic``,
    ``bank_clv_predicted`` (keyed by ``customer_key``)."""
    needed = [c for c in ("avg_balance", "first_transaction_ts") if c not in c360.columns]
    if needed:
        raise ValueError(f"gold_customer_360 lacks bank column(s) {needed}")
    for c in ("fees", "penalty_interest", "loan_amount"):
        if c not in c360.columns:
            c360 = c360.withColumn(c, F.lit(0.0))
    horizon = int(settings.get("horizon_months", 12))
    rate = float(settings.get("discount_rate_monthly", 0.01))
    annuity = sum(1.0 / (1.0 + rate) ** k for k in range(1, horizon + 1)) / 12.0
    bank = (c360.filter(F.col("bank_customer_key").isNotNull() & F.col("first_transaction_ts").isNotNull())
            .withColumn("_months", F.months_between(F.lit(as_of), F.to_date("first_transaction_ts"))))
    margin = annual_margin_col(settings)
    return bank.select("customer_key", margin.alias("bank_annual_margin"),
                       (margin * F.greatest(F.col("_months"), F.lit(0.0)) / 12.0).alias("bank_clv_historic"),
                       (margin * F.lit(annuity)).alias("bank_clv_predicted"))
