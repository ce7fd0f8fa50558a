"""Retail customers: planted behavioural segments and their purchase process.

Each customer belongs to one segment, which sets how often they buy, how big their baskets
are, how many units per line, and whether they lapse. Purchases follow the BG/NBD story:
while alive a customer buys as a Poisson process (rates gamma-distributed across
customers), and after each purchase drops out with a (beta-distributed) probability.
Planted churners also stop at a lapse date, and their purchase rate already declines
linearly over the ``DECLINE_DAYS`` before it, so their fading is visible in the data.

Times are in days since the start of the retail window (float, ``[0, WINDOW_DAYS)``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RETAIL_START = np.datetime64("2010-12-01")
RETAIL_LAST_DAY = np.datetime64("2011-12-09")
WINDOW_DAYS = int((RETAIL_LAST_DAY - RETAIL_START).astype(int)) + 1

# Churners' purchase rate falls linearly to FADED_RATE_SHARE over this many days before lapsing.
DECLINE_DAYS = 90.0
FADED_RATE_SHARE = 0.15

COUNTRIES = ("United Kingdom", "Germany", "France", "EIRE", "Spain", "Netherlands", "Belgium",
             "Switzerland", "Portugal", "Australia", "Norway", "Italy", "Channel Islands",
             "Finland", "Sweden", "Denmark", "Austria", "Japan", "Poland", "Cyprus")
_COUNTRY_WEIGHTS = np.array([880, 22, 20, 14, 7, 6, 6, 5, 4, 3, 3, 3, 2, 2, 2, 2, 2, 1, 1, 1], dtype=float)
COUNTRY_WEIGHTS = _COUNTRY_WEIGHTS / _COUNTRY_WEIGHTS.sum()


@dataclass(frozen=True)
class Segment:
    """One planted behavioural segment."""

    name: str
    description: str
    share: float
    first_purchase_days: tuple[float, float]   # uniform window of the first purchase
    purchases_per_year: float                  # mean of the gamma-distributed rate
    rate_shape: float                          # gamma shape: smaller = more heterogeneous
    dropout_probability: float                 # mean of the beta-distributed dropout
    basket_weight: float                       # relative lines per invoice
    pack_sizes: tuple[int, ...]                # units per line before the spend multiplier
    churner_share: float                       # share of planted lapsing customers
    lapse_days: tuple[float, float]            # uniform window of the planted lapse date


SEGMENTS: tuple[Segment, ...] = (
    Segment("champion", "frequent, recent, high-value buyers", 0.18, (0, 30), 45.0, 25.0,
            0.001, 1.0, (2, 3, 4, 6, 8, 12), 0.03, (250, 340)),
    Segment("occasional", "rare, low-spend buyers with small baskets", 0.28, (0, 150), 6.0, 10.0,
            0.01, 0.45, (1, 1, 2, 2, 3), 0.0, (0, 0)),
    Segment("wholesaler", "big baskets of bulk quantities, regular", 0.12, (0, 45), 10.0, 20.0,
            0.002, 2.5, (12, 24, 36, 48), 0.03, (250, 340)),
    Segment("new", "first purchase in the last seven weeks, sizeable first orders", 0.20,
            (WINDOW_DAYS - 50, WINDOW_DAYS - 3), 8.0, 10.0, 0.01, 1.5, (12, 24, 24, 36), 0.0, (0, 0)),
    Segment("lapsed", "bought regularly early on, then faded and stopped", 0.22, (0, 45), 20.0, 10.0,
            0.005, 1.2, (4, 6, 8, 12), 1.0, (90, 180)),
)
SEGMENT_NAMES = tuple(s.name for s in SEGMENTS)

# Customer-level heavy tails: units per line and lines per invoice vary within a segment.
SPEND_MULTIPLIER_SIGMA = 0.3
BASKET_FACTOR_SIGMA = 0.2


@dataclass
class CustomerBlock:
    """Planted facts of one chunk of customers (arrays indexed by customer within the chunk)."""

    segment: np.ndarray
    first_purchase: np.ndarray
    purchases_per_day: np.ndarray
    dropout_probability: np.ndarray
    spend_multiplier: np.ndarray
    basket_factor: np.ndarray
    planted_lapse: np.ndarray        # lapse day, +inf when not a planted churner
    country: np.ndarray

    @property
    def size(self) -> int:
        return len(self.segment)


@dataclass
class Purchases:
    """Purchase times of a chunk, sorted by customer then time, with churn outcomes."""

    customer: np.ndarray
    day: np.ndarray
    churn_day: np.ndarray            # +inf for customers still alive at the window end
    churn_cause: np.ndarray          # 0 none, 1 planted lapse, 2 BG/NBD dropout


CHURN_CAUSES = ("", "lapse", "dropout")


def _segment_column(segment: np.ndarray, values) -> np.ndarray:
    return np.asarray(values, dtype=float)[segment]


def draw_customers(rng: np.random.Generator, count: int) -> CustomerBlock:
    """Draw segment membership and the per-customer parameters of the purchase process."""
    shares = np.array([s.share for s in SEGMENTS])
    segment = rng.choice(len(SEGMENTS), size=count, p=shares / shares.sum())
    lo = _segment_column(segment, [s.first_purchase_days[0] for s in SEGMENTS])
    hi = _segment_column(segment, [s.first_purchase_days[1] for s in SEGMENTS])
    first = lo + rng.random(count) * (hi - lo)
    mean_rate = _segment_column(segment, [s.purchases_per_year for s in SEGMENTS]) / 365.0
    shape = _segment_column(segment, [s.rate_shape for s in SEGMENTS])
    rate = rng.gamma(shape, mean_rate / shape)
    # Beta(1, b) with mean p: most customers are loyal, a few drop out quickly.
    p_mean = _segment_column(segment, [s.dropout_probability for s in SEGMENTS])
    dropout = rng.beta(1.0, 1.0 / p_mean - 1.0)
    churner = rng.random(count) < _segment_column(segment, [s.churner_share for s in SEGMENTS])
    lapse_lo = _segment_column(segment, [s.lapse_days[0] for s in SEGMENTS])
    lapse_hi = _segment_column(segment, [s.lapse_days[1] for s in SEGMENTS])
    lapse = np.where(churner, lapse_lo + rng.random(count) * (lapse_hi - lapse_lo), np.inf)
    return CustomerBlock(
        segment=segment,
        first_purchase=first,
        purchases_per_day=rate,
        dropout_probability=dropout,
        spend_multiplier=np.exp(rng.normal(0.0, SPEND_MULTIPLIER_SIGMA, count)),
        basket_factor=np.exp(rng.normal(0.0, BASKET_FACTOR_SIGMA, count)),
        planted_lapse=lapse,
        country=rng.choice(len(COUNTRIES), size=count, p=COUNTRY_WEIGHTS),
    )


def _rate_weight(day: np.ndarray, lapse: np.ndarray) -> np.ndarray:
    """Share of the full purchase rate at a time: 1, then a linear fade before the lapse."""
    fade = np.clip((lapse - day) / DECLINE_DAYS, 0.0, 1.0)
    return FADED_RATE_SHARE + (1.0 - FADED_RATE_SHARE) * fade


def simulate_purchases(rng: np.random.Generator, block: CustomerBlock) -> Purchases:
    """Purchase days of every customer: first purchase, then thinned Poisson repeats, then dropout."""
    n = block.size
    active_until = np.minimum(block.planted_lapse, float(WINDOW_DAYS))
    exposure = np.maximum(active_until - block.first_purchase, 0.0)
    candidates = rng.poisson(block.purchases_per_day * exposure)
    owner = np.repeat(np.arange(n), candidates)
    day = block.first_purchase[owner] + rng.random(len(owner)) * exposure[owner]
    # Thinning a homogeneous process by the rate profile gives the fading inhomogeneous one.
    kept = rng.random(len(owner)) < _rate_weight(day, block.planted_lapse[owner])
    owner = np.concatenate([np.arange(n), owner[kept]])
    day = np.concatenate([block.first_purchase, day[kept]])
    order = np.lexsort((day, owner))
    owner, day = owner[order], day[order]

    counts = np.bincount(owner, minlength=n)
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(owner)) - starts[owner]
    # BG/NBD dropout: after each purchase the customer leaves with probability p, so the
    # number of purchases made before leaving is geometric (at least the first one).
    purchases_until_dropout = rng.geometric(block.dropout_probability)
    alive = rank < purchases_until_dropout[owner]
    owner, day = owner[alive], day[alive]

    # Every customer keeps at least the first purchase, so each has a last purchase.
    dropped = purchases_until_dropout <= counts
    kept_counts = np.bincount(owner, minlength=n)
    last_purchase_day = day[np.cumsum(kept_counts) - 1]
    dropout_day = np.where(dropped, last_purchase_day, np.inf)
    planted = np.isfinite(block.planted_lapse)
    churn_day = np.where(dropped, dropout_day, np.where(planted, block.planted_lapse, np.inf))
    cause = np.where(dropped, 2, np.where(planted, 1, 0))
    return Purchases(customer=owner, day=day, churn_day=churn_day, churn_cause=cause)
