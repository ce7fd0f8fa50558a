"""Customer lifetime value: BG/NBD purchase counts and Gamma-Gamma spend, fitted on histograms.

The models are fitted by maximum likelihood on compact sufficient statistics, never on a
per-customer table on the driver:

- Spark reduces the retail lines to purchase days, then to one summary row per customer
  (``x`` repeat purchase days, ``t_x`` time of the last purchase and ``T`` age, both measured
  from the first purchase day, and ``m`` the mean value of the repeat purchase days), then to
  the histogram of ``(x, t_x, T)`` and of ``(x, m)`` with counts. Days are integers, so the
  histogram is exact; on long histories it stays small (bounded by days², not customers).
- The driver collects the histogram and maximises the count-weighted log-likelihood with
  ``scipy.optimize`` (Fader, Hardie & Lee 2005 for BG/NBD; Fader & Hardie 2013 for Gamma-Gamma).
- Scoring runs on the executors: ``p_alive`` and the expected spend as Spark SQL expressions;
  the expected number of purchases in a horizon, whose Gaussian hypergeometric 2F1 is a
  truncated series summed in log space, and the discounted CLV (twelve such expectations a
  row) in pandas UDFs, as vectorised numpy over each Arrow batch.

Time unit: ``time_unit_days`` days (7 = weeks, as in the CDNOW paper). ``T`` runs from the first
purchase day to the last observed day (the day before the as-of date), so ``t_x <= T``.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from typing import Mapping

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from scipy import optimize
from scipy.special import gammaln

log = logging.getLogger(__name__)

DAYS_PER_MONTH = 365.25 / 12


# -- sufficient statistics in Spark ------------------------------------------------------
def purchase_days(lines: DataFrame, *, as_of: dt.date, start: dt.date | None = None,
                  customer_col: str = "customer_key", ts_col: str = "ts", amount_col: str = "amount",
                  is_return_col: str | None = "is_return") -> DataFrame:
    """One row per customer and purchase day before ``as_of`` (from ``start``): ``day_value``.

    A purchase day has at least one non-return line; ``day_value`` sums those lines (gross of
    returns: the spend models describe purchases, returns are netted in ``clv_historic``).
    """
    if not isinstance(as_of, dt.date):
        raise TypeError("as_of must be a datetime.date")
    end = F.lit(dt.datetime.combine(as_of, dt.time()))
    rows = lines.filter(F.col(customer_col).isNotNull() & (F.col(ts_col) < end))
    if start is not None:
        rows = rows.filter(F.col(ts_col) >= F.lit(dt.datetime.combine(start, dt.time())))
    if is_return_col:
        rows = rows.filter(~F.coalesce(F.col(is_return_col), F.lit(False)))
    return (rows.groupBy(F.col(customer_col).alias("customer_key"), F.to_date(ts_col).alias("day"))
            .agg(F.sum(amount_col).cast("double").alias("day_value")))


def customer_summary(days: DataFrame, *, as_of: dt.date, time_unit_days: float = 7.0) -> DataFrame:
    """Per customer: ``x`` (repeat purchase days), ``t_x``, ``T`` (in time units) and ``m``
    (mean value of the repeat purchase days; null when ``x`` = 0), plus day indexes.

    Examples
    --------
    >>> customer_summary(purchase_days(lines, as_of=dt.date(1997, 10, 1)), as_of=dt.date(1997, 10, 1))
    """
    if time_unit_days <= 0:
        raise ValueError(f"time_unit_days must be positive, got {time_unit_days}")
    last_day = F.date_sub(F.lit(as_of), 1)
    first = days.groupBy("customer_key").agg(
        F.min("day").alias("first_day"), F.max("day").alias("last_day"),
        F.count(F.lit(1)).alias("purchase_days"), F.sum("day_value").alias("total_value"),
        F.min_by("day_value", "day").alias("first_value"))
    x = F.col("purchase_days") - 1
    return first.select(
        "customer_key", "first_day", "last_day", "purchase_days",
        x.cast("long").alias("x"),
        F.datediff("last_day", "first_day").alias("t_x_days"),
        F.datediff(last_day, "first_day").alias("T_days"),
        (F.datediff("last_day", "first_day") / F.lit(float(time_unit_days))).alias("t_x"),
        (F.datediff(last_day, "first_day") / F.lit(float(time_unit_days))).alias("T"),
        F.when(x > 0, (F.col("total_value") - F.col("first_value")) / x).alias("m"),
    )


def bgnbd_histogram(summary: DataFrame) -> DataFrame:
    """The exact histogram of ``(x, t_x_days, T_days)`` with customer counts ``n``."""
    return summary.groupBy("x", "t_x_days", "T_days").agg(F.count(F.lit(1)).alias("n"))


def gamma_gamma_histogram(summary: DataFrame, *, decimals: int = 2) -> DataFrame:
    """The histogram of ``(x, m)`` for customers with repeat purchases and ``m > 0``;
    ``m`` rounded to ``decimals`` (cents by default) so equal spenders share a row."""
    return (summary.filter((F.col("x") > 0) & (F.col("m") > 0))
            .groupBy("x", F.round("m", decimals).alias("m")).agg(F.count(F.lit(1)).alias("n")))


def collect_histogram(histogram: DataFrame, *, max_rows: int, columns: tuple[str, ...]) -> dict:
    """Collect a histogram to the driver as numpy arrays, refusing one larger than ``max_rows``."""
    rows = histogram.limit(max_rows + 1).toPandas()
    if len(rows) > max_rows:
        raise ValueError(f"the CLV histogram has more than {max_rows} rows (value.clv.max_histogram_rows); "
                         "raise the limit or coarsen value.clv.time_unit_days")
    return {c: rows[c].to_numpy(dtype=float) for c in columns}


# -- maximum likelihood on the driver ------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BgNbdParams:
    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float
    customers: int


@dataclasses.dataclass(frozen=True)
class GammaGammaParams:
    p: float
    q: float
    gamma: float
    log_likelihood: float
    customers: int


def bgnbd_log_likelihood(params, x, t_x, T, n) -> float:
    """Count-weighted BG/NBD log-likelihood (Fader, Hardie & Lee 2005, eq. 6)."""
    r, alpha, a, b = params
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(x > 0, np.log(a) - np.log(np.maximum(b + x - 1, 1e-300)) - (r + x) * np.log(alpha + t_x),
                      -np.inf)
    return float(np.sum(n * (a1 + a2 + np.logaddexp(a3, a4))))


def gamma_gamma_log_likelihood(params, x, m, n) -> float:
    """Count-weighted Gamma-Gamma log-likelihood of mean spends ``m`` over ``x`` transactions."""
    p, q, gamma = params
    px = p * x
    ll = (gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(gamma) + (px - 1) * np.log(m)
          + px * np.log(x) - (px + q) * np.log(x * m + gamma))
    return float(np.sum(n * ll))


def _maximise(loglik, start, data) -> tuple[np.ndarray, float]:
    """Maximise over log-parameters: Nelder-Mead to get close, then BFGS to polish."""
    def objective(log_params):
        value = loglik(np.exp(log_params), *data)
        return -value if np.isfinite(value) else 1e300
    first = optimize.minimize(objective, np.log(start), method="Nelder-Mead",
                              options={"maxiter": 20000, "xatol": 1e-10, "fatol": 1e-10})
    polished = optimize.minimize(objective, first.x, method="BFGS", options={"gtol": 1e-8})
    best = polished if polished.fun <= first.fun else first
    return np.exp(best.x), -float(best.fun)


def fit_bgnbd(histogram: Mapping[str, np.ndarray], *, time_unit_days: float = 7.0) -> BgNbdParams:
    """Fit BG/NBD to a collected ``(x, t_x_days, T_days, n)`` histogram.

    Examples
    --------
    >>> h = collect_histogram(bgnbd_histogram(summary), max_rows=100_000, columns=("x", "t_x_days", "T_days", "n"))
    >>> fit_bgnbd(h).r
    """
    x, n = histogram["x"], histogram["n"]
    if len(x) == 0 or n.sum() == 0:
        raise ValueError("cannot fit BG/NBD: no customers with a purchase")
    if not np.any(x > 0):
        raise ValueError("cannot fit BG/NBD: no customer has a repeat purchase")
    data = (x, histogram["t_x_days"] / time_unit_days, histogram["T_days"] / time_unit_days, n)
    (r, alpha, a, b), ll = _maximise(bgnbd_log_likelihood, [1.0, 1.0, 1.0, 1.0], data)
    return BgNbdParams(r=float(r), alpha=float(alpha), a=float(a), b=float(b), log_likelihood=ll, customers=int(n.sum()))


def fit_gamma_gamma(histogram: Mapping[str, np.ndarray]) -> GammaGammaParams:
    """Fit Gamma-Gamma to a collected ``(x, m, n)`` histogram (repeat customers, ``m > 0``)."""
    x, m, n = histogram["x"], histogram["m"], histogram["n"]
    if len(x) == 0:
        raise ValueError("cannot fit Gamma-Gamma: no customer with a repeat purchase of positive value")
    (p, q, gamma), ll = _maximise(gamma_gamma_log_likelihood, [1.0, 1.0, 1.0], (x, m, n))
    return GammaGammaParams(p=float(p), q=float(q), gamma=float(gamma), log_likelihood=ll, customers=int(n.sum()))


# -- scoring on the executors -------------------------------------------------------------
def _lit(value: float) -> Column:
    return F.lit(float(value))


def p_alive_col(params: BgNbdParams, *, x: str = "x", t_x: str = "t_x", T: str = "T") -> Column:
    """P(alive | x, t_x, T) as a Spark expression (1 for customers without repeat purchases)."""
    r, alpha, a, b = (_lit(v) for v in (params.r, params.alpha, params.a, params.b))
    xc = F.col(x).cast("double")
    odds = (a / (b + xc - 1)) * F.exp((r + xc) * (F.log(alpha + F.col(T)) - F.log(alpha + F.col(t_x))))
    return F.when(xc > 0, 1.0 / (1.0 + odds)).otherwise(F.lit(1.0))


def scaled_hyp2f1(A: np.ndarray, B: np.ndarray, C: np.ndarray, z: np.ndarray, *, max_terms: int) -> np.ndarray:
    """``(1 - z)^A · 2F1(A, B; C; z)`` for ``0 <= z < 1`` as a truncated series (numpy arrays).

    Terms are accumulated in log space (no overflow however large ``A``), starting from
    ``(1-z)^A``; each row sums as many terms as its series needs to pass its peak, near
    ``k ≈ A·z/(1-z)``, and decay geometrically (ratio → z) below 1e-15 of the sum, capped at
    ``max_terms``. Rows are sorted by their term count so that each step of the loop works
    on the rows that still need it (a contiguous tail), not on the whole batch.

    Examples
    --------
    >>> scaled_hyp2f1(np.array([5.2]), np.array([7.4]), np.array([7.2]), np.array([0.3]), max_terms=3000)
    array([1.05518737])
    """
    A, B, C, z = (np.asarray(v, dtype=float) for v in (A, B, C, z))
    with np.errstate(all="ignore"):  # invalid rows (NaN inputs, logs of non-positives) give NaN
        log_z = np.log(np.maximum(z, 1e-300))
        needed = A * z / (1 - z) + 6 * np.sqrt(A * z) / (1 - z) + 36.0 / (-log_z + 1e-12) + 10
        terms = np.where(np.isfinite(needed), np.minimum(max_terms, np.ceil(needed)), max_terms)
        steps = np.maximum(terms, 1).astype(np.int64)  # the first step always runs
        order = np.argsort(steps, kind="stable")
        a_, b_, c_, lz, n = A[order], B[order], C[order], log_z[order], steps[order]
        lt = a_ * np.log1p(-z[order])
        total = np.exp(lt)
        for k in range(int(n[-1]) if len(n) else 0):
            tail = slice(int(np.searchsorted(n, k, side="right")), None)  # rows with more than k steps
            lt[tail] += np.log(a_[tail] + k) + np.log(b_[tail] + k) - np.log(c_[tail] + k) - math.log(k + 1) + lz[tail]
            total[tail] += np.exp(lt[tail])
        out = np.empty_like(total)
        out[order] = total
    return np.where(z <= 0, 1.0, out)


def expected_purchases(params: BgNbdParams, horizon: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray,
                       *, max_terms: int = 3000) -> np.ndarray:
    """E[purchases in the next ``horizon`` time units | x, t_x, T] (Fader et al. 2005, eq. 10)."""
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    if horizon <= 0:
        return np.zeros_like(x)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    z = horizon / (alpha + T + horizon)
    s = scaled_hyp2f1(r + x, b + x, a + b + x - 1, z, max_terms=max_terms)
    with np.errstate(all="ignore"):  # the odds of x = 0 rows are not used
        odds = np.where(x > 0, (a / (b + x - 1)) * np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + t_x))), 0.0)
    return ((a + b + x - 1) / (a - 1)) * (1 - s) / (1 + odds)


def discounted_purchases(params: BgNbdParams, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, *,
                         horizon_months: int, discount_rate_monthly: float, time_unit_days: float,
                         max_terms: int = 3000) -> np.ndarray:
    """Σ_k ΔE[purchases in month k] / (1+d)^k over ``horizon_months`` (numpy arrays)."""
    months_unit = DAYS_PER_MONTH / time_unit_days
    total, previous = np.zeros(np.shape(x)), np.zeros(np.shape(x))
    for k in range(1, int(horizon_months) + 1):
        current = expected_purchases(params, k * months_unit, x, t_x, T, max_terms=max_terms)
        total += (current - previous) / (1.0 + discount_rate_monthly) ** k
        previous = current
    return total


def _double(name: str) -> Column:
    return F.col(name).cast("double")


def expected_purchases_col(params: BgNbdParams, horizon: float, *, x: str = "x", t_x: str = "t_x",
                           T: str = "T", max_terms: int = 3000) -> Column:
    """:func:`expected_purchases` as a Spark column: a pandas UDF over ``x``, ``t_x``, ``T``
    (the series is vectorised numpy; as a Spark SQL ``aggregate`` it cost ~0.2 ms per row)."""
    if horizon <= 0:
        return F.lit(0.0)

    def predict(xs: pd.Series, t_xs: pd.Series, Ts: pd.Series) -> pd.Series:
        return pd.Series(expected_purchases(params, horizon, xs.to_numpy(float), t_xs.to_numpy(float),
                                            Ts.to_numpy(float), max_terms=max_terms))

    return pandas_udf(predict, "double")(_double(x), _double(t_x), _double(T))


def expected_spend_col(params: GammaGammaParams, *, x: str = "x", m: str = "m") -> Column:
    """E[spend per purchase | x, m] (Gamma-Gamma); the population mean for ``x`` = 0."""
    p, q, g = _lit(params.p), _lit(params.q), _lit(params.gamma)
    xc = F.col(x).cast("double")
    population = p * g / (q - 1)
    return F.when((xc > 0) & (F.col(m) > 0), p * (g + xc * F.col(m)) / (p * xc + q - 1)).otherwise(population)


def clv_predicted_col(bg: BgNbdParams, gg: GammaGammaParams, *, horizon_months: int,
                      discount_rate_monthly: float, time_unit_days: float, margin: float = 1.0,
                      x: str = "x", t_x: str = "t_x", T: str = "T", m: str = "m",
                      max_terms: int = 3000) -> Column:
    """Discounted CLV over ``horizon_months``: Σ_k ΔE[purchases in month k] · E[spend] · margin / (1+d)^k.

    The twelve (by default) purchase expectations of a row are computed together in one
    pandas UDF (:func:`discounted_purchases`); the spend is a Spark SQL expression.
    """
    def discounted(xs: pd.Series, t_xs: pd.Series, Ts: pd.Series) -> pd.Series:
        return pd.Series(discounted_purchases(
            bg, xs.to_numpy(float), t_xs.to_numpy(float), Ts.to_numpy(float), horizon_months=horizon_months,
            discount_rate_monthly=discount_rate_monthly, time_unit_days=time_unit_days, max_terms=max_terms))

    purchases = pandas_udf(discounted, "double")(_double(x), _double(t_x), _double(T))
    return purchases * expected_spend_col(gg, x=x, m=m) * F.lit(float(margin))


# -- calibration / holdout ---------------------------------------------------------------
def holdout_comparison(calibration: DataFrame, holdout_days: DataFrame, params: BgNbdParams, *,
                       holdout_length: float, bucket_cap: int = 7, max_terms: int = 3000) -> DataFrame:
    """Per customer of the calibration period: predicted vs actual purchase days in the holdout.

    ``calibration`` is a :func:`customer_summary`; ``holdout_days`` the :func:`purchase_days`
    of the holdout period. Returns ``customer_key``, ``x``, ``bucket`` (x capped at
    ``bucket_cap``, so the last bucket is "cap+"), ``predicted`` and ``actual``.
    """
    actual = holdout_days.groupBy("customer_key").agg(F.count(F.lit(1)).alias("actual"))
    return (calibration.join(actual, "customer_key", "left")
            .select("customer_key", "x", F.least(F.col("x"), F.lit(int(bucket_cap))).alias("bucket"),
                    expected_purchases_col(params, holdout_length, max_terms=max_terms).alias("predicted"),
                    F.coalesce(F.col("actual"), F.lit(0)).cast("double").alias("actual")))


def holdout_summary(comparison: DataFrame) -> tuple[float, "object"]:
    """MAE per customer and the per-bucket means, from one Spark aggregation (small result)."""
    buckets = (comparison.groupBy("bucket").agg(F.count(F.lit(1)).alias("customers"),
                                                F.avg("predicted").alias("predicted"),
                                                F.avg("actual").alias("actual"),
                                                F.sum(F.abs(F.col("predicted") - F.col("actual"))).alias("abs_error"))
               .orderBy("bucket").toPandas())
    customers = float(buckets["customers"].sum())
    mae = float(buckets["abs_error"].sum()) / customers if customers else math.nan
    return mae, buckets.drop(columns=["abs_error"])


def holdout_figure(buckets, *, bucket_cap: int):
    """Bar chart of mean predicted vs actual holdout purchases per calibration frequency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{int(b)}+" if int(b) == bucket_cap else str(int(b)) for b in buckets["bucket"]]
    pos = np.arange(len(labels))
    ax.bar(pos - 0.2, buckets["actual"], width=0.4, label="actual")
    ax.bar(pos + 0.2, buckets["predicted"], width=0.4, label="BG/NBD predicted")
    ax.set_xticks(pos, labels)
    ax.set_xlabel("repeat purchase days in the calibration period")
    ax.set_ylabel("mean purchase days in the holdout")
    ax.set_title("CLV calibration: holdout purchases per frequency")
    ax.legend()
    fig.tight_layout()
    return fig
