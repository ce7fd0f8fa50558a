"""The ``segment`` step: cluster customers per domain, profile and name the segments, keep ids.

Reads ``gold_customer_360`` (and ``gold_customer_value`` when present) at the run's as-of date
and writes, for that date:

- ``gold_segment_assignments``: ``customer_key``, ``segment_id``, ``segment_name``,
  ``distance_to_centroid``, ``domain``;
- ``gold_segment_profiles``: one row per (domain, segment) with size, shares, feature means,
  medians and z-scores, name, stability score, k and algorithm;
- ``gold_segment_centroids``: the centroids (standardised and transformed units) the next run
  aligns its segment ids to;
- ``gold_segment_migration``: customers moving between segments since the previous as-of date.

Every k of the sweep, the chosen k, a sweep plot, the profiles and the fitted PipelineModel
(features in, ``segment_id`` / ``segment_name`` out) go to the step's MLflow run.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
from typing import Any, Mapping, Sequence

import numpy as np
from pyspark.ml.feature import SQLTransformer
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..pipeline import StepContext, StepResult
from ..session import laid_out_by
from . import model as M
from .profiles import distance_to_centroid, mapping_statement, segment_name, segment_profiles, unique_names
from .stability import align_segments, segment_migration, to_current_space

log = logging.getLogger(__name__)

C360, VALUE = "gold_customer_360", "gold_customer_value"
ASSIGNMENTS, PROFILES = "gold_segment_assignments", "gold_segment_profiles"
CENTROIDS, MIGRATION = "gold_segment_centroids", "gold_segment_migration"

#: Customers per partition of the vectors the sweep fits on. Every K-Means iteration is a Spark
#: job over every partition, so on a small domain the tasks' own overhead, not the maths, sets
#: the time: on 10M generated lines (108,424 customers in three domains) the step took 925 s
#: with 32 partitions per domain and 355 s with 4, 1 and 1.
CUSTOMERS_PER_PARTITION = 25_000

CENTROID_SCHEMA = T.StructType([
    T.StructField("domain", T.StringType(), False),
    T.StructField("segment_id", T.IntegerType(), False),
    T.StructField("segment_name", T.StringType(), False),
    T.StructField("cluster_index", T.IntegerType(), False),
    T.StructField("size", T.LongType(), False),
    T.StructField("feature_names", T.ArrayType(T.StringType()), False),
    T.StructField("centroid", T.ArrayType(T.DoubleType()), False),
    T.StructField("centroid_transformed", T.ArrayType(T.DoubleType()), False),
    T.StructField("stability_jaccard", T.DoubleType(), True),
    T.StructField("algorithm", T.StringType(), False),
    T.StructField("k", T.IntegerType(), False),
])


@dataclasses.dataclass(frozen=True)
class SegmentSettings:
    """The ``segment:`` section, checked."""

    domains: tuple[str, ...] = ("retail", "banking", "linked")
    features: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    value_col: Mapping[str, str | None] = dataclasses.field(default_factory=dict)
    transform: str = "log1p"
    cap_quantiles: tuple[float, float] | None = (0.01, 0.99)
    quantile_buckets: int = 100
    algorithm: str = "kmeans"
    k: int | None = None
    k_min: int = 3
    k_max: int = 8
    selection: str = "silhouette"
    seeds: int = 3
    init_steps: int = 5
    max_iter: int = 40
    tol: float = 1e-4
    parallelism: int = 2
    silhouette_sample: int | None = 50000
    stability_reseeds: int = 2
    min_customers: int = 50
    log_model: bool = True
    naming: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> "SegmentSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in section.items() if k in known}
        for key in ("domains",):
            if key in values:
                values[key] = tuple(values[key])
        if values.get("cap_quantiles") is not None:
            values["cap_quantiles"] = tuple(values["cap_quantiles"])
        out = cls(**values)
        out.check()
        return out

    def check(self) -> None:
        if self.algorithm not in M.ALGORITHMS:
            raise ValueError(f"segment.algorithm must be one of {M.ALGORITHMS}, got {self.algorithm!r}")
        if self.transform not in M.TRANSFORMS:
            raise ValueError(f"segment.transform must be one of {M.TRANSFORMS}, got {self.transform!r}")
        if self.selection not in M.SELECTIONS:
            raise ValueError(f"segment.selection must be one of {M.SELECTIONS}, got {self.selection!r}")
        if self.k is None and not 2 <= self.k_min <= self.k_max:
            raise ValueError(f"segment.k_min/k_max must satisfy 2 <= k_min <= k_max, got {self.k_min}, {self.k_max}")
        if self.k is not None and self.k < 2:
            raise ValueError(f"segment.k must be at least 2, got {self.k}")
        if self.seeds < 1:
            raise ValueError("segment.seeds must be at least 1")
        if not isinstance(self.parallelism, int) or self.parallelism < 1:
            raise ValueError(f"segment.parallelism must be a whole number >= 1, got {self.parallelism!r}")

    def fit_params(self) -> dict:
        return dict(max_iter=self.max_iter, init_steps=self.init_steps, tol=self.tol)


@dataclasses.dataclass
class SegmentResult:
    """What one domain's segmentation produced (DataFrames are lazy over ``prepared``)."""

    domain: str
    feature_cols: list[str]
    candidates: list[M.Candidate]
    chosen: M.Candidate
    ids: dict[int, int]
    names: dict[int, str]
    stability: dict[int, float]
    model: Any
    assignments: DataFrame
    profiles: DataFrame
    centroids: DataFrame
    prepared: DataFrame


