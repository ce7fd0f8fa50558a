"""Peer: cleaning and RFM with Polars' lazy engine (no FP-Growth in Polars)."""
from __future__ import annotations

import polars as pl

from bench.peers.common import NON_PRODUCT_CODES, parse_args, retail_files, step


def main() -> None:
    args = parse_args()
    files = [str(f) for f in retail_files(args.data)]
    with step("clean"):
        lines = (
            pl.scan_csv(files, infer_schema=False, truncate_ragged_lines=True, ignore_errors=True)
            .with_columns(pl.col("Quantity").cast(pl.Int64, strict=False),
                          pl.col("UnitPrice").cast(pl.Float64, strict=False),
                          pl.col("InvoiceDate").str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False))
            .filter(pl.col("CustomerID").is_not_null() & (pl.col("CustomerID") != "")
                    & ~pl.col("InvoiceNo").str.starts_with("C") & ~pl.col("InvoiceNo").str.starts_with("A")
                    & (pl.col("Quantity") > 0) & (pl.col("UnitPrice") > 0) & pl.col("InvoiceDate").is_not_null()
                    & ~pl.col("StockCode").is_in(NON_PRODUCT_CODES))
            .unique()
            .with_columns((pl.col("Quantity") * pl.col("UnitPrice")).alias("amount"))
            .collect()
        )
    with step("rfm"):
        as_of = lines["InvoiceDate"].max().date()
        rfm = (
            lines.group_by("CustomerID")
            .agg(pl.col("InvoiceDate").max().alias("last"), pl.col("InvoiceNo").n_unique().alias("frequency"),
                 pl.col("amount").sum().alias("monetary"))
            .with_columns(((pl.lit(as_of) - pl.col("last").dt.date()).dt.total_days() + 1).alias("recency_days"))
            # Quintiles by ordinal rank, as the other peers do.
            .with_columns(*(((pl.col(c).rank("ordinal") - 1) * 5 // pl.len() + 1).alias(f"{c}_score")
                            for c in ("recency_days", "frequency", "monetary")))
        )
        rfm.height


if __name__ == "__main__":
    main()
