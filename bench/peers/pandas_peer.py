"""Peer: the workload as a data scientist writes it on one machine.

pandas for cleaning and RFM, mlxtend for FP-Growth, scikit-learn for K-Means and gradient
boosting, lifetimes for BG/NBD + Gamma-Gamma.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.peers.common import NON_PRODUCT_CODES, parse_args, retail_files, step


def clean(df: pd.DataFrame) -> pd.DataFrame:
    df = df.dropna(subset=["CustomerID"])
    df = df[~df["InvoiceNo"].astype(str).str.startswith(("C", "A"))]
    df["Quantity"] = pd.to_numeric(df["Quantity"], errors="coerce")
    df["UnitPrice"] = pd.to_numeric(df["UnitPrice"], errors="coerce")
    df["InvoiceDate"] = pd.to_datetime(df["InvoiceDate"], errors="coerce", format="mixed")
    df = df[(df["Quantity"] > 0) & (df["UnitPrice"] > 0) & df["InvoiceDate"].notna()]
    df = df[~df["StockCode"].isin(NON_PRODUCT_CODES)].drop_duplicates()
    return df.assign(amount=df["Quantity"] * df["UnitPrice"])


def rfm(df: pd.DataFrame) -> pd.DataFrame:
    as_of = df["InvoiceDate"].max().normalize() + pd.Timedelta(days=1)
    g = df.groupby("CustomerID").agg(last=("InvoiceDate", "max"), frequency=("InvoiceNo", "nunique"),
                                     monetary=("amount", "sum"))
    g["recency_days"] = (as_of - g["last"].dt.normalize()).dt.days
    g["r_score"] = pd.qcut(g["recency_days"].rank(method="first", ascending=False), 5, labels=False) + 1
    g["f_score"] = pd.qcut(g["frequency"].rank(method="first"), 5, labels=False) + 1
    g["m_score"] = pd.qcut(g["monetary"].rank(method="first"), 5, labels=False) + 1
    return g


def main() -> None:
    args = parse_args()
    with step("read"):
        raw = pd.concat([pd.read_csv(f, dtype=str, on_bad_lines="skip") for f in retail_files(args.data)])
    with step("clean"):
        lines = clean(raw)
        del raw
    with step("rfm"):
        scores = rfm(lines)
    with step("basket"):
        from mlxtend.frequent_patterns import association_rules, fpgrowth
        from mlxtend.preprocessing import TransactionEncoder

        baskets = lines.groupby("InvoiceNo")["StockCode"].apply(lambda s: sorted(set(s))).tolist()
        encoder = TransactionEncoder()
        onehot = pd.DataFrame.sparse.from_spmatrix(encoder.fit(baskets).transform(baskets, sparse=True),
                                                   columns=encoder.columns_)
        itemsets = fpgrowth(onehot, min_support=args.min_support, use_colnames=True)
        if len(itemsets):
            association_rules(itemsets, metric="confidence", min_threshold=0.2)
    with step("segment"):
        from sklearn.cluster import KMeans
        from sklearn.metrics import silhouette_score
        from sklearn.preprocessing import StandardScaler

        x = StandardScaler().fit_transform(np.log1p(scores[["recency_days", "frequency", "monetary"]].clip(lower=0)))
        sample = np.random.default_rng(0).choice(len(x), size=min(len(x), 20000), replace=False)
        for k in range(2, 9):
            labels = KMeans(n_clusters=k, n_init=4, random_state=0).fit_predict(x)
            silhouette_score(x[sample], labels[sample])
    with step("value"):
        from lifetimes import BetaGeoFitter, GammaGammaFitter
        from lifetimes.utils import summary_data_from_transaction_data

        summary = summary_data_from_transaction_data(lines, "CustomerID", "InvoiceDate", "amount", freq="D")
        BetaGeoFitter(penalizer_coef=0.0).fit(summary["frequency"], summary["recency"], summary["T"])
        repeat = summary[(summary["frequency"] > 0) & (summary["monetary_value"] > 0)]
        GammaGammaFitter(penalizer_coef=0.0).fit(repeat["frequency"], repeat["monetary_value"])
    with step("churn"):
        from sklearn.ensemble import GradientBoostingClassifier

        cutoff = lines["InvoiceDate"].max() - pd.Timedelta(days=90)
        before = lines[lines["InvoiceDate"] < cutoff]
        after = set(lines.loc[lines["InvoiceDate"] >= cutoff, "CustomerID"])
        feats = rfm(before)[["recency_days", "frequency", "monetary"]]
        label = (~feats.index.isin(after)).astype(int)
        GradientBoostingClassifier(random_state=0).fit(feats.values, label)


if __name__ == "__main__":
    main()