# -- pure parts ----------------------------------------------------------------------------
def customer_features(c360: DataFrame, value: DataFrame | None = None, *, as_of: dt.date,
                      key_col: str = "customer_key") -> DataFrame:
    """The customer feature table: customer 360 plus the value columns it lacks.

    ``recency_days`` is derived from ``last_purchase_ts`` when no value table provides it.
    """
    if key_col not in c360.columns:
        raise ValueError(f"customer features need '{key_col}'; gold_customer_360 has {c360.columns}")
    bookkeeping = {"as_of_date", "run_id"}
    out = c360.drop(*[c for c in bookkeeping if c in c360.columns])
    if value is not None:
        extra = [c for c in value.columns if c not in out.columns and c not in bookkeeping]
        if extra:
            out = out.join(value.select(key_col, *extra), key_col, "left")
    if "recency_days" not in out.columns and "last_purchase_ts" in out.columns:
        out = out.withColumn("recency_days", F.datediff(F.lit(as_of), F.to_date("last_purchase_ts")))
    return out


def usable_features(df: DataFrame, feature_cols: Sequence[str]) -> list[str]:
    """The configured features present in ``df`` with at least one non-null value (one scan)."""
    present = [c for c in feature_cols if c in df.columns]
    if not present:
        return []
    counts = df.agg(*[F.count(c).alias(c) for c in present]).first().asDict()
    return [c for c in present if counts[c]]


def _previous_centers(previous: Sequence[Mapping[str, Any]] | None, feature_cols: Sequence[str],
                      mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray | None, list[int]]:
    if not previous:
        return None, []
    if any(list(r["feature_names"]) != list(feature_cols) for r in previous):
        log.warning("segment: previous centroids use other features; segment ids start afresh")
        return None, []
    transformed = np.array([r["centroid_transformed"] for r in previous], dtype=float)
    return to_current_space(transformed, mean=mean, std=std), [int(r["segment_id"]) for r in previous]


