"""Segment profiles, readable names and the per-customer assignment rows.

Names are derived from the segment centroid in the standardised space (log-transformed,
capped, z-scored features, so a coordinate of +1 means "one standard deviation above the
customer population"), by these rules:

1. every feature whose centroid coordinate has ``|z| >= threshold`` is a candidate word: the
   feature's "high" label when z > 0, its "low" label when z < 0 (labels come from
   ``segment.naming.labels``; a feature without one reads "high <feature>" / "low <feature>");
2. the ``max_words`` candidates with the largest ``|z|`` are kept (ties: the earlier label in
   the configured list), a word already used is skipped;
3. the kept words are written in the order of the configured label list (value first, then
   frequency, then recency...) joined by " · ", e.g. "high value · frequent · recent";
4. a segment with no candidate word is called "average";
5. if two segments of a domain end up with the same name, the one with the larger segment id
   gets " (2)", " (3)"... appended; ids are aligned across runs, so this is stable too.

The same centroid therefore always gives the same name, whatever the run.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

NAME_SEPARATOR = " · "


def _label_table(labels: Sequence[Sequence[str]]) -> dict[str, tuple[int, str, str]]:
    table = {}
    for position, entry in enumerate(labels or ()):
        if len(entry) != 3:
            raise ValueError(f"each naming label must be [feature, high word, low word], got {entry!r}")
        feature, high, low = (str(x) for x in entry)
        table.setdefault(feature, (position, high, low))
    return table


def segment_name(z: Mapping[str, float], *, labels: Sequence[Sequence[str]] = (), threshold: float = 0.5,
                 max_words: int = 3) -> str:
    """A readable name from a segment's standardised profile (rules in the module docstring).

    Examples
    --------
    >>> labels = [["monetary", "high value", "low value"], ["frequency", "frequent", "infrequent"],
    ...           ["recency_days", "lapsed", "recent"]]
    >>> segment_name({"recency_days": -0.9, "monetary": 1.4, "frequency": 1.1}, labels=labels)
    'high value · frequent · recent'
    """
    if max_words < 1:
        raise ValueError("max_words must be at least 1")
    table = _label_table(labels)
    unlabelled = len(table)
    candidates = []
    for order, (feature, value) in enumerate(z.items()):
        if value is None or not np.isfinite(value) or abs(value) < threshold:
            continue
        position, high, low = table.get(feature, (unlabelled + order, f"high {feature}", f"low {feature}"))
        candidates.append((-abs(float(value)), position, high if value > 0 else low))
    chosen, used = [], set()
    for _, position, word in sorted(candidates):
        if word in used:
            continue
        used.add(word)
        chosen.append((position, word))
        if len(chosen) == max_words:
            break
    return NAME_SEPARATOR.join(word for _, word in sorted(chosen)) or "average"


def unique_names(names: Mapping[int, str]) -> dict[int, str]:
    """Make names unique within a domain: later segment ids get " (2)", " (3)"..."""
    seen: dict[str, int] = {}
    out = {}
    for segment_id in sorted(names):
        name = names[segment_id]
        seen[name] = seen.get(name, 0) + 1
        out[segment_id] = name if seen[name] == 1 else f"{name} ({seen[name]})"
    return out


def segment_profiles(assigned: DataFrame, *, feature_cols: Sequence[str], segment_col: str = "segment_id",
                     value_col: str | None = None, accuracy: int = 10000) -> DataFrame:
    """One row per segment: size, shares, feature means, approximate medians and z-scores.

    ``feature_means``, ``feature_medians`` and ``feature_z`` are maps keyed by feature name (so
    the table keeps one schema whatever features a domain uses); ``feature_z`` is the segment
    mean minus the population mean, over the population standard deviation, in raw units.
    ``share_value`` is the segment's share of the sum of ``value_col`` (null without one).

    Examples
    --------
    >>> segment_profiles(df, feature_cols=["net_spend"], value_col="net_spend")  # doctest: +SKIP
    """
    cols = list(feature_cols)
    missing = [c for c in [*cols, segment_col, *([value_col] if value_col else [])] if c not in assigned.columns]
    if missing:
        raise ValueError(f"segment_profiles: columns {missing} are not in the data")
    value = F.col(value_col).cast("double") if value_col else F.lit(None).cast("double")
    data = assigned.select(segment_col, value.alias("_value"), *[F.col(c).cast("double").alias(c) for c in cols])
    per = data.groupBy(segment_col).agg(
        F.count(F.lit(1)).alias("size"), F.sum("_value").alias("_value_sum"),
        *[F.avg(c).alias(f"_m_{c}") for c in cols],
        *[F.percentile_approx(c, 0.5, accuracy).alias(f"_md_{c}") for c in cols])
    pop = data.agg(F.count(F.lit(1)).alias("_n"), F.sum("_value").alias("_value_total"),
                   *[F.avg(c).alias(f"_pm_{c}") for c in cols],
                   *[F.stddev_pop(c).alias(f"_ps_{c}") for c in cols])
    z = {c: F.when(F.col(f"_ps_{c}") > 0, (F.col(f"_m_{c}") - F.col(f"_pm_{c}")) / F.col(f"_ps_{c}")) for c in cols}
    return per.crossJoin(F.broadcast(pop)).select(
        segment_col, "size",
        (F.col("size") / F.col("_n")).alias("share_customers"),
        F.when(F.col("_value_total") != 0, F.col("_value_sum") / F.col("_value_total")).alias("share_value"),
        _map({c: F.col(f"_m_{c}") for c in cols}).alias("feature_means"),
        _map({c: F.col(f"_md_{c}") for c in cols}).alias("feature_medians"),
        _map(z).alias("feature_z"),
    )


def _map(values: Mapping[str, object]):
    pairs = []
    for key, column in values.items():
        pairs += [F.lit(key), column.cast("double")]
    return F.create_map(*pairs)


def distance_to_centroid(scored: DataFrame, centroids: DataFrame, *, features_col: str, segment_col: str = "segment_id",
                         centroid_col: str = "centroid") -> DataFrame:
    """Add ``distance_to_centroid``: Euclidean distance in the standardised space.

    ``centroids`` is the small (segment id, centroid array) table, broadcast to the join.
    """
    small = F.broadcast(centroids.select(segment_col, F.col(centroid_col).alias("_centroid")))
    squared = F.aggregate(
        F.zip_with(vector_to_array(F.col(features_col)), F.col("_centroid"), lambda a, b: (a - b) * (a - b)),
        F.lit(0.0), lambda acc, x: acc + x)
    return scored.join(small, segment_col, "left").withColumn("distance_to_centroid", F.sqrt(squared)).drop("_centroid")


def mapping_statement(*, ids: Mapping[int, int], names: Mapping[int, str], cluster_col: str,
                      segment_col: str = "segment_id", name_col: str = "segment_name") -> str:
    """A ``SQLTransformer`` statement turning cluster indexes into aligned segment ids and names.

    Appended to the fitted pipeline, it makes the logged model score new customers straight
    into the segment ids and names of the tables.
    """
    def quote(text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

    id_cases = " ".join(f"WHEN {int(c)} THEN {int(s)}" for c, s in sorted(ids.items()))
    name_cases = " ".join(f"WHEN {int(c)} THEN {quote(names[s])}" for c, s in sorted(ids.items()))
    return (f"SELECT *, CAST(CASE CAST(`{cluster_col}` AS INT) {id_cases} END AS INT) AS `{segment_col}`, "
            f"CASE CAST(`{cluster_col}` AS INT) {name_cases} END AS `{name_col}` FROM __THIS__")
