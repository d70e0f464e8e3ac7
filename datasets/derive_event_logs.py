"""Derive the two event logs in datasets/ (no randomness; two runs give the same files).

- cdnow_sample_events.parquet: the CDNOW sample of Fader, Hardie & Lee (2005), 2,357
  customers who first bought in Q1 1997, one row per purchase record
  (subscriber_id, timestamp as date, event = "purchase", value in US dollars, cds).
  Source: CDNOW_sample.txt as distributed in the `lifetimes` package 0.11.3 (MIT),
  lifetimes/datasets/CDNOW_sample.txt; get it with
  `pip download lifetimes==0.11.3 --no-deps` and unzip the wheel.
- online_retail_events.parquet: one purchase event per invoice of the UCI Online Retail
  transactions (CC BY 4.0) for customers with an id: invoice lines with a positive
  quantity and price, summed per (customer, invoice); timestamp = invoice time,
  value = the invoice's total in pounds.

Usage: python datasets/derive_event_logs.py PATH/TO/CDNOW_sample.txt PATH/TO/online_retail.parquet
"""

import datetime
import pathlib
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

OUT = pathlib.Path(__file__).resolve().parent


def cdnow(src):
    rows = [line.split() for line in open(src) if line.strip()]
    ids = [int(r[1]) for r in rows]
    dates = [datetime.date(int(r[2][:4]), int(r[2][4:6]), int(r[2][6:8])) for r in rows]
    t = pa.table(
        {
            "subscriber_id": pa.array(ids, pa.int64()),
            "timestamp": pa.array(dates, pa.date32()),
            "event": pa.array(["purchase"] * len(rows)),
            "value": pa.array([float(r[4]) for r in rows], pa.float64()),
            "cds": pa.array([int(r[3]) for r in rows], pa.int32()),
        }
    )
    pq.write_table(t, OUT / "cdnow_sample_events.parquet", compression="zstd")


def retail(src):
    t = pq.read_table(src, columns=["InvoiceNo", "InvoiceDate", "Quantity", "UnitPrice", "CustomerID"])
    keep = pc.and_(
        pc.is_valid(t["CustomerID"]),
        pc.and_(pc.greater(t["Quantity"], 0), pc.greater(t["UnitPrice"], 0)),
    )
    t = t.filter(keep)
    t = t.append_column("line", pc.multiply(t["Quantity"], t["UnitPrice"]))
    g = t.group_by(["CustomerID", "InvoiceNo"]).aggregate([("InvoiceDate", "min"), ("line", "sum")])
    g = g.sort_by([("InvoiceDate_min", "ascending"), ("CustomerID", "ascending"), ("InvoiceNo", "ascending")])
    out = pa.table(
        {
            "subscriber_id": pc.cast(g["CustomerID"], pa.int64()),
            "timestamp": g["InvoiceDate_min"],
            "event": pa.array(["purchase"] * g.num_rows),
            "value": pc.round(g["line_sum"], 2),
            "invoice": g["InvoiceNo"],
        }
    )
    pq.write_table(out, OUT / "online_retail_events.parquet", compression="zstd")


if __name__ == "__main__":
    cdnow(sys.argv[1])
    retail(sys.argv[2])