def fit_segments(features: DataFrame, *, domain: str, feature_cols: Sequence[str], settings: SegmentSettings,
                 seed: int, value_col: str | None = None, key_col: str = "customer_key",
                 previous: Sequence[Mapping[str, Any]] | None = None,
                 customers: int | None = None) -> SegmentResult:
    """Fit, choose k, align ids to ``previous`` centroid rows, name and profile one domain.

    ``features`` holds one row per customer of the domain (``customers`` of them, when the
    caller has counted). The caller unpersists ``result.prepared`` once the outputs are written.

    Examples
    --------
    >>> res = fit_segments(df, domain="retail", feature_cols=["net_spend", "invoices"],
    ...                    settings=SegmentSettings(k=3), seed=42)            # doctest: +SKIP
    >>> res.assignments.columns                                              # doctest: +SKIP
    ['customer_key', 'segment_id', 'segment_name', 'distance_to_centroid', 'domain']
    """
    cols = list(feature_cols)
    if len(cols) < 2:
        raise ValueError(f"segment {domain}: at least two features are needed, got {cols}")
    value_col = value_col if value_col in features.columns else None
    keep = [key_col, *cols, *([value_col] if value_col and value_col not in cols else [])]
    # K-Means|| initialisation and the silhouette sample depend on which rows sit in which
    # partition, in which order: a fixed layout by customer makes a rerun on rewritten input
    # files give the same clusters. Its size follows the data, capped by the shuffle partitions.
    data = laid_out_by(features.select(*keep), key_col, rows_per_partition=CUSTOMERS_PER_PARTITION,
                       rows=features.count() if customers is None else int(customers))
    prep = M.feature_pipeline(data, feature_cols=cols, transform=settings.transform,
                              cap_quantiles=settings.cap_quantiles,
                              quantile_buckets=settings.quantile_buckets).fit(data)
    prepared = prep.transform(data).select(*keep, M.FEATURES_COL).cache()
    n = prepared.count()
    ks = [settings.k] if settings.k else list(range(settings.k_min, min(settings.k_max, n - 1) + 1))
    seeds = [seed + i for i in range(settings.seeds)]
    candidates = M.sweep_k(prepared, ks=ks, algorithm=settings.algorithm, seeds=seeds,
                           sample_rows=settings.silhouette_sample, parallelism=settings.parallelism,
                           **settings.fit_params())
    chosen = M.choose_k(candidates, rule=settings.selection)
    cluster_model = chosen.model
    centers = M.model_centers(cluster_model, settings.algorithm)
    scaler = prep.stages[-1]
    mean, std = scaler.mean.toArray(), scaler.std.toArray()
    prev_centers, prev_ids = _previous_centers(previous, cols, mean, std)
    ids = align_segments(centers, chosen.sizes, previous_centers=prev_centers, previous_ids=prev_ids)
    naming = dict(settings.naming or {})
    raw_names = {ids[i]: segment_name(dict(zip(cols, centers[i])), labels=naming.get("labels") or (),
                                      threshold=float(naming.get("threshold", 0.5)),
                                      max_words=int(naming.get("max_words", 3))) for i in ids}
    names = unique_names(raw_names)
    reseeds = [[seed + 1000 + i * len(seeds) + j for j in range(len(seeds))] for i in range(settings.stability_reseeds)]
    jac = M.reseed_stability(prepared, cluster_model, algorithm=settings.algorithm, k=len(centers),
                             seeds=reseeds, **settings.fit_params()) if reseeds else np.full(len(centers), np.nan)
    stability = {ids[i]: float(jac[i]) for i in ids}
    mapper = SQLTransformer(statement=mapping_statement(ids=ids, names=names, cluster_col=M.CLUSTER_COL))
    spark = features.sparkSession
    centroid_rows = [
        (domain, ids[i], names[ids[i]], int(i), int(chosen.sizes[i]), cols, [float(x) for x in centers[i]],
         [float(x) for x in centers[i] * std + mean], None if np.isnan(jac[i]) else float(jac[i]),
         settings.algorithm, len(centers))
        for i in sorted(ids)]
    centroids = spark.createDataFrame(centroid_rows, CENTROID_SCHEMA)
    scored = mapper.transform(cluster_model.transform(prepared))
    scored = distance_to_centroid(scored, centroids, features_col=M.FEATURES_COL)
    assignments = scored.select(key_col, "segment_id", "segment_name", "distance_to_centroid",
                                F.lit(domain).alias("domain"))
    profiles = (segment_profiles(scored, feature_cols=cols, value_col=value_col)
                .join(F.broadcast(centroids.select("segment_id", "segment_name", "stability_jaccard", "k",
                                                   "algorithm")), "segment_id")
                .select(F.lit(domain).alias("domain"), "segment_id", "segment_name", "size", "share_customers",
                        "share_value", "feature_means", "feature_medians", "feature_z", "stability_jaccard",
                        "k", "algorithm"))
    return SegmentResult(domain=domain, feature_cols=cols, candidates=candidates, chosen=chosen, ids=ids,
                         names=names, stability=stability, model=M.full_model(prep, cluster_model, mapper),
                         assignments=assignments, profiles=profiles, centroids=centroids, prepared=prepared)


