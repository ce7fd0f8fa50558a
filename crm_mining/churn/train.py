"""Churn model training with pyspark.ml: logistic regression and gradient-boosted trees.

Both are tuned on small grids with ``TrainValidationSplit`` (few fits: the machines are
small), weigh the classes so that churners and stayers count equally (``weightCol``), and
are judged out of time: fit on the earlier cutoffs, tested on the latest one.

Logistic regression sees each feature as ``sign(x)·log(1 + |x|)``, standardised, which
tames heavy-tailed counts and spend; its coefficients on that scale are also what explain
a score (see :func:`reason_weights`).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Mapping, Sequence

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import GBTClassifier, LogisticRegression
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import SQLTransformer, StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.ml.tuning import ParamGridBuilder, TrainValidationSplit
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from ..session import laid_out_by
from .labels import CUTOFF_COL, LABEL_COL

WEIGHT_COL = "class_weight"
PROBABILITY_COL = "churn_probability"
ALGORITHMS = ("lr", "gbt")
METRIC_NAMES = {"pr_auc": "areaUnderPR", "roc_auc": "areaUnderROC"}
#: Labelled rows per partition of the data the models fit on. Each boosting round and tree
#: level of the GBT, and each L-BFGS iteration of LR, is a Spark job with a task per partition:
#: spread over the shuffle partitions, a few hundred thousand rows spend their fits on task
#: overhead.
ROWS_PER_PARTITION = 100_000


@dataclasses.dataclass
class TrainSettings:
    """Grids and options of the two models (the ``churn`` configuration section)."""

    lr_reg_param: Sequence[float] = (0.001, 0.05)
    lr_elastic_net: Sequence[float] = (0.0,)
    gbt_max_depth: Sequence[int] = (3, 5)
    gbt_max_iter: int = 40
    gbt_step_size: float = 0.1
    train_ratio: float = 0.75
    search_parallelism: int = 2
    selection_metric: str = "pr_auc"
    seed: int = 42

    @classmethod
    def from_config(cls, section: Mapping[str, Any], *, seed: int) -> "TrainSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        settings = cls(**{k: v for k, v in section.items() if k in names and k != "seed"}, seed=seed)
        if settings.selection_metric not in METRIC_NAMES:
            raise ValueError(f"churn.selection_metric must be one of {sorted(METRIC_NAMES)}, "
                             f"got {settings.selection_metric!r}")
        if not 0.0 < settings.train_ratio < 1.0:
            raise ValueError(f"churn.train_ratio must be in (0, 1), got {settings.train_ratio!r}")
        if not isinstance(settings.search_parallelism, int) or settings.search_parallelism < 1:
            raise ValueError(f"churn.search_parallelism must be a whole number >= 1, "
                             f"got {settings.search_parallelism!r}")
        return settings


def signed_log(column: str) -> Column:
    """``sign(x)·log(1 + |x|)`` of a column: the scale logistic regression sees."""
    return F.signum(F.col(column)) * F.log1p(F.abs(F.col(column)))


def _log_name(feature: str) -> str:
    return f"{feature}__log"


def with_class_weights(data: DataFrame, *, label_col: str = LABEL_COL) -> DataFrame:
    """Add ``class_weight``: n / (2·n_class), so both classes weigh half of the data.

    Examples
    --------
    >>> with_class_weights(training).groupBy("churned").sum("class_weight")
    """
    counts = {row[0]: row[1] for row in data.groupBy(label_col).count().collect()}
    total = sum(counts.values())
    if len(counts) < 2:
        raise ValueError(f"the training data holds one class only ({counts}): cannot fit a churn model")
    weights = {label: total / (2.0 * n) for label, n in counts.items()}
    return data.withColumn(
        WEIGHT_COL, F.when(F.col(label_col) == 1, weights[1]).otherwise(weights[0])
    )


def training_layout(data: DataFrame, *, rows: int) -> DataFrame:
    """``data`` in one partition per :data:`ROWS_PER_PARTITION` rows (at most the shuffle
    partitions), hashed and sorted by customer and cutoff.

    The validation split and the GBT's split candidates sample rows partition by partition, so
    a layout that depends on the rows alone, not on how they were joined, keeps refits equal.

    Examples
    --------
    >>> training_layout(data, rows=400_000).rdd.getNumPartitions()     # 32 shuffle partitions
    4
    """
    return laid_out_by(data, "customer_key", CUTOFF_COL, rows=rows, rows_per_partition=ROWS_PER_PARTITION)


def out_of_time_split(data: DataFrame, *, test_cutoff: dt.date) -> tuple[DataFrame, DataFrame]:
    """Rows before ``test_cutoff`` to fit on, rows at it to test on."""
    cutoff = F.lit(test_cutoff).cast("date")
    return data.filter(F.col(CUTOFF_COL) < cutoff), data.filter(F.col(CUTOFF_COL) == cutoff)


def lr_pipeline(features: Sequence[str], settings: TrainSettings) -> tuple[Pipeline, list]:
    """Log-scale, assemble, standardise, logistic regression; with its parameter grid."""
    select = ", ".join(f"SIGN({c}) * LN(1 + ABS({c})) AS {_log_name(c)}" for c in features)
    logs = SQLTransformer(statement=f"SELECT *, {select} FROM __THIS__")
    assembler = VectorAssembler(inputCols=[_log_name(c) for c in features], outputCol="raw_features")
    scaler = StandardScaler(inputCol="raw_features", outputCol="features", withMean=True, withStd=True)
    lr = LogisticRegression(labelCol=LABEL_COL, weightCol=WEIGHT_COL, maxIter=100)
    grid = (ParamGridBuilder().addGrid(lr.regParam, [float(x) for x in settings.lr_reg_param])
            .addGrid(lr.elasticNetParam, [float(x) for x in settings.lr_elastic_net]).build())
    return Pipeline(stages=[logs, assembler, scaler, lr]), grid


def gbt_pipeline(features: Sequence[str], settings: TrainSettings) -> tuple[Pipeline, list]:
    """Assemble, gradient-boosted trees; with its parameter grid."""
    assembler = VectorAssembler(inputCols=list(features), outputCol="features")
    gbt = GBTClassifier(labelCol=LABEL_COL, weightCol=WEIGHT_COL, maxIter=int(settings.gbt_max_iter),
                        stepSize=float(settings.gbt_step_size), seed=settings.seed, maxBins=64)
    grid = ParamGridBuilder().addGrid(gbt.maxDepth, [int(x) for x in settings.gbt_max_depth]).build()
    return Pipeline(stages=[assembler, gbt]), grid


def tune(data: DataFrame, *, algorithm: str, features: Sequence[str], settings: TrainSettings) -> PipelineModel:
    """Pick the grid point by ``TrainValidationSplit`` and return the best pipeline refit on ``data``.

    ``data`` must carry ``class_weight`` (:func:`with_class_weights`).
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if WEIGHT_COL not in data.columns:
        raise ValueError(f"the training data has no '{WEIGHT_COL}' column: add it with with_class_weights")
    build = lr_pipeline if algorithm == "lr" else gbt_pipeline
    pipeline, grid = build(features, settings)
    if len(grid) == 1:  # nothing to choose: skip the validation fits
        return pipeline.fit(data, grid[0])
    evaluator = BinaryClassificationEvaluator(labelCol=LABEL_COL, rawPredictionCol="rawPrediction",
                                              metricName=METRIC_NAMES[settings.selection_metric])
    search = TrainValidationSplit(estimator=pipeline, estimatorParamMaps=grid, evaluator=evaluator,
                                  trainRatio=float(settings.train_ratio), seed=settings.seed,
                                  parallelism=settings.search_parallelism)
    return search.fit(data).bestModel


