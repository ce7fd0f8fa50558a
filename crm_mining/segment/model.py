"""Segment models: the feature pipeline, the clustering fits, the k sweep and the choice of k.

The feature pipeline is one ``pyspark.ml`` Pipeline of built-in stages: a ``SQLTransformer``
that caps each feature at quantiles computed with ``approxQuantile`` and applies a signed
``log1p`` (customer spend, counts and balances are heavily skewed, so distances in raw units
would be decided by a handful of wholesalers), an ``Imputer`` (median), optionally a
``QuantileDiscretizer`` (rank transform), a ``VectorAssembler`` and a ``StandardScaler``
(mean and unit variance, so every feature weighs the same). The clustering stage is fitted on
the prepared, cached vectors, several seeds per k, keeping the lowest cost.
"""
from __future__ import annotations

import dataclasses
import logging
from multiprocessing.pool import ThreadPool
from typing import Sequence

import numpy as np
from pyspark import inheritable_thread_target
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.clustering import BisectingKMeans, GaussianMixture, KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import Imputer, QuantileDiscretizer, SQLTransformer, StandardScaler, VectorAssembler
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

log = logging.getLogger(__name__)

ALGORITHMS = ("kmeans", "bisecting", "gmm")
TRANSFORMS = ("log1p", "quantile", "none")
SELECTIONS = ("silhouette", "elbow")
FEATURES_COL = "segment_features"
CLUSTER_COL = "cluster_index"


def _t(name: str) -> str:
    return f"_seg_t_{name}"


def _i(name: str) -> str:
    return f"_seg_i_{name}"


def _q(name: str) -> str:
    return f"_seg_q_{name}"


def _check_features(df: DataFrame, feature_cols: Sequence[str]) -> list[str]:
    if isinstance(feature_cols, str) or not feature_cols:
        raise ValueError("feature_cols must be a non-empty list of column names")
    missing = [c for c in feature_cols if c not in df.columns]
    if missing:
        raise ValueError(f"feature columns {missing} are not in the data (columns: {df.columns})")
    return list(feature_cols)


def feature_caps(df: DataFrame, *, feature_cols: Sequence[str], quantiles: Sequence[float] = (0.01, 0.99),
                 relative_error: float = 0.001) -> dict[str, tuple[float, float]]:
    """Lower and upper outlier caps of each feature, from one ``approxQuantile`` pass.

    Examples
    --------
    >>> feature_caps(df, feature_cols=["net_spend"], quantiles=(0.01, 0.99))  # doctest: +SKIP
    {'net_spend': (3.2, 8120.5)}
    """
    cols = _check_features(df, feature_cols)
    lo, hi = (float(q) for q in quantiles)
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"cap quantiles must satisfy 0 <= low < high <= 1, got {quantiles}")
    cast = df.select(*[F.col(c).cast("double").alias(c) for c in cols])
    found = cast.approxQuantile(cols, [lo, hi], relative_error)
    return {c: (q[0], q[1]) for c, q in zip(cols, found) if len(q) == 2}


def _literal(value: float) -> str:
    return f"CAST('{float(value)!r}' AS DOUBLE)"