# -- I/O and tracking ------------------------------------------------------------------------
def _at(df: DataFrame, as_of: dt.date) -> DataFrame:
    return df.filter(F.col("as_of_date") == F.lit(as_of)) if "as_of_date" in df.columns else df


def previous_as_of(lake, table: str, as_of: dt.date) -> dt.date | None:
    """The latest as-of date of ``table`` strictly before ``as_of``."""
    if not lake.exists(table):
        return None
    return lake.read(table).filter(F.col("as_of_date") < F.lit(as_of)).agg(F.max("as_of_date")).first()[0]


def _log_domain(result: SegmentResult, settings: SegmentSettings) -> None:
    import mlflow

    from .. import tracking

    if mlflow.active_run() is None or not tracking.is_enabled():
        return
    d = result.domain
    tracking.log_params({f"{d}.features": ",".join(result.feature_cols), f"{d}.algorithm": settings.algorithm,
                         f"{d}.k": result.chosen.k, f"{d}.selection": settings.selection,
                         f"{d}.transform": settings.transform})
    for c in result.candidates:
        tracking.log_metrics({f"{d}.sweep_silhouette": c.silhouette, f"{d}.sweep_cost": c.cost}, step=c.k)
    tracking.log_metrics({f"{d}.k": result.chosen.k, f"{d}.silhouette": result.chosen.silhouette,
                          f"{d}.cost": result.chosen.cost,
                          **{f"{d}.stability_segment_{s}": v for s, v in result.stability.items()}})
    mlflow.log_dict({"candidates": [{"k": c.k, "silhouette": c.silhouette, "cost": c.cost, "seed": c.seed,
                                     "sizes": c.sizes} for c in result.candidates],
                     "chosen_k": result.chosen.k, "selection": settings.selection},
                    f"segment/{d}_k_sweep.json")
    tracking.log_figure(_sweep_figure(result), f"segment/{d}_k_sweep.png")


def _sweep_figure(result: SegmentResult):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [c.k for c in result.candidates]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(ks, [c.silhouette for c in result.candidates], marker="o")
    left.set(xlabel="k", ylabel="silhouette", title=f"{result.domain}: silhouette")
    right.plot(ks, [c.cost for c in result.candidates], marker="o", color="tab:orange")
    right.set(xlabel="k", ylabel="cost", title=f"{result.domain}: within-cluster cost")
    for ax in (left, right):
        ax.axvline(result.chosen.k, color="grey", linestyle="--")
    fig.tight_layout()
    return fig


def _log_model(result: SegmentResult) -> None:
    import mlflow
    import mlflow.spark
    import pyspark
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    signature = ModelSignature(inputs=Schema([ColSpec("double", c) for c in result.feature_cols]),
                               outputs=Schema([ColSpec("integer", "segment_id")]))
    mlflow.spark.log_model(result.model, f"segment_model_{result.domain}", signature=signature,
                           pip_requirements=[f"pyspark=={pyspark.__version__}"])


