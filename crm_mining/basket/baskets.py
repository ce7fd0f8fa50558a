"""Baskets: the item sets association mining counts, for the retail shop and for the bank.

A retail basket is one invoice (anonymous invoices included: they are real baskets); its
items are the distinct product ids, or the distinct product categories for the ``category``
level. A bank "basket" is one customer's product holdings (statement frequency of the
account, card type, loan with its status, standing-order categories, credit categories such
as pension). Every function sees only events before the as-of date.
"""
from __future__ import annotations

import datetime as dt
from typing import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

#: UCI Online Retail codes that are charges or adjustments, not products.
NON_PRODUCT_CODES = ("POST", "DOT", "M", "m", "D", "C2", "S", "B", "CRUK", "PADS",
                     "AMAZONFEE", "BANK CHARGES")


def _check_date(as_of: dt.date) -> Column:
    if not isinstance(as_of, dt.date):
        raise TypeError(f"as_of must be a datetime.date, got {type(as_of).__name__}")
    return F.lit(dt.datetime.combine(as_of, dt.time())).cast("timestamp")


def _require(df: DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; has {df.columns}")


def retail_lines_before(lines: DataFrame, *, as_of: dt.date, start: dt.date | None = None,
                        exclude_items: Sequence[str] = NON_PRODUCT_CODES,
                        include_anonymous: bool = True) -> DataFrame:
    """Sales lines usable for baskets: ts in [start, as_of), no returns, products only.

    Returns are excluded (``is_return`` true, or quantity <= 0), as refine flags them.

    Examples
    --------
    >>> sales = retail_lines_before(lines, as_of=dt.date(2011, 12, 10))  # doctest: +SKIP
    """
    _require(lines, ["invoice_id", "customer_key", "ts", "product_id", "quantity", "is_return"],
             "silver_retail_lines")
    keep = ((F.col("ts") < _check_date(as_of)) & ~F.coalesce(F.col("is_return"), F.lit(False))
            & (F.col("quantity") > 0) & F.col("product_id").isNotNull()
            & ~F.col("product_id").isin(list(exclude_items)))
    if start is not None:
        keep &= F.col("ts") >= _check_date(start)
    if not include_anonymous:
        keep &= F.col("customer_key").isNotNull()
    return lines.filter(keep)


def retail_baskets(lines: DataFrame, *, products: DataFrame | None = None,
                   level: str = "product", basket_col: str = "basket_id",
                   items_col: str = "items") -> DataFrame:
    """One row per invoice: ``basket_id`` and the distinct items (products or categories).

    Parameters
    ----------
    lines : sales lines (see :func:`retail_lines_before`).
    products : ``silver_products`` (needed for ``level='category'``).
    level : ``'product'`` or ``'category'``.

    Examples
    --------
    >>> retail_baskets(sales).first()  # doctest: +SKIP
    Row(basket_id='536365', items=['21730', '22752', ...])
    """
    if level not in ("product", "category"):
        raise ValueError(f"level must be 'product' or 'category', got {level!r}")
    item = F.col("product_id")
    if level == "category":
        if products is None:
            raise ValueError("level='category' needs the products table (silver_products)")
        lines = lines.join(F.broadcast(products.select("product_id", "category")
                                       .filter(F.col("category").isNotNull())), "product_id")
        item = F.col("category")
    return (lines.groupBy(F.col("invoice_id").alias(basket_col))
            .agg(F.array_sort(F.collect_set(item)).alias(items_col))
            .filter(F.size(items_col) > 0))


def customer_items(lines: DataFrame, *, products: DataFrame | None = None, level: str = "product",
                   item_col: str = "item") -> DataFrame:
    """Distinct (customer_key, item) pairs a known customer bought (anonymous lines dropped)."""
    if level == "category":
        if products is None:
            raise ValueError("level='category' needs the products table (silver_products)")
        lines = lines.join(F.broadcast(products.select("product_id", "category")), "product_id")
        item = F.col("category")
    else:
        item = F.col("product_id")
    return (lines.filter(F.col("customer_key").isNotNull() & item.isNotNull())
            .select("customer_key", item.alias(item_col)).distinct())


def bank_holdings(*, accounts: DataFrame, cards: DataFrame | None = None,
                  loans: DataFrame | None = None, orders: DataFrame | None = None,
                  transactions: DataFrame | None = None, as_of: dt.date,
                  credit_categories: Sequence[str] = ("pension",),
                  item_col: str = "item") -> DataFrame:
    """Distinct (customer_key, item) bank product holdings as of a date.

    Items read ``account:<frequency>``, ``card:<type>``, ``loan:<status_desc>``,
    ``order:<category>`` and ``credit:<category>`` (credit transactions of the given
    categories, e.g. pension). Accounts, cards and loans count when opened, issued or granted
    before ``as_of``; standing orders carry no date and count as held; transactions count
    when ``ts < as_of``.

    Examples
    --------
    >>> bank_holdings(accounts=acc, cards=cards, as_of=dt.date(1999, 1, 1))  # doctest: +SKIP
    """
    cut = _check_date(as_of)
    parts = [accounts.filter(F.col("opened_date") < cut.cast("date"))
             .select("customer_key", F.concat(F.lit("account:"), F.col("frequency")).alias(item_col))]
    if cards is not None:
        parts.append(cards.filter(F.col("issued_date") < cut.cast("date"))
                     .select("customer_key", F.concat(F.lit("card:"), F.col("card_type")).alias(item_col)))
    if loans is not None:
        parts.append(loans.filter(F.col("granted_date") < cut.cast("date"))
                     .select("customer_key", F.concat(F.lit("loan:"), F.col("status_desc")).alias(item_col)))
    if orders is not None:
        parts.append(orders.select("customer_key", F.concat(F.lit("order:"), F.col("category")).alias(item_col)))
    if transactions is not None and credit_categories:
        parts.append(transactions.filter((F.col("ts") < cut) & (F.col("direction") == "credit")
                                         & F.col("category").isin(list(credit_categories)))
                     .select("customer_key", F.concat(F.lit("credit:"), F.col("category")).alias(item_col)))
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part)
    return out.filter(F.col("customer_key").isNotNull() & F.col(item_col).isNotNull()).distinct()


def baskets_from_pairs(pairs: DataFrame, *, key_col: str = "customer_key", item_col: str = "item",
                       basket_col: str = "basket_id", items_col: str = "items") -> DataFrame:
    """Group (key, item) pairs into baskets: one row per key with its sorted distinct items."""
    return (pairs.groupBy(F.col(key_col).alias(basket_col))
            .agg(F.array_sort(F.collect_set(item_col)).alias(items_col)))
