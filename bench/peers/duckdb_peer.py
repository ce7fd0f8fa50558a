"""Peer: cleaning and RFM in DuckDB, one SQL statement each over the CSV files."""
from __future__ import annotations

import duckdb

from bench.peers.common import NON_PRODUCT_CODES, parse_args, retail_files, step


def main() -> None:
    args = parse_args()
    con = duckdb.connect()
    files = [str(f) for f in retail_files(args.data)]
    codes = ", ".join(f"'{c}'" for c in NON_PRODUCT_CODES)
    with step("clean"):
        con.execute(f"""
            CREATE TABLE lines AS
            SELECT DISTINCT InvoiceNo, StockCode, Description, q AS Quantity, ts AS InvoiceDate,
                   p AS UnitPrice, CustomerID, Country, q * p AS amount
            FROM (SELECT *, TRY_CAST(Quantity AS BIGINT) q, TRY_CAST(UnitPrice AS DOUBLE) p,
                         TRY_CAST(InvoiceDate AS TIMESTAMP) ts
                  FROM read_csv({files}, all_varchar = true, header = true, ignore_errors = true))
            WHERE CustomerID IS NOT NULL AND CustomerID <> '' AND NOT starts_with(InvoiceNo, 'C')
              AND NOT starts_with(InvoiceNo, 'A') AND q > 0 AND p > 0 AND ts IS NOT NULL
              AND StockCode NOT IN ({codes})""")
    with step("rfm"):
        con.execute("""
            CREATE TABLE rfm AS
            WITH c AS (SELECT CustomerID,
                              date_diff('day', CAST(max(InvoiceDate) AS DATE),
                                        (SELECT CAST(max(InvoiceDate) AS DATE) + 1 FROM lines)) AS recency_days,
                              count(DISTINCT InvoiceNo) AS frequency, sum(amount) AS monetary
                       FROM lines GROUP BY CustomerID)
            SELECT *, ntile(5) OVER (ORDER BY recency_days DESC) AS r_score,
                      ntile(5) OVER (ORDER BY frequency) AS f_score,
                      ntile(5) OVER (ORDER BY monetary) AS m_score
            FROM c""")
        con.execute("SELECT count(*) FROM rfm").fetchone()


if __name__ == "__main__":
    main()