def transform_statement(*, feature_cols: Sequence[str], caps: dict[str, tuple[float, float]],
                        transform: str = "log1p") -> str:
    """The ``SQLTransformer`` statement that caps outliers and applies the signed log1p.

    Nulls stay null (``CASE`` rather than ``LEAST``/``GREATEST``, which skip nulls) so the
    ``Imputer`` that follows sees them. The signed form ``sign(x)·ln(1+|x|)`` keeps negative
    balances meaningful.
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    exprs = []
    for c in feature_cols:
        x = f"CAST(`{c}` AS DOUBLE)"
        if c in caps:
            lo, hi = (_literal(v) for v in caps[c])
            x = f"(CASE WHEN {x} < {lo} THEN {lo} WHEN {x} > {hi} THEN {hi} ELSE {x} END)"
        if transform == "log1p":
            x = f"SIGN({x}) * LN(1 + ABS({x}))"
        exprs.append(f"{x} AS `{_t(c)}`")
    return f"SELECT *, {', '.join(exprs)} FROM __THIS__"


def feature_pipeline(df: DataFrame, *, feature_cols: Sequence[str], transform: str = "log1p",
                     cap_quantiles: Sequence[float] | None = (0.01, 0.99), quantile_buckets: int = 100,
                     features_col: str = FEATURES_COL) -> Pipeline:
    """The (unfitted) feature Pipeline: caps + transform, impute, assemble, standardise.

    The caps are computed here from ``df`` (one ``approxQuantile`` pass) and written into the
    ``SQLTransformer`` statement, so the fitted pipeline applies the same caps to new customers.

    Examples
    --------
    >>> prep = feature_pipeline(df, feature_cols=["net_spend", "invoices"]).fit(df)  # doctest: +SKIP
    >>> prep.transform(df).select("segment_features")                                # doctest: +SKIP
    """
    cols = _check_features(df, feature_cols)
    caps = feature_caps(df, feature_cols=cols, quantiles=cap_quantiles) if cap_quantiles else {}
    stages = [
        SQLTransformer(statement=transform_statement(feature_cols=cols, caps=caps, transform=transform)),
        Imputer(strategy="median", inputCols=[_t(c) for c in cols], outputCols=[_i(c) for c in cols]),
    ]
    assembled = [_i(c) for c in cols]
    if transform == "quantile":
        stages.append(QuantileDiscretizer(numBuckets=quantile_buckets, inputCols=assembled,
                                          outputCols=[_q(c) for c in cols], handleInvalid="keep"))
        assembled = [_q(c) for c in cols]
    stages += [
        VectorAssembler(inputCols=assembled, outputCol="_seg_vector", handleInvalid="keep"),
        StandardScaler(inputCol="_seg_vector", outputCol=features_col, withMean=True, withStd=True),
    ]
    return Pipeline(stages=stages)


def clustering_estimator(algorithm: str, *, k: int, seed: int, max_iter: int = 40, init_steps: int = 5,
                         tol: float = 1e-4, features_col: str = FEATURES_COL,
                         prediction_col: str = CLUSTER_COL):
    """A K-Means (k-means|| initialisation), bisecting K-Means or Gaussian mixture estimator."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if int(k) < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    common = dict(k=int(k), seed=int(seed), maxIter=int(max_iter), featuresCol=features_col,
                  predictionCol=prediction_col)
    if algorithm == "kmeans":
        # The block solver stacks the vectors into matrices it caches itself. The row solver,
        # which "auto" picks for these dense vectors, caches nothing when its input is cached
        # and so decodes every vector from the DataFrame cache on each iteration: the same
        # centres, 3 times slower (6 fits on 108,000 customers in 5 partitions: 25 s, not 80).
        return KMeans(initMode="k-means||", initSteps=int(init_steps), tol=tol, solver="block", **common)
    if algorithm == "bisecting":
        return BisectingKMeans(**common)
    return GaussianMixture(tol=tol, probabilityCol=f"_seg_probability_{prediction_col}", **common)


def model_cost(model, algorithm: str) -> float:
    """Within-cluster sum of squares (K-Means, bisecting) or negative log-likelihood (GMM)."""
    if algorithm == "gmm":
        return -float(model.summary.logLikelihood)
    return float(model.summary.trainingCost)


def model_centers(model, algorithm: str) -> np.ndarray:
    """Cluster centres in the standardised space, one row per cluster index."""
    if algorithm == "gmm":
        return np.array([g.mean.toArray() for g in model.gaussians], dtype=float)
    return np.array([c for c in model.clusterCenters()], dtype=float)


def fit_best(data: DataFrame, *, algorithm: str, k: int, seeds: Sequence[int], **params):
    """Fit one model per seed and keep the lowest cost (ties: the earlier seed)."""
    best, best_cost, best_seed = None, None, None
    for seed in seeds:
        model = clustering_estimator(algorithm, k=k, seed=seed, **params).fit(data)
        cost = model_cost(model, algorithm)
        if best_cost is None or cost < best_cost - 1e-9 * abs(best_cost):
            best, best_cost, best_seed = model, cost, seed
    return best, best_cost, best_seed


def silhouette(predictions: DataFrame, *, sizes: Sequence[int], sample_rows: int | None, seed: int,
               features_col: str = FEATURES_COL, prediction_col: str = CLUSTER_COL) -> float:
    """Silhouette (squared Euclidean) on a sample stratified by cluster when the data is large.

    Every cluster keeps at least ``sample_rows / (2k)`` rows (or all of its rows), so small
    clusters are not left out of the score; the rest is sampled uniformly.
    """
    total = int(sum(sizes))
    if sum(1 for n in sizes if n > 0) < 2:
        return float("nan")  # a degenerate fit (one non-empty cluster) has no silhouette
    data = predictions
    if sample_rows and total > sample_rows:
        base, floor = sample_rows / total, sample_rows / (2.0 * len(sizes))
        fractions = {i: min(1.0, max(base, floor / max(n, 1))) for i, n in enumerate(sizes)}
        data = predictions.sampleBy(prediction_col, fractions, seed=seed)
    evaluator = ClusteringEvaluator(featuresCol=features_col, predictionCol=prediction_col,
                                    metricName="silhouette", distanceMeasure="squaredEuclidean")
    return float(evaluator.evaluate(data))


@dataclasses.dataclass
class Candidate:
    """One k of the sweep: its best model over the seeds, cost and silhouette."""

    k: int
    cost: float
    silhouette: float
    seed: int
    sizes: list[int]
    model: object = dataclasses.field(repr=False, default=None)