def _profiles_for_log(rows) -> list[dict]:
    return [{k: (dict(v) if isinstance(v, dict) else v) for k, v in r.asDict().items()} for r in rows]


def run(ctx: StepContext) -> StepResult:
    """Segment each configured domain and write assignments, profiles, centroids, migration."""
    import mlflow

    settings = SegmentSettings.from_section(ctx.config.section("segment"))
    lake, as_of = ctx.lake, ctx.as_of
    if not lake.exists(C360):
        raise FileNotFoundError(f"segment needs {lake.qualified(C360)}: run the customer360 step first")
    inputs = lake.versions([C360, VALUE])
    value = _at(lake.read(VALUE), as_of) if lake.exists(VALUE) else None
    features = customer_features(_at(lake.read(C360), as_of), value, as_of=as_of)
    prev_date = previous_as_of(lake, CENTROIDS, as_of)
    previous = (lake.read(CENTROIDS).filter(F.col("as_of_date") == F.lit(prev_date)).collect()
                if prev_date else [])
    results, rows_in = [], 0
    for domain in settings.domains:
        rows = features.filter(F.col("domain") == domain)
        cols = usable_features(rows, settings.features.get(domain) or [])
        skipped = [c for c in settings.features.get(domain) or [] if c not in cols]
        if skipped:
            log.warning("segment %s: features %s are absent or empty, skipped", domain, skipped)
        n = rows.count()
        rows_in += n
        if n < settings.min_customers or len(cols) < 2:
            log.warning("segment %s: %d customers, %d usable features: not segmented", domain, n, len(cols))
            continue
        result = fit_segments(rows, domain=domain, feature_cols=cols, settings=settings, seed=ctx.seed,
                              value_col=(settings.value_col or {}).get(domain),
                              previous=[r.asDict() for r in previous if r["domain"] == domain], customers=n)
        _log_domain(result, settings)
        results.append(result)
    outputs: dict[str, int | None] = {}
    rows_out = 0
    if results:
        union = lambda dfs: functools.reduce(DataFrame.unionByName, dfs)  # noqa: E731
        assignments = ctx.stamp(union([r.assignments for r in results]))
        outputs[ASSIGNMENTS] = lake.replace_partition(assignments, ASSIGNMENTS, as_of_date=as_of)
        profiles = ctx.stamp(union([r.profiles for r in results]))
        outputs[PROFILES] = lake.replace_partition(profiles, PROFILES, as_of_date=as_of)
        outputs[CENTROIDS] = lake.replace_partition(ctx.stamp(union([r.centroids for r in results])),
                                                    CENTROIDS, as_of_date=as_of)
        prev_assign = previous_as_of(lake, ASSIGNMENTS, as_of)
        if prev_assign is not None:
            current = lake.read(ASSIGNMENTS).filter(F.col("as_of_date") == F.lit(as_of))
            before = lake.read(ASSIGNMENTS).filter(F.col("as_of_date") == F.lit(prev_assign))
            migration = segment_migration(before, current, from_as_of=prev_assign, to_as_of=as_of)
            outputs[MIGRATION] = lake.replace_partition(ctx.stamp(migration), MIGRATION, as_of_date=as_of)
        rows_out = lake.rows_written(ASSIGNMENTS)
        if mlflow.active_run() is not None:
            profile_rows = lake.read(PROFILES).filter(F.col("as_of_date") == F.lit(as_of)).drop("as_of_date", "run_id")
            mlflow.log_dict({"profiles": _profiles_for_log(profile_rows.orderBy("domain", "segment_id").collect())},
                            "segment/profiles.json")
            if settings.log_model:
                for r in results:
                    _log_model(r)
        for r in results:
            r.prepared.unpersist()
    metrics = {f"{r.domain}_k": r.chosen.k for r in results}
    metrics.update({f"{r.domain}_silhouette": r.chosen.silhouette for r in results})
    return StepResult(rows_in=rows_in, rows_out=rows_out, inputs=inputs, outputs=outputs, metrics=metrics)
