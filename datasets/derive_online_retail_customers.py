#!/usr/bin/env python3
"""Derive a per-customer (RFM-style) feature table from UCI Online Retail.

Input  (read-only): ../shared/datasets/online_retail/online_retail.parquet
        541,909 invoice lines, 2010-12-01 .. 2011-12-09, columns
        InvoiceNo, StockCode, Description (str), Quantity (double),
        InvoiceDate (timestamp[us]), UnitPrice (double),
        CustomerID (double, null on 135,080 lines), Country (str).
Output: datasets/online_retail_customers.parquet (next to this script),
        one row per non-null CustomerID (4,372 rows), sorted by id,
        pyarrow, snappy, one row group.

Regenerate (from the repository root):
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
        .venv/bin/python datasets/derive_online_retail_customers.py
Optional arguments: --input PATH --output PATH.

Definitions (all on lines that have a CustomerID; lines without one are
dropped first):
  * A *cancelled* line/invoice is one whose InvoiceNo starts with "C".
    Every other line is a *purchase* line. (In this data every purchase line
    that has a CustomerID has Quantity > 0 and UnitPrice >= 0; the "A..."
    bad-debt adjustment invoices have no CustomerID.)
  * Reference date REF = 2011-12-10 00:00:00, the day after the last invoice.
  * Day counts are exact elapsed time, (REF - timestamp) / 24 h, so they are
    fractional (e.g. a purchase at 2011-12-09 12:00 gives 0.5).
  * Non-product StockCodes (POST, M, DOT, BANK CHARGES, ...) and exact
    duplicate lines are kept as they are in the source: no cleaning beyond
    what is described here.

Columns:
  subscriber_id      int64   CustomerID
  recency_days       float64 REF - last purchase timestamp; customers with only
                             cancelled invoices: REF - last invoice of any kind
  frequency          int64   distinct purchase InvoiceNo
  monetary           float64 sum(Quantity*UnitPrice) over purchase lines,
                             clipped below at 0
  tenure_days        float64 REF - first invoice timestamp (any kind)
  avg_basket_value   float64 monetary / max(frequency, 1)
  distinct_products  int64   distinct StockCode over purchase lines
  items_per_invoice  float64 sum(Quantity) over purchase lines / max(frequency, 1)
  return_rate        float64 distinct cancelled InvoiceNo / distinct InvoiceNo
  active_months      int64   distinct calendar months (YYYY-MM) with a purchase
  is_uk              bool    country == "United Kingdom"
  country            string  the customer's most frequent Country: most distinct
                             invoices, ties broken by most lines, then by name
                             (only 8 customers have more than one country)

Customers with only cancelled invoices (33) get frequency 0, monetary 0,
avg_basket_value 0, distinct_products 0, items_per_invoice 0, active_months 0,
return_rate 1.

Deterministic: no randomness; output is sorted by subscriber_id.

Source data: UCI Machine Learning Repository, "Online Retail", CC BY 4.0.
Cite: Chen, D., Sain, S. L., & Guo, K. (2012). Data mining for the online
retail industry: A case study of RFM model-based customer segmentation using
data mining. Journal of Database Marketing & Customer Strategy Management,
19(3), 197-208.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
DEFAULT_INPUT = Path("../shared/datasets/online_retail/online_retail.parquet")
DEFAULT_OUTPUT = HERE / "online_retail_customers.parquet"
REF = pd.Timestamp("2011-12-10 00:00:00")
DAY = pd.Timedelta(days=1)

SCHEMA = pa.schema(
    [
        ("subscriber_id", pa.int64()),
        ("recency_days", pa.float64()),
        ("frequency", pa.int64()),
        ("monetary", pa.float64()),
        ("tenure_days", pa.float64()),
        ("avg_basket_value", pa.float64()),
        ("distinct_products", pa.int64()),
        ("items_per_invoice", pa.float64()),
        ("return_rate", pa.float64()),
        ("active_months", pa.int64()),
        ("is_uk", pa.bool_()),
        ("country", pa.string()),
    ]
)


def derive(src: pd.DataFrame) -> pd.DataFrame:
    df = src.loc[src["CustomerID"].notna(),
                 ["InvoiceNo", "StockCode", "Quantity", "InvoiceDate",
                  "UnitPrice", "CustomerID", "Country"]].copy()
    ids = df["CustomerID"].to_numpy()
    assert np.all(ids == np.floor(ids)), "non-integer CustomerID"
    df["cid"] = ids.astype(np.int64)
    df["cancelled"] = df["InvoiceNo"].astype(str).str.startswith("C")
    df["amount"] = df["Quantity"] * df["UnitPrice"]
    df["month"] = df["InvoiceDate"].dt.to_period("M")

    every = df.groupby("cid", sort=True)
    out = pd.DataFrame(index=every.size().index)
    out.index.name = "cid"

    first_any = every["InvoiceDate"].min()
    last_any = every["InvoiceDate"].max()
    n_inv = every["InvoiceNo"].nunique()
    n_cancel = df.loc[df["cancelled"]].groupby("cid")["InvoiceNo"].nunique()

    buy = df.loc[~df["cancelled"]].groupby("cid")
    last_buy = buy["InvoiceDate"].max()
    freq = buy["InvoiceNo"].nunique()
    monetary = buy["amount"].sum()
    qty = buy["Quantity"].sum()
    products = buy["StockCode"].nunique()
    months = buy["month"].nunique()

    last_for_recency = last_buy.reindex(out.index).fillna(last_any)
    out["recency_days"] = (REF - last_for_recency) / DAY
    out["frequency"] = freq.reindex(out.index, fill_value=0).astype(np.int64)
    out["monetary"] = monetary.reindex(out.index, fill_value=0.0).clip(lower=0.0)
    out["tenure_days"] = (REF - first_any) / DAY
    denom = out["frequency"].clip(lower=1).astype(np.float64)
    out["avg_basket_value"] = out["monetary"] / denom
    out["distinct_products"] = products.reindex(out.index, fill_value=0).astype(np.int64)
    out["items_per_invoice"] = qty.reindex(out.index, fill_value=0.0) / denom
    out["return_rate"] = (n_cancel.reindex(out.index, fill_value=0)
                          / n_inv).astype(np.float64)
    out["active_months"] = months.reindex(out.index, fill_value=0).astype(np.int64)

    # Most frequent country: most distinct invoices, then most lines, then name.
    cc = (df.groupby(["cid", "Country"], sort=True)
            .agg(inv=("InvoiceNo", "nunique"), lines=("InvoiceNo", "size"))
            .reset_index()
            .sort_values(["cid", "inv", "lines", "Country"],
                         ascending=[True, False, False, True], kind="mergesort")
            .drop_duplicates("cid", keep="first")
            .set_index("cid")["Country"])
    out["country"] = cc.reindex(out.index).astype(str)
    out["is_uk"] = out["country"] == "United Kingdom"

    out = out.reset_index().rename(columns={"cid": "subscriber_id"})
    out = out.sort_values("subscriber_id", kind="mergesort").reset_index(drop=True)
    return out[[f.name for f in SCHEMA]]


def check(out: pd.DataFrame) -> None:
    assert out["subscriber_id"].is_unique and out["subscriber_id"].is_monotonic_increasing
    for f in SCHEMA:
        assert out[f.name].notna().all(), f.name
        if pa.types.is_floating(f.type):
            assert np.isfinite(out[f.name].to_numpy()).all(), f.name
    assert out["return_rate"].between(0.0, 1.0).all()
    assert (out["recency_days"] >= 0).all() and (out["tenure_days"] >= out["recency_days"]).all()
    assert (out["monetary"] >= 0).all()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = ap.parse_args()

    src = pq.read_table(args.input).to_pandas()
    out = derive(src)
    check(out)
    table = pa.Table.from_pandas(out, schema=SCHEMA, preserve_index=False)
    table = table.replace_schema_metadata(None)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.output, compression="snappy",
                   row_group_size=max(len(out), 1))
    print(f"wrote {args.output}: {table.num_rows} rows x {table.num_columns} cols")


if __name__ == "__main__":
    main()
