"""Frequent itemset mining with FP-Growth, guarded so a hopeless setting fails fast.

FP-Growth keeps its conditional trees in memory; a low minimum support on dense baskets can
produce more patterns than any machine holds. Before mining, :func:`plan_mining`:

1. counts the baskets and the items, and prunes every item below the minimum count
   (``min_count``: the least count with ``count / baskets >= min_support``);
2. drops baskets holding more than ``max_basket_items`` frequent items (reported), since one
   basket of k frequent items holds 2^k itemsets;
3. refuses when the pair scan would be larger than ``max_pair_occurrences`` (the sum over
   baskets of k(k-1)/2 — the work of counting pairs);
4. counts the frequent pairs exactly (a self-join of the pruned baskets) and refuses when
   they alone exceed ``max_patterns``;
5. bounds the number of frequent itemsets and refuses above ``max_patterns``. Order the
   frequent items by (count, id) and let N(i) be the items after i that form a frequent pair
   with i. Every frequent itemset whose first item is i is {i} ∪ S with S ⊆ N(i) (all its
   pairs are frequent), and it lies in at least ``min_count`` baskets holding i, in each as
   a subset of N(i) ∩ basket. So the number of frequent itemsets is at most
   ``sum_i min(2^|N(i)|, sum_{b ∋ i} 2^|N(i) ∩ b| / min_count)`` — an upper bound, computed
   from the pair scan at no extra pass over the data.

:class:`PatternExplosionError` carries the numbers and says which setting to change.
"""
from __future__ import annotations

import dataclasses
import logging
import math

from pyspark import StorageLevel
from pyspark.ml.fpm import FPGrowth
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

log = logging.getLogger(__name__)

#: 2^k is capped here so the bound stays a finite double.
_POW_CAP = 2.0 ** 62


class PatternExplosionError(ValueError):
    """Mining was refused before it started: the settings would produce too many patterns."""


@dataclasses.dataclass
class MiningPlan:
    """What the guard found: counts the mining and the report rely on."""

    baskets: int
    min_support: float
    min_count: int
    frequent_items: int
    baskets_over_cap: int
    max_basket_items: int
    pair_occurrences: float
    frequent_pairs: int
    pattern_bound: float
    frequent_itemsets: int | None = None
    pruned: DataFrame = dataclasses.field(repr=False, default=None)

    def metrics(self) -> dict[str, float]:
        # Not dataclasses.asdict: it would deep-copy the pruned DataFrame (and its session).
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "pruned"}
        return {k: float(v) for k, v in values.items() if v is not None}


def min_count_for(min_support: float, baskets: int) -> int:
    """The least count c >= 1 with ``c / baskets >= min_support`` (the float test mlxtend uses).

    Examples
    --------
    >>> min_count_for(0.01, 300)
    3
    """
    if not 0 < min_support <= 1:
        raise ValueError(f"min_support must be in (0, 1], got {min_support}")
    count = max(1, math.ceil(min_support * baskets))
    while count > 1 and (count - 1) / baskets >= min_support:
        count -= 1
    while count / baskets < min_support:
        count += 1
    return count


def item_counts(baskets: DataFrame, *, items_col: str = "items") -> DataFrame:
    """(item, count): in how many baskets each item appears (items are unique per basket)."""
    return baskets.select(F.explode(items_col).alias("item")).groupBy("item").agg(F.count("*").alias("count"))


def prune_baskets(baskets: DataFrame, frequent: DataFrame, *, basket_col: str = "basket_id",
                  items_col: str = "items") -> DataFrame:
    """Keep only frequent items in each basket; baskets left empty are dropped.

    Adds ``n_items`` (frequent items in the basket).
    """
    return (baskets.select(basket_col, F.explode(items_col).alias("item"))
            .join(F.broadcast(frequent.select("item")), "item")
            .groupBy(basket_col).agg(F.array_sort(F.collect_list("item")).alias(items_col))
            .withColumn("n_items", F.size(items_col)))


def _pairs_in_baskets(pruned: DataFrame, basket_col: str, items_col: str) -> DataFrame:
    """(basket, item_a, item_b) for every pair of items in a basket, item_a < item_b.

    Built inside each row with higher-order functions (items are sorted): no join, no shuffle.
    """
    pairs = F.expr(
        f"flatten(transform(sequence(1, greatest(size({items_col}) - 1, 1)), "
        f"i -> transform(slice({items_col}, i + 1, size({items_col})), "
        f"j -> named_struct('item_a', {items_col}[i - 1], 'item_b', j))))")
    return (pruned.filter(F.size(items_col) >= 2).select(basket_col, F.explode(pairs).alias("pair"))
            .select(basket_col, "pair.item_a", "pair.item_b"))


