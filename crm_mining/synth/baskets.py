"""Exact counts of itemsets in the clean baskets, accumulated chunk by chunk.

The truth file must state the support, confidence and lift of the planted rules (and of
the most frequent noise pairs) as they are in the written data, not as intended. Every
clean basket is seen in exactly one chunk, so per-chunk counts of "baskets holding these
items" add up to the exact totals without keeping any basket in memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from .catalogue import Catalogue


def basket_membership(basket_of_line: np.ndarray, product_of_line: np.ndarray,
                      basket_count: int, products: np.ndarray) -> np.ndarray:
    """Boolean matrix baskets × products: does basket b hold product p."""
    size = max(int(products.max(initial=0)), int(product_of_line.max(initial=0))) + 1
    column = np.full(size, -1, dtype=np.int64)
    column[products] = np.arange(len(products))
    hit_column = column[product_of_line]
    member = np.zeros((basket_count, len(products)), dtype=bool)
    hit = hit_column >= 0
    member[basket_of_line[hit], hit_column[hit]] = True
    return member


@dataclass
class ItemsetCounter:
    """Running counts for the planted rules and the noise pairs."""

    catalogue: Catalogue
    noise_pair_items: np.ndarray
    baskets: int = 0
    item_counts: dict[int, int] = field(default_factory=dict)
    itemset_counts: dict[tuple[int, ...], int] = field(default_factory=dict)

    def tracked_items(self) -> np.ndarray:
        return np.unique(np.concatenate([self.catalogue.rule_items, self.noise_pair_items]))

    def itemsets(self) -> list[tuple[int, ...]]:
        """Every itemset whose count the truth needs: antecedents and full rules, noise pairs."""
        sets = []
        for rule in self.catalogue.rules:
            sets.append(tuple(sorted(rule.antecedent)))
            sets.append(tuple(sorted(rule.antecedent + (rule.consequent,))))
        sets.extend(tuple(sorted(p)) for p in combinations(self.noise_pair_items.tolist(), 2))
        return sorted(set(sets))

    def add(self, basket_of_line: np.ndarray, product_of_line: np.ndarray, basket_count: int) -> None:
        """Count one chunk of clean baskets (basket ids 0..basket_count-1)."""
        items = self.tracked_items()
        member = basket_membership(basket_of_line, product_of_line, basket_count, items)
        position = {int(item): k for k, item in enumerate(items)}
        self.baskets += basket_count
        for item, k in position.items():
            self.item_counts[item] = self.item_counts.get(item, 0) + int(member[:, k].sum())
        for itemset in self.itemsets():
            both = np.logical_and.reduce([member[:, position[i]] for i in itemset])
            self.itemset_counts[itemset] = self.itemset_counts.get(itemset, 0) + int(both.sum())

    def merge(self, other: "ItemsetCounter") -> None:
        """Add the counts of another chunk's counter."""
        self.baskets += other.baskets
        for item, count in other.item_counts.items():
            self.item_counts[item] = self.item_counts.get(item, 0) + count
        for itemset, count in other.itemset_counts.items():
            self.itemset_counts[itemset] = self.itemset_counts.get(itemset, 0) + count

    def _count(self, items: tuple[int, ...]) -> int:
        if len(items) == 1:
            return self.item_counts.get(items[0], 0)
        return self.itemset_counts.get(tuple(sorted(items)), 0)

    def _measures(self, antecedent: tuple[int, ...], consequent: int) -> dict:
        codes = self.catalogue.stock_codes
        n_ante = self._count(antecedent)
        n_cons = self._count((consequent,))
        n_both = self._count(tuple(sorted(antecedent + (consequent,))))
        n = max(self.baskets, 1)
        confidence = n_both / n_ante if n_ante else 0.0
        lift = confidence / (n_cons / n) if n_cons else 0.0
        return {
            "antecedent": [codes[i] for i in antecedent],
            "consequent": [codes[consequent]],
            "support": n_both / n,
            "confidence": confidence,
            "lift": lift,
            "antecedent_count": n_ante,
            "consequent_count": n_cons,
            "itemset_count": n_both,
            "baskets": self.baskets,
        }

    def planted_rules(self) -> list[dict]:
        return [self._measures(rule.antecedent, rule.consequent) for rule in self.catalogue.rules]

    def noise_pairs(self) -> list[dict]:
        return [self._measures((a,), b) for a, b in combinations(self.noise_pair_items.tolist(), 2)]