def sweep_k(data: DataFrame, *, ks: Sequence[int], algorithm: str = "kmeans", seeds: Sequence[int] = (42,),
            sample_rows: int | None = 50000, features_col: str = FEATURES_COL, parallelism: int = 1,
            **params) -> list[Candidate]:
    """Fit each k (best of ``seeds``) and score it by cost and sampled silhouette.

    ``data`` holds the standardised vectors (cache it: every fit scans it). ``parallelism``
    k values are fitted at once, in threads of this driver; each fit is seeded, so the
    candidates are the same for any ``parallelism``. Returned in the order of ``ks``.
    """
    if not ks:
        raise ValueError("ks must hold at least one k")
    if parallelism < 1:
        raise ValueError(f"parallelism must be at least 1, got {parallelism}")

    def one(k: int) -> Candidate:
        model, cost, seed = fit_best(data, algorithm=algorithm, k=k, seeds=seeds,
                                     features_col=features_col, **params)
        sizes = [int(s) for s in model.summary.clusterSizes]
        score = silhouette(model.transform(data), sizes=sizes, sample_rows=sample_rows, seed=seeds[0],
                           features_col=features_col)
        log.info("segment sweep: %s k=%d cost=%.4g silhouette=%.4f sizes=%s", algorithm, k, cost, score, sizes)
        return Candidate(k=int(k), cost=cost, silhouette=score, seed=int(seed), sizes=sizes, model=model)

    if parallelism == 1 or len(ks) == 1:
        return [one(k) for k in ks]
    # inheritable_thread_target: the threads' Spark jobs keep the step's job description and tags
    with ThreadPool(min(parallelism, len(ks))) as pool:
        return pool.map(inheritable_thread_target(data.sparkSession)(one), ks)


def choose_k(candidates: Sequence[Candidate], *, rule: str = "silhouette") -> Candidate:
    """Pick the candidate k.

    ``silhouette``: the highest silhouette (ties: the smaller k). ``elbow``: the k farthest
    from the straight line joining the first and last points of the (k, cost) curve, both
    axes scaled to [0, 1] (the "knee"); with fewer than three candidates it falls back to the
    silhouette rule.

    Examples
    --------
    >>> choose_k([Candidate(2, 9.0, 0.4, 1, []), Candidate(3, 4.0, 0.6, 1, [])]).k
    3
    """
    if rule not in SELECTIONS:
        raise ValueError(f"selection rule must be one of {SELECTIONS}, got {rule!r}")
    if not candidates:
        raise ValueError("no candidates to choose from")
    ordered = sorted(candidates, key=lambda c: c.k)
    if rule == "elbow" and len(ordered) >= 3:
        ks = np.array([c.k for c in ordered], dtype=float)
        cost = np.array([c.cost for c in ordered], dtype=float)
        x = (ks - ks[0]) / (ks[-1] - ks[0])
        span = cost[0] - cost[-1]
        y = (cost[0] - cost) / span if span > 0 else np.zeros_like(cost)
        gap = y - x  # distance above the chord, up to a constant factor
        return ordered[int(np.argmax(gap))]
    scored = [c for c in ordered if np.isfinite(c.silhouette)] or ordered
    best = max(c.silhouette for c in scored)
    return next(c for c in scored if not c.silhouette < best - 1e-12)


def jaccard_best_match(crosstab: np.ndarray) -> np.ndarray:
    """Per row cluster: the Jaccard index with its best-matching column cluster.

    ``crosstab[i, j]`` counts customers in cluster i of one fit and cluster j of another.
    """
    counts = np.asarray(crosstab, dtype=float)
    rows, cols = counts.sum(axis=1, keepdims=True), counts.sum(axis=0, keepdims=True)
    union = rows + cols - counts
    with np.errstate(divide="ignore", invalid="ignore"):
        jac = np.where(union > 0, counts / union, 0.0)
    return jac.max(axis=1)


def reseed_stability(data: DataFrame, model, *, algorithm: str, k: int, seeds: Sequence[int | Sequence[int]],
                     features_col: str = FEATURES_COL, **params) -> np.ndarray:
    """Mean best-match Jaccard of each cluster of ``model`` against refits with other seeds.

    Each entry of ``seeds`` is one refit: a seed, or a group of seeds whose lowest-cost fit is
    the refit. Refit the way ``model`` was fitted (the best of as many starts): single starts
    land in local optima now and then, and the score would then measure the starts rather
    than the segments. Only the k×k contingency table of each refit reaches the driver.
    """
    base = model.transform(data)
    scores = []
    for group in seeds:
        group = [group] if isinstance(group, int) else list(group)
        other, _, _ = fit_best(data, algorithm=algorithm, k=k, seeds=group, features_col=features_col,
                               prediction_col="_seg_reseed", **params)
        table = np.zeros((k, k))
        for row in other.transform(base).groupBy(CLUSTER_COL, "_seg_reseed").count().collect():
            table[int(row[CLUSTER_COL]), int(row["_seg_reseed"])] = row["count"]
        scores.append(jaccard_best_match(table))
    return np.mean(scores, axis=0) if scores else np.full(k, np.nan)


def full_model(prep: PipelineModel, cluster_model, *extra) -> PipelineModel:
    """One PipelineModel: the fitted feature stages, the clustering model and any extra stages."""
    return PipelineModel(stages=[*prep.stages, cluster_model, *extra])
