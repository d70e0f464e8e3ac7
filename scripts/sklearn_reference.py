#!/usr/bin/env python3
"""Reference k-means results from scikit-learn, for microseg's tests.

For every case below this script writes, under tests/data/sklearn/<case>/:

* ``init.csv`` -- the k initial centroids, one per line, d comma-separated
  numbers, no header. Every number is a float32 value printed with enough
  digits (``.9g``) to read back as exactly the same float32.
* ``expected.json`` -- what scikit-learn's Lloyd k-means reaches from those
  centroids: ``case``, ``input`` (path relative to the repository root),
  ``features`` (in order), ``weight_col`` (or null), ``k``, ``max_iter``,
  ``tol``, ``n_rows``, ``sklearn_version``, ``numpy_version``, ``labels`` (one
  per row, in file order), ``inertia`` (float64, sklearn's ``inertia_``),
  ``n_iter`` (sklearn's ``n_iter_``), ``centers`` (k x d, sklearn's
  ``cluster_centers_``) and ``near_ties`` (rows whose best and second-best
  squared distances to ``centers`` differ by less than 1e-5 of the second
  best; a test should not hold their label against the engine).

How the data matrix is built: the listed Parquet columns are read with
pyarrow and converted to float32 (bool -> 0/1), i.e. exactly the f32 values
microseg sees with ``--scale none``; they are then widened to float64 for
scikit-learn. The initial centroids are distinct rows of that matrix:
``X[sort(default_rng(SEED).choice(n, k, replace=False))]``. The fit is
``KMeans(n_clusters=k, init=C0, n_init=1, max_iter=300, tol=1e-4,
algorithm='lloyd').fit(X, sample_weight=w)``, run on one thread (OpenMP and
BLAS limited to 1 via threadpoolctl) so that the sums are reduced in a fixed
order and two runs give byte-identical files.

The matching microseg run is, e.g. for the ``bank`` case::

    microseg fit datasets/bank-full.parquet --features age,balance,... --k 6 \
        --scale none --init tests/data/sklearn/bank/init.csv --model m.json

(plus ``--weight-col <weight_col>`` where expected.json names one).

The ``generated`` case reads tests/data/generated_small.parquet, made with::

    target/release/microseg generate --rows 3000 --dims 6 --clusters 5 \
        --seed 7 --out tests/data/generated_small.parquet

Run from anywhere (paths are relative to the repository root, the parent of
this script's directory):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python \
        scripts/sklearn_reference.py            # all cases
    ... scripts/sklearn_reference.py bank       # only the named cases

Written with Python 3.11, numpy 2.4.6, scikit-learn 1.9.1, pyarrow 26.0.1.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sklearn
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "tests" / "data" / "sklearn"

MAX_ITER = 300
TOL = 1e-4
NEAR_TIE_REL = 1e-5

RETAIL = "datasets/online_retail_customers.parquet"

# name, input, features (None: every column but the listed non-features),
# weight column, k, seed
CASES = [
    dict(
        case="generated",
        input="tests/data/generated_small.parquet",
        features=None,
        non_features=["subscriber_id", "true_segment"],
        weight_col=None,
        k=5,
        seed=1,
    ),
    dict(
        case="online_retail",
        input=RETAIL,
        features=[
            "recency_days", "frequency", "monetary", "tenure_days",
            "avg_basket_value", "distinct_products", "items_per_invoice",
            "return_rate", "active_months", "is_uk",
        ],
        weight_col=None,
        k=8,
        seed=2,
    ),
    dict(
        case="bank",
        input="datasets/bank-full.parquet",
        features=["age", "balance", "day", "duration", "campaign", "pdays", "previous"],
        weight_col=None,
        k=6,
        seed=3,
    ),
    dict(
        case="weighted",
        input=RETAIL,
        features=["recency_days", "frequency", "monetary", "tenure_days", "return_rate"],
        weight_col="active_months",
        k=5,
        seed=4,
    ),
]


def column_f32(table: pa.Table, name: str) -> np.ndarray:
    """One column as the float32 values the engine sees (bool -> 0/1)."""
    col = table.column(name)
    if col.null_count:
        raise SystemExit(f"column {name!r} has {col.null_count} nulls")
    if pa.types.is_boolean(col.type):
        col = pc.cast(col, pa.uint8())
    values = col.to_numpy().astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise SystemExit(f"column {name!r} has non-finite values")
    return values


def f32_text(v: float) -> str:
    s = format(float(np.float32(v)), ".9g")
    assert np.float32(float(s)) == np.float32(v)
    return s


def near_ties(X: np.ndarray, centers: np.ndarray) -> list:
    """Rows whose two smallest squared distances to centers differ by < 1e-5 relative."""
    d = ((X[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
    d.sort(axis=1)
    best, second = d[:, 0], d[:, 1]
    tiny = np.finfo(np.float64).tiny
    ties = (second - best) < NEAR_TIE_REL * np.maximum(second, tiny)
    return [int(i) for i in np.flatnonzero(ties)]


def write_json(path: Path, obj: dict) -> None:
    """One key per line, values compact (keeps the label lists small)."""
    lines = [
        f"  {json.dumps(key)}: {json.dumps(val, separators=(',', ':'), allow_nan=False)}"
        for key, val in obj.items()
    ]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def run_case(spec: dict) -> None:
    table = pq.read_table(ROOT / spec["input"])
    features = spec["features"]
    if features is None:
        features = [c for c in table.column_names if c not in spec["non_features"]]
    X = np.column_stack([column_f32(table, f) for f in features]).astype(np.float32).astype(np.float64)
    n, d = X.shape
    k = spec["k"]
    w = None
    if spec["weight_col"] is not None:
        w = column_f32(table, spec["weight_col"]).astype(np.float64)
        if np.any(w < 0):
            raise SystemExit(f"{spec['case']}: negative weights")

    idx = np.sort(np.random.default_rng(spec["seed"]).choice(n, k, replace=False))
    C0 = X[idx].copy()
    if len({tuple(r) for r in C0}) != k:
        raise SystemExit(f"{spec['case']}: initial centroids are not distinct rows")

    km = KMeans(
        n_clusters=k, init=C0, n_init=1, max_iter=MAX_ITER, tol=TOL, algorithm="lloyd"
    )
    with threadpool_limits(limits=1):
        km.fit(X, sample_weight=w)

    centers = km.cluster_centers_
    expected = {
        "case": spec["case"],
        "input": spec["input"],
        "features": features,
        "weight_col": spec["weight_col"],
        "k": k,
        "max_iter": MAX_ITER,
        "tol": TOL,
        "n_rows": n,
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
        "labels": [int(v) for v in km.labels_],
        "inertia": float(km.inertia_),
        "n_iter": int(km.n_iter_),
        "centers": [[float(v) for v in row] for row in centers],
        "near_ties": near_ties(X, centers),
    }
    out = OUT_DIR / spec["case"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "init.csv").write_text("".join(",".join(f32_text(v) for v in row) + "\n" for row in C0))
    write_json(out / "expected.json", expected)
    print(
        f"{spec['case']}: n={n} d={d} k={k} rows={idx.tolist()} inertia={km.inertia_!r} "
        f"n_iter={km.n_iter_} near_ties={len(expected['near_ties'])}"
    )


def main(argv: list) -> None:
    names = {c["case"] for c in CASES}
    unknown = set(argv) - names
    if unknown:
        raise SystemExit(f"unknown case(s) {sorted(unknown)}; known: {sorted(names)}")
    for spec in CASES:
        if not argv or spec["case"] in argv:
            run_case(spec)


if __name__ == "__main__":
    main(sys.argv[1:])
