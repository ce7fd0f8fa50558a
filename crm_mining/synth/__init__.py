"""Synthetic data generator: a retail shop (UCI Online Retail CSV), a bank (PKDD'99 Berka
``.asc`` tables), the loyalty-card links between them, and the truth of what was planted.

Needs only numpy, pandas and pyarrow (no Spark). See :func:`generate`; from a shell,
``python -m crm_mining.synth --customers N --seed S --out DIR``.

Output layout under ``out_dir``:

- ``retail/part-NNNNN.csv``: one file per chunk of customers; UCI header
  ``InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country``;
  dates ``YYYY-MM-DD HH:MM:SS`` in 2010-12-01 .. 2011-12-09; CustomerID an integer from
  12346 (empty when missing); UnitPrice with two decimals; cancellations ``C``-prefixed.
- ``berka/{account,client,disp,card,loan,order,trans,district}.asc``: the real headers,
  ``;``-separated, strings quoted, CRLF; dates ``YYMMDD`` in 1993-01-01 .. 1998-12-31.
- ``link/customer_link.csv``: ``CustomerID,client_id``.
- ``truth/customers.csv``: ``CustomerID, segment, is_churner, churn_date, churn_cause,
  first_purchase_date, purchases_per_year, dropout_probability, spend_multiplier,
  clean_invoices, clean_spend, country, client_id``.
- ``truth/bank_clients.csv``: ``client_id, account_id, disp_type, is_dormant,
  dormant_since, CustomerID``.
- ``truth/truth.json``: ``version, parameters, retail_window, bank_window, files, counts,
  segments, top20_share_of_clean_spend, basket_definition, association_rules,
  noise_pairs, dirt, bank_dirt, bank_dormancy, churn`` (what :func:`generate` returns).
"""
from .generator import generate

__all__ = ["generate"]
