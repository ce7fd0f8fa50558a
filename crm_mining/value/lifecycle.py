"""Lifecycle stage and relationship class: documented, configurable rules (``value.lifecycle``).

``lifecycle_stage`` (first matching rule wins):

1. ``prospect`` — no purchase before the as-of date (e.g. a bank-only customer);
2. ``churned`` — recency > ``churned_recency_days`` or p_alive < ``churned_p_alive``;
3. ``new`` — tenure ≤ ``new_tenure_days``;
4. ``decline`` — recency > ``decline_recency_days``, or p_alive < ``decline_p_alive``, or the
   inter-purchase gaps grow (gap trend > ``decline_gap_trend`` days per purchase);
5. ``growth`` — tenure ≤ ``growth_tenure_days`` or the gaps shrink (gap trend < −``decline_gap_trend``);
6. ``maturity`` — everything else.

``relationship_class``: ``potential`` (no purchase), ``lapsed`` (recency >
``lapsed_recency_days``), ``loyal`` (frequency ≥ ``loyal_min_frequency``), ``first-time
buyer`` (frequency 1), else ``repeat buyer``.
"""
from __future__ import annotations

from typing import Mapping

from pyspark.sql import Column
from pyspark.sql import functions as F


def lifecycle_stage_col(settings: Mapping, *, recency: str = "recency_days", tenure: str = "tenure_days",
                        frequency: str = "frequency", p_alive: str = "p_alive",
                        gap_trend: str = "gap_days_trend") -> Column:
    """The lifecycle stage as a Spark expression (nulls in p_alive or the trend never match)."""
    s = {"churned_recency_days": 365, "churned_p_alive": 0.1, "new_tenure_days": 90,
         "decline_recency_days": 180, "decline_p_alive": 0.5, "decline_gap_trend": 5.0,
         "growth_tenure_days": 365, **dict(settings)}
    trend = F.col(gap_trend)
    return (F.when(F.coalesce(F.col(frequency), F.lit(0)) <= 0, "prospect")
            .when((F.col(recency) > s["churned_recency_days"]) | (F.col(p_alive) < s["churned_p_alive"]), "churned")
            .when(F.col(tenure) <= s["new_tenure_days"], "new")
            .when((F.col(recency) > s["decline_recency_days"]) | (F.col(p_alive) < s["decline_p_alive"])
                  | (trend > s["decline_gap_trend"]), "decline")
            .when((F.col(tenure) <= s["growth_tenure_days"]) | (trend < -s["decline_gap_trend"]), "growth")
            .otherwise("maturity"))


def relationship_class_col(settings: Mapping, *, recency: str = "recency_days",
                           frequency: str = "frequency") -> Column:
    """The relationship class as a Spark expression."""
    s = {"lapsed_recency_days": 365, "loyal_min_frequency": 10, **dict(settings)}
    f = F.coalesce(F.col(frequency), F.lit(0))
    return (F.when(f <= 0, "potential")
            .when(F.col(recency) > s["lapsed_recency_days"], "lapsed")
            .when(f >= s["loyal_min_frequency"], "loyal")
            .when(f == 1, "first-time buyer")
            .otherwise("repeat buyer"))
