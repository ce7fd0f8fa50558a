"""Association rules and cross-selling: baskets, guarded FP-Growth mining, rule metrics and
significance, per-customer recommendations and their out-of-period evaluation.

The step entry point is :func:`run` (``crm-mining run --steps basket``).
"""
from .baskets import (NON_PRODUCT_CODES, bank_holdings, baskets_from_pairs, customer_items,
                      retail_baskets, retail_lines_before)
from .mining import MiningPlan, PatternExplosionError, frequent_itemsets, item_counts, min_count_for, plan_mining
from .recommend import evaluate_hit_rate, popularity_baseline, recommend
from .rules import add_significance, association_rules, prune_redundant
from .step import mine_rules, run

__all__ = ["NON_PRODUCT_CODES", "MiningPlan", "PatternExplosionError", "add_significance", "association_rules",
           "bank_holdings", "baskets_from_pairs", "customer_items", "evaluate_hit_rate", "frequent_itemsets",
           "item_counts", "min_count_for", "mine_rules", "plan_mining", "popularity_baseline", "prune_redundant",
           "recommend", "retail_baskets", "retail_lines_before", "run"]