def pattern_bound(pruned: DataFrame, frequent: DataFrame, *, min_count: int, max_patterns: int,
                  basket_col: str = "basket_id", items_col: str = "items") -> tuple[int, float]:
    """(frequent pairs, upper bound of the frequent itemsets); see the module docstring."""
    pairs = _pairs_in_baskets(pruned, basket_col, items_col)
    counted = pairs.groupBy("item_a", "item_b").agg(F.count("*").alias("count"))
    frequent_pairs = counted.filter(F.col("count") >= min_count).select("item_a", "item_b").cache()
    try:
        n_pairs = frequent_pairs.limit(max_patterns + 1).count()
        if n_pairs > max_patterns:
            return n_pairs, float("inf")
        order = frequent.select("item", F.struct("count", "item").alias("rank"))
        # Orient each frequent pair from its lower-ranked item ("first") to the other one.
        oriented = (frequent_pairs
                    .join(F.broadcast(order.withColumnRenamed("item", "item_a").withColumnRenamed("rank", "ra")), "item_a")
                    .join(F.broadcast(order.withColumnRenamed("item", "item_b").withColumnRenamed("rank", "rb")), "item_b")
                    .select("item_a", "item_b", F.when(F.col("ra") < F.col("rb"), F.col("item_a"))
                            .otherwise(F.col("item_b")).alias("first_item")))
        degree = oriented.groupBy(F.col("first_item").alias("item")).agg(F.count("*").alias("degree"))
        in_baskets = (pairs.join(F.broadcast(oriented), ["item_a", "item_b"])
                      .groupBy(basket_col, "first_item").agg(F.count("*").alias("k"))
                      .groupBy(F.col("first_item").alias("item"))
                      .agg(F.sum(F.least(F.pow(F.lit(2.0), "k"), F.lit(_POW_CAP)) - 1).alias("extra")))
        per_item = (frequent.join(degree, "item", "left").join(in_baskets, "item", "left")
                    .select(F.least(F.pow(F.lit(2.0), F.coalesce("degree", F.lit(0))), F.lit(_POW_CAP),
                                    (F.col("count") + F.coalesce("extra", F.lit(0.0))) / F.lit(float(min_count)))
                            .alias("bound")))
        bound = per_item.agg(F.sum("bound")).first()[0] or 0.0
        return n_pairs, float(bound)
    finally:
        frequent_pairs.unpersist()


def _refuse(message: str, plan: dict) -> None:
    log.error("basket mining refused: %s (%s)", message, plan)
    raise PatternExplosionError(
        f"basket mining refused before FP-Growth: {message}. Raise basket.min_support, lower "
        f"basket.max_basket_items, or raise the limit if the machine can take it "
        f"(min_support={plan['min_support']}, min_count={plan['min_count']}, "
        f"baskets={plan['baskets']}, frequent_items={plan['frequent_items']})"
    )


