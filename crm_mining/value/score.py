"""Composite customer score: normalised indicators weighted by an AHP pairwise matrix.

The weights are the principal eigenvector of Saaty's pairwise comparison matrix
(``value.score.pairwise``, row i column j = how much more indicator i matters than j). The
matrix must be positive and reciprocal, and its consistency ratio CR = CI / RI, with
CI = (λmax − n) / (n − 1) and Saaty's random index RI, must not exceed 0.1. Indicators are
min-max normalised to [0, 1] with the minimum and maximum computed by Spark (two numbers
each); ``customer_score`` = 100 · Σ wᵢ · normᵢ (missing indicators count as 0).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

#: Saaty's random consistency index by matrix size.
RANDOM_INDEX = {1: 0.0, 2: 0.0, 3: 0.58, 4: 0.90, 5: 1.12, 6: 1.24, 7: 1.32, 8: 1.41, 9: 1.45, 10: 1.49}


def ahp_weights(pairwise: Sequence[Sequence[float]], *, max_cr: float = 0.1) -> tuple[np.ndarray, float]:
    """Weights (summing to 1) and consistency ratio of an AHP pairwise comparison matrix.

    Raises
    ------
    ValueError
        if the matrix is not square, positive and reciprocal, or its CR exceeds ``max_cr``.

    Examples
    --------
    >>> w, cr = ahp_weights([[1, 3], [1/3, 1]])
    >>> w.round(2).tolist(), cr
    ([0.75, 0.25], 0.0)
    """
    m = np.asarray(pairwise, dtype=float)
    n = m.shape[0] if m.ndim == 2 else 0
    if m.ndim != 2 or m.shape != (n, n) or n == 0:
        raise ValueError(f"the AHP pairwise matrix must be square, got shape {m.shape}")
    if n > max(RANDOM_INDEX):
        raise ValueError(f"the AHP pairwise matrix is {n}x{n}; at most {max(RANDOM_INDEX)} indicators")
    if np.any(m <= 0) or not np.allclose(m * m.T, 1.0, rtol=1e-2):
        raise ValueError("the AHP pairwise matrix must be positive and reciprocal (a_ji = 1 / a_ij)")
    values, vectors = np.linalg.eig(m)
    k = int(np.argmax(values.real))
    weights = np.abs(vectors[:, k].real)
    weights = weights / weights.sum()
    lam = float(values[k].real)
    ci = (lam - n) / (n - 1) if n > 2 else 0.0
    cr = ci / RANDOM_INDEX[n] if RANDOM_INDEX[n] > 0 else 0.0
    if cr > max_cr:
        raise ValueError(f"the AHP pairwise matrix is inconsistent: consistency ratio CR = {cr:.3f} > {max_cr}")
    return weights, cr


def customer_score(df: DataFrame, *, indicators: Sequence[str], weights: Sequence[float]) -> DataFrame:
    """Add ``customer_score`` (0–100) from min-max normalised ``indicators``."""
    if len(indicators) != len(weights):
        raise ValueError(f"{len(indicators)} indicators but {len(weights)} weights")
    missing = [c for c in indicators if c not in df.columns]
    if missing:
        raise ValueError(f"score indicators {missing} are not columns; have {df.columns}")
    bounds = df.agg(*[F.min(c).cast("double").alias(f"lo{i}") for i, c in enumerate(indicators)],
                    *[F.max(c).cast("double").alias(f"hi{i}") for i, c in enumerate(indicators)]).first()
    total: Column = F.lit(0.0)
    for i, (c, w) in enumerate(zip(indicators, weights)):
        lo, hi = bounds[f"lo{i}"], bounds[f"hi{i}"]
        if lo is None or hi is None or hi <= lo:
            continue
        norm = (F.col(c).cast("double") - F.lit(lo)) / F.lit(hi - lo)
        total = total + F.lit(float(w)) * F.coalesce(norm, F.lit(0.0))
    return df.withColumn("customer_score", F.lit(100.0) * total)
