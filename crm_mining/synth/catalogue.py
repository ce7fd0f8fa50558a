"""The synthetic shop's product catalogue and the association rules planted in its baskets.

Products look like the UCI Online Retail ones: five-digit stock codes, some with a letter
suffix (``85123A``), upper-case gift-shop descriptions (a few with commas or a ``"`` so
that CSV quoting is exercised) and unit prices in pounds. A handful of products carry the
planted rules; every other product is a noise item, independent of everything else in
the basket. A few noise items are bestsellers: each goes into any clean basket with its
own fixed probability whatever the basket's size, so pairs of bestsellers have a lift of
about 1 (the truth's noise pairs). The long tail of noise items (heavy-tailed popularity)
fills each basket up to its size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .csvtext import csv_field

PRODUCT_COUNT = 3000

# Stock codes that are not products (postage, discounts, fees), as in the UCI data.
NON_PRODUCT_CODES = ("POST", "D", "M", "DOT", "BANK CHARGES")
NON_PRODUCT_DESCRIPTIONS = ("POSTAGE", "Discount", "Manual", "DOTCOM POSTAGE", "Bank Charges")
NON_PRODUCT_PRICE_CENTS = (1800, 1500, 250, 8500, 1500)

_COLOURS = ("WHITE", "RED", "PINK", "BLUE", "GREEN", "IVORY", "BLACK", "SILVER", "GOLD",
            "PASTEL", "VINTAGE", "RETRO", "SKY BLUE", "CREAM", "ANTIQUE")
_MOTIFS = ("HEART", "SPOTTY", "POLKADOT", "REGENCY", "PAISLEY", "STRIPE", "BIRD", "ROSE",
           "STAR", "DOILY", "CHRISTMAS", "BUNTING", "OWL", "SKULL", "LOVE", "ENGLISH ROSE")
_ITEMS = ("T-LIGHT HOLDER", "LANTERN", "CAKE STAND", "LUNCH BAG", "TEA CUP AND SAUCER",
          "PHOTO FRAME", "DOORMAT", "NAPKINS", "JAM JAR", "CHOPSTICKS", "HOT WATER BOTTLE",
          "PARASOL", "TISSUES", "BAKING CASES", "CANDLE", "COAT HANGER", "PURSE", "MUG",
          "SHOPPING BAG", "WALL CLOCK", "PLATE", "TRINKET BOX", "BUNTING", "CUSHION COVER",
          "STORAGE TIN", "NOTEBOOK", "WRAP", "GIFT BAG", "CHARM", "BELL")
_SUFFIXES = ("SET OF 3", "SET OF 6", "LARGE", "SMALL", "ASSORTED", "PACK OF 12")


@dataclass(frozen=True)
class PlantedRule:
    """If a basket holds every antecedent item, it holds the consequent with high probability.

    ``trigger_probability`` is the chance that a basket gets the antecedent items as a
    bundle; given the bundle, the consequent is added with ``consequent_probability``.
    These are the intended values only: the truth file reports the exact support,
    confidence and lift counted from the baskets actually written.
    """

    antecedent: tuple[int, ...]
    consequent: int
    trigger_probability: float
    consequent_probability: float


@dataclass(frozen=True)
class Catalogue:
    """Products by index: stock code, description, unit price, and noise popularity."""

    stock_codes: tuple[str, ...]
    descriptions: tuple[str, ...]
    price_cents: np.ndarray
    rules: tuple[PlantedRule, ...]
    rule_items: np.ndarray            # product indices used by the planted rules
    noise_items: np.ndarray           # every other product index
    noise_slots: np.ndarray           # lookup table: noise product per equally likely slot
    tail_slots: np.ndarray            # the same without the bestsellers
    bestsellers: np.ndarray           # most popular noise products, most popular first
    bestseller_probability: np.ndarray  # chance that a clean basket holds each bestseller
    rule_item_background_probability: float

    @property
    def size(self) -> int:
        return len(self.stock_codes)

    def code_description_fields(self) -> list[str]:
        """``StockCode,Description`` rendered as two CSV fields per product."""
        return [f"{csv_field(c)},{csv_field(d)}" for c, d in zip(self.stock_codes, self.descriptions)]

    def non_product_fields(self) -> list[str]:
        return [f"{csv_field(c)},{csv_field(d)}" for c, d in zip(NON_PRODUCT_CODES, NON_PRODUCT_DESCRIPTIONS)]

    def draw_noise(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """Noise products by popularity (independent draws, one table lookup each)."""
        return self.noise_slots[rng.integers(0, len(self.noise_slots), count)]

    def draw_tail(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """Noise products other than the bestsellers, by popularity."""
        return self.tail_slots[rng.integers(0, len(self.tail_slots), count)]

    def most_popular_noise(self, count: int) -> np.ndarray:
        """The first ``count`` bestsellers."""
        return self.bestsellers[:count]


def _stock_codes(rng: np.random.Generator, count: int) -> list[str]:
    numbers = rng.choice(np.arange(10002, 90000), size=count, replace=False)
    suffixed = rng.random(count) < 0.15
    letters = rng.choice(list("ABCDEFGLMNPS"), size=count)
    return [f"{n}{l}" if s else str(n) for n, s, l in zip(numbers, suffixed, letters)]


def _descriptions(rng: np.random.Generator, count: int) -> list[str]:
    colours = rng.choice(_COLOURS, count)
    motifs = rng.choice(_MOTIFS, count)
    items = rng.choice(_ITEMS, count)
    suffixes = rng.choice(_SUFFIXES, count)
    style = rng.random(count)
    out = []
    for colour, motif, item, suffix, s in zip(colours, motifs, items, suffixes, style):
        if s < 0.06:      # a comma inside the description: must be quoted in CSV
            out.append(f"{motif} {item}, {suffix}")
        elif s < 0.08:    # an inch mark: the quote itself must be escaped
            out.append(f'{colour} {item} 7" {suffix}')
        else:
            out.append(f"{colour} {motif} {item}")
    return out


def _prices(rng: np.random.Generator, count: int) -> np.ndarray:
    # Log-normal around £2.50, like the UCI catalogue (most items below £10, a few up to ~£50).
    pounds = np.exp(rng.normal(np.log(2.5), 0.8, count))
    return np.clip(np.round(pounds * 100), 19, 5000).astype(np.int64)


def _planted_rules(rule_items: np.ndarray) -> tuple[PlantedRule, ...]:
    a = [int(i) for i in rule_items]
    return (
        PlantedRule((a[0],), a[1], 0.050, 0.80),
        PlantedRule((a[2],), a[3], 0.040, 0.70),
        PlantedRule((a[4], a[5]), a[6], 0.030, 0.85),   # two-item antecedent
        PlantedRule((a[7],), a[8], 0.025, 0.60),
    )


RULE_ITEM_COUNT = 9
BESTSELLER_COUNT = 20
BESTSELLER_TOP_PROBABILITY = 0.15
POPULARITY_SLOTS = 1 << 18


def _popularity_slots(weights: np.ndarray) -> np.ndarray:
    """Slots per product in a draw table of POPULARITY_SLOTS entries: proportional to the
    weights, at least one each (largest remainders get the leftover slots)."""
    spare = POPULARITY_SLOTS - len(weights)
    exact = weights / weights.sum() * spare
    slots = 1 + np.floor(exact).astype(np.int64)
    leftover = POPULARITY_SLOTS - slots.sum()
    slots[np.argsort(-(exact - np.floor(exact)), kind="stable")[:leftover]] += 1
    return slots


def build_catalogue(rng: np.random.Generator, product_count: int = PRODUCT_COUNT) -> Catalogue:
    """A deterministic catalogue for the generator's seed."""
    codes = _stock_codes(rng, product_count)
    descriptions = _descriptions(rng, product_count)
    prices = _prices(rng, product_count)
    order = rng.permutation(product_count)
    rule_items = order[:RULE_ITEM_COUNT]
    noise_items = np.sort(order[RULE_ITEM_COUNT:])
    # Heavy-tailed (Zipf-like) popularity over noise items, in a random order of products.
    rank = rng.permutation(len(noise_items))
    weights = 1.0 / (rank + 25.0) ** 1.1
    slots = _popularity_slots(weights)
    bestseller_rank = np.arange(BESTSELLER_COUNT)
    bestsellers = noise_items[np.argsort(rank)[:BESTSELLER_COUNT]]
    tail = rank >= BESTSELLER_COUNT
    return Catalogue(
        stock_codes=tuple(codes),
        descriptions=tuple(descriptions),
        price_cents=prices,
        rules=_planted_rules(rule_items),
        rule_items=rule_items,
        noise_items=noise_items,
        noise_slots=np.repeat(noise_items, slots).astype(np.int32),
        tail_slots=np.repeat(noise_items[tail], _popularity_slots(weights[tail])).astype(np.int32),
        bestsellers=bestsellers,
        bestseller_probability=BESTSELLER_TOP_PROBABILITY / (bestseller_rank + 1.0) ** 0.4,
        rule_item_background_probability=0.004,
    )