def refit(model: PipelineModel, data: DataFrame, *, algorithm: str, features: Sequence[str],
          settings: TrainSettings) -> PipelineModel:
    """Fit the tuned pipeline's parameters again on ``data`` (e.g. every cutoff)."""
    build = lr_pipeline if algorithm == "lr" else gbt_pipeline
    pipeline, _ = build(features, settings)
    tuned, fresh = model.stages[-1], pipeline.getStages()[-1]
    params = {fresh.getParam(p.name): tuned.getOrDefault(p) for p in tuned.params
              if fresh.hasParam(p.name) and tuned.isDefined(p)}
    return pipeline.fit(data, params)


def predict(model: PipelineModel, data: DataFrame) -> DataFrame:
    """``data`` with ``churn_probability`` (the probability of class 1) added."""
    scored = model.transform(data)
    return scored.withColumn(PROBABILITY_COL, vector_to_array(F.col("probability"))[1]).drop(
        "raw_features", "features", "rawPrediction", "probability", "prediction",
        *[c for c in scored.columns if c.endswith("__log")],
    )


def reason_weights(lr_model: PipelineModel, features: Sequence[str]) -> list[dict[str, float]]:
    """Per feature: the LR coefficient, and the mean and std of its log-scaled value.

    A customer's contribution of feature j is ``coefficient_j · (slog(x_j) - mean_j) / std_j``:
    positive contributions push the churn score up (see :mod:`crm_mining.churn.score`).
    """
    scaler, lr = lr_model.stages[-2], lr_model.stages[-1]
    means, stds, coefs = scaler.mean.toArray(), scaler.std.toArray(), lr.coefficients.toArray()
    return [{"feature": f, "coefficient": float(c), "mean": float(m), "std": float(s)}
            for f, c, m, s in zip(features, coefs, means, stds)]


def feature_importances(model: PipelineModel, features: Sequence[str]) -> dict[str, float]:
    """GBT feature importances (or |LR coefficients| for a linear model), by feature name."""
    last = model.stages[-1]
    values = last.featureImportances.toArray() if hasattr(last, "featureImportances") else abs(
        last.coefficients.toArray())
    return {f: float(v) for f, v in zip(features, values)}
