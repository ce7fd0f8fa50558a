"""Segment stability across runs: id alignment by centroid matching, and the migration matrix.

A monthly rerun refits the clusters, whose indexes come out in arbitrary order. To keep a
segment's id from run to run, the new centroids are matched to the previous run's centroids
(both expressed in this run's standardised space) with the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment`` on Euclidean distances): matched clusters inherit
the previous id, extra clusters get fresh ids above the previous maximum.
"""
from __future__ import annotations

import datetime as dt
from typing import Sequence

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from scipy.optimize import linear_sum_assignment


def initial_order(centers: np.ndarray, sizes: Sequence[int]) -> list[int]:
    """Cluster indexes by decreasing size, ties by centroid coordinates (stable, seed-free)."""
    centers = np.asarray(centers, dtype=float)
    keys = [(-int(sizes[i]), tuple(np.round(centers[i], 9))) for i in range(len(centers))]
    return sorted(range(len(centers)), key=lambda i: keys[i])


def align_segments(centers: np.ndarray, sizes: Sequence[int], *, previous_centers: np.ndarray | None = None,
                   previous_ids: Sequence[int] = ()) -> dict[int, int]:
    """Segment id of each cluster index.

    Without a previous run, ids are 0..k-1 in :func:`initial_order`. With one, the clusters
    matched by the Hungarian algorithm take the previous ids and the unmatched ones get
    ``max(previous_ids) + 1, + 2...`` in initial order.

    Examples
    --------
    >>> align_segments(np.array([[5.0], [0.0]]), [10, 10], previous_centers=np.array([[0.1], [4.9]]),
    ...                previous_ids=[7, 3])
    {0: 3, 1: 7}
    """
    centers = np.asarray(centers, dtype=float)
    order = initial_order(centers, sizes)
    if previous_centers is None or len(previous_centers) == 0:
        return {cluster: rank for rank, cluster in enumerate(order)}
    previous_centers = np.asarray(previous_centers, dtype=float)
    if previous_centers.shape[1] != centers.shape[1] or len(previous_ids) != len(previous_centers):
        raise ValueError("previous centroids must have the current feature dimension and one id each")
    cost = np.linalg.norm(centers[:, None, :] - previous_centers[None, :, :], axis=2)
    rows, cols = linear_sum_assignment(cost)
    ids = {int(r): int(previous_ids[c]) for r, c in zip(rows, cols)}
    fresh = max(int(i) for i in previous_ids) + 1
    for cluster in order:
        if cluster not in ids:
            ids[cluster] = fresh
            fresh += 1
    return dict(sorted(ids.items()))


def to_current_space(previous_transformed: np.ndarray, *, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Previous centroids (transformed, unscaled units) in this run's standardised space."""
    std = np.asarray(std, dtype=float)
    safe = np.where(std > 0, std, 1.0)
    scaled = (np.asarray(previous_transformed, dtype=float) - np.asarray(mean, dtype=float)) / safe
    return np.where(std > 0, scaled, 0.0)  # Spark's StandardScaler maps zero-variance features to 0


def segment_migration(previous: DataFrame, current: DataFrame, *, from_as_of: dt.date, to_as_of: dt.date,
                      key_col: str = "customer_key", segment_col: str = "segment_id",
                      domain_col: str = "domain") -> DataFrame:
    """Customers moving between segments from one as-of date to the next.

    A full outer join on (customer, domain): ``from_segment`` is null for customers new at
    ``to_as_of``, ``to_segment`` null for customers no longer segmented.

    Returns
    -------
    DataFrame with ``domain``, ``from_segment``, ``to_segment``, ``customers``, ``from_as_of``,
    ``to_as_of``.
    """
    for name, df in (("previous", previous), ("current", current)):
        missing = [c for c in (key_col, segment_col, domain_col) if c not in df.columns]
        if missing:
            raise ValueError(f"segment_migration: {name} assignments lack columns {missing}")
    before = previous.select(key_col, domain_col, F.col(segment_col).alias("from_segment"))
    after = current.select(key_col, domain_col, F.col(segment_col).alias("to_segment"))
    return (
        before.join(after, [key_col, domain_col], "full_outer")
        .groupBy(domain_col, "from_segment", "to_segment")
        .agg(F.count(F.lit(1)).alias("customers"))
        .withColumn("from_as_of", F.lit(from_as_of).cast("date"))
        .withColumn("to_as_of", F.lit(to_as_of).cast("date"))
    )