def plan_mining(baskets: DataFrame, *, min_support: float, max_basket_items: int = 1000,
                max_patterns: int = 1_000_000, max_pair_occurrences: float = 2e8,
                basket_col: str = "basket_id", items_col: str = "items") -> MiningPlan:
    """Count, prune and bound before mining; raise :class:`PatternExplosionError` when hopeless.

    The returned plan holds the pruned baskets (cached) for :func:`frequent_itemsets`.

    Examples
    --------
    >>> plan = plan_mining(baskets, min_support=0.01)  # doctest: +SKIP
    >>> itemsets = frequent_itemsets(plan)             # doctest: +SKIP
    """
    if not isinstance(baskets, DataFrame):
        raise TypeError("baskets must be a DataFrame")
    if int(max_basket_items) < 2:
        raise ValueError(f"max_basket_items must be >= 2, got {max_basket_items}")
    if int(max_patterns) < 1:
        raise ValueError(f"max_patterns must be >= 1, got {max_patterns}")
    # The baskets are counted, item-counted and pruned: cached, they are built from the lines
    # once instead of three times (unless a cache of the same plan exists already).
    owned = baskets.storageLevel == StorageLevel.NONE
    if owned:
        baskets.persist()
    try:
        n = baskets.count()
        if n == 0:
            raise ValueError("no baskets to mine (no sales lines before the as-of date?)")
        min_count = min_count_for(min_support, n)
        counts = item_counts(baskets, items_col=items_col)
        frequent = counts.filter(F.col("count") >= min_count).cache()
        info = {"min_support": min_support, "min_count": min_count, "baskets": n,
                "frequent_items": frequent.count()}
        if info["frequent_items"] > max_patterns:
            frequent.unpersist()
            _refuse(f"{info['frequent_items']} frequent items alone exceed basket.max_patterns={max_patterns}", info)
        pruned = prune_baskets(baskets, frequent, basket_col=basket_col, items_col=items_col).cache()
        k = F.col("n_items").cast("double")
        # this aggregate fills the pruned cache, after which the baskets are no longer needed
        stats = pruned.agg(F.count("*").alias("nonempty"),
                           F.sum((F.col("n_items") > max_basket_items).cast("long")).alias("over_cap"),
                           F.sum(F.when(F.col("n_items") <= max_basket_items, k * (k - 1) / 2)).alias("pairs")).first()
    finally:
        if owned:
            baskets.unpersist()
    over_cap, pair_occurrences = int(stats["over_cap"] or 0), float(stats["pairs"] or 0.0)
    if over_cap:
        log.warning("basket mining: %d baskets hold more than %d frequent items and are left out",
                    over_cap, max_basket_items)
    kept = pruned.filter(F.col("n_items") <= max_basket_items)
    if pair_occurrences > max_pair_occurrences:
        pruned.unpersist(); frequent.unpersist()
        _refuse(f"the pair scan would touch {pair_occurrences:.3g} item pairs, more than "
                f"basket.max_pair_occurrences={max_pair_occurrences:.3g}", info)
    n_pairs, bound = pattern_bound(kept, frequent, min_count=min_count, max_patterns=max_patterns,
                                   basket_col=basket_col, items_col=items_col)
    frequent.unpersist()
    if bound > max_patterns:
        pruned.unpersist()
        what = (f"{n_pairs} frequent pairs alone" if math.isinf(bound)
                else f"up to {bound:.3g} frequent itemsets (bound from {n_pairs} frequent pairs)")
        _refuse(f"{what} exceed basket.max_patterns={max_patterns}", info)
    return MiningPlan(baskets=n, min_support=min_support, min_count=min_count,
                      frequent_items=info["frequent_items"], baskets_over_cap=over_cap,
                      max_basket_items=int(max_basket_items), pair_occurrences=pair_occurrences,
                      frequent_pairs=n_pairs, pattern_bound=bound, pruned=kept)


def frequent_itemsets(plan: MiningPlan, *, items_col: str = "items", num_partitions: int | None = None) -> DataFrame:
    """Mine the pruned baskets of ``plan`` with :class:`pyspark.ml.fpm.FPGrowth`.

    Returns ``items`` (sorted array<string>) and ``count`` (baskets holding them). FP-Growth
    sees only the non-empty pruned baskets, so its minimum support is set to give exactly
    ``plan.min_count``; supports are taken against all ``plan.baskets`` later.

    ``num_partitions`` is the number of FP-trees FP-Growth builds and mines (None: one per core,
    ``defaultParallelism``). Each basket is copied once into every partition its items fall
    in, so partitions beyond the cores only multiply that work: on 1.25M generated baskets at
    min support 0.005, 2 partitions mined in 246 s, 4 in 346 s and the input's 32 in 421 s.
    """
    spark = plan.pruned.sparkSession
    cores = spark.sparkContext.defaultParallelism
    # Each input partition builds a partial FP-tree for every mining partition, and all of
    # them are serialised, shuffled and merged: one input partition per core builds the
    # fewest. On 1.25M generated baskets at min support 0.005 (2 cores), mining took 179 s
    # from the 32 partitions of the pruned baskets and 142 s from 2.
    data = plan.pruned.select(items_col).coalesce(cores)
    mined = data.count()
    if mined == 0:
        return spark.createDataFrame([], "items array<string>, count long")
    fp = FPGrowth(itemsCol=items_col, minSupport=(plan.min_count - 0.5) / mined, minConfidence=1.0)
    fp = fp.setNumPartitions(int(num_partitions or cores))
    model = fp.fit(data)
    return model.freqItemsets.select(F.array_sort("items").alias("items"), F.col("freq").alias("count"))
