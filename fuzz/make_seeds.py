"""Write the fuzz targets' seed inputs (small, valid or nearly valid files) into
fuzz/seeds/<target>/. Run from the repository root with a Python that has pyarrow:
    .venv/bin/python fuzz/make_seeds.py
The seeds are committed; libFuzzer mutates them (a valid file reaches far deeper than
random bytes)."""

import datetime as dt
import decimal
import io
import json
import pathlib
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parent
SEEDS = ROOT / "seeds"
BIN = ROOT.parent / "target" / "release" / "microseg"


def parquet_bytes(table, **kw):
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)
    return buf.getvalue()


def put(target, name, data, prefix=b""):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(prefix + data)


def tables():
    n = 12
    yield "floats", pa.table({"subscriber_id": list(range(n)), "spend": [float(i % 5) for i in range(n)],
                               "visits": pa.array([i % 3 for i in range(n)], pa.float32())}), {}
    yield "types", pa.table({
        "subscriber_id": pa.array([f"s{i}" for i in range(n)]),
        "orders": pa.array([i for i in range(n)], pa.int32()),
        "flag": pa.array([i % 2 == 0 for i in range(n)]),
        "price": pa.array([decimal.Decimal(i) / 4 for i in range(n)], pa.decimal128(9, 2)),
        "small": pa.array([i % 4 for i in range(n)], pa.uint8()),
        "channel": pa.array(["email", "sms"] * (n // 2)),
    }), {"compression": "snappy"}
    yield "nulls", pa.table({"a": [None if i == 3 else float(i) for i in range(n)],
                              "b": [float("nan") if i == 5 else 1.0 for i in range(n)]}), {"compression": "zstd"}
    emb = pa.FixedSizeListArray.from_arrays(pa.array([float(i % 7) for i in range(n * 4)], pa.float32()), 4)
    yield "embedding", pa.table({"subscriber_id": list(range(n)), "emb": emb, "x": [1.0] * n}), {"compression": "lz4"}
    yield "dictionary", pa.table({"x": pa.array([1.0, 2.0, 1.0, 2.0] * 3), "y": list(range(n))}), {
        "use_dictionary": True, "row_group_size": 5, "compression": "gzip"}


def main():
    # parquet_features: a choice byte, then the file.
    for i, (name, t, kw) in enumerate(tables()):
        put("parquet_features", name, parquet_bytes(t, **kw), bytes([i * 37 % 256]))
    if BIN.exists():
        out = ROOT / "generated.parquet"
        subprocess.run([BIN, "generate", "--rows", "24", "--dims", "3", "--clusters", "2", "--out", out,
                        "--force", "--quiet"], check=True)
        put("parquet_features", "generated", out.read_bytes(), b"\x04")
        out.unlink()
    # arrow_features: arbitrary bytes drive the table builder.
    for i in range(4):
        put("arrow_features", f"bytes{i}", bytes((j * 31 + i * 7) % 256 for j in range(64 + 64 * i)))
    # init_centroids: a choice byte (dim in bits 0-2, format in bits 3-4), then the file.
    put("init_centroids", "csv", b"1,2\n3,4\n", bytes([1 | 0 << 3]))
    put("init_centroids", "txt", b" 1.5 , -2e3\n\n0,0\n", bytes([1 | 3 << 3]))
    put("init_centroids", "parquet", parquet_bytes(pa.table({"a": [0.0, 1.0], "b": [2.0, 3.0]})), bytes([1 | 1 << 3]))
    # model_json and init_centroids from a real model.
    if BIN.exists():
        data = ROOT / "m.parquet"
        pq.write_table(pa.table({"spend": [float(i % 9) for i in range(60)], "visits": [float(i % 4) for i in range(60)]}), data)
        for method in ("kmeans", "gmm"):
            model = ROOT / f"{method}.json"
            subprocess.run([BIN, "fit", data, "--k", "3", "--method", method, "--model", model, "--force", "--quiet"],
                           check=True)
            text = model.read_bytes()
            put("model_json", method, text)
            put("init_centroids", f"model-{method}", text, bytes([1 | 2 << 3]))
            model.unlink()
        data.unlink()
    # event_reader: a choice byte, then an event log.
    t0 = dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc)
    rows = [(1, 0, "send"), (1, 1, "open"), (1, 2, "click"), (1, 3, "purchase"), (2, 0, "send"), (2, 5, "purchase"),
            (2, 9, "purchase"), (3, 1, "unsubscribe"), (3, 2, "visit")]
    events = pa.table({
        "subscriber_id": [r[0] for r in rows],
        "timestamp": pa.array([t0 + dt.timedelta(days=r[1] * 10, hours=r[0]) for r in rows], pa.timestamp("us", tz="UTC")),
        "event": [r[2] for r in rows],
        "value": [12.5 if r[2] == "purchase" else None for r in rows],
        "category": ["shoes" if r[0] % 2 else "books" for r in rows],
    })
    for choice in (0, 3, 7):
        put("event_reader", f"log{choice}", parquet_bytes(events), bytes([choice]))
    if BIN.exists():
        out = ROOT / "ev.parquet"
        subprocess.run([BIN, "generate-events", "--subscribers", "3", "--days", "30", "--sends-per-week", "2",
                        "--out", out, "--force", "--quiet"], check=True)
        put("event_reader", "generated", out.read_bytes(), b"\x07")
        out.unlink()
    print(json.dumps({t.name: len(list(t.iterdir())) for t in sorted(SEEDS.iterdir())}))


if __name__ == "__main__":
    main()
