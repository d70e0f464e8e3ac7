#!/usr/bin/env python3
"""Reference Gaussian-mixture fits from scikit-learn, for microseg's tests.

For every case and covariance type (full, diag, spherical, tied) this script
writes, under tests/data/sklearn_gmm/<case>/:

* ``init.csv`` -- k initial centroids (distinct rows of the matrix, chosen by
  ``default_rng(seed)``), float32 values printed so they read back exactly.
* ``<covariance>.json`` -- what scikit-learn's ``GaussianMixture`` reaches from
  the hard assignment of every row to its nearest initial centroid:
  ``init_labels`` (that assignment), ``lower_bound`` (``lower_bound_``),
  ``score`` (``score(X)``: the mean log-likelihood under the final
  parameters), ``n_iter``, ``converged``, ``labels`` (``predict``),
  ``weights``, ``means``, ``bic``, ``aic``, and the versions used.

The start "from hard labels" is given to scikit-learn exactly: the weights,
means and covariances its own ``_estimate_gaussian_parameters`` computes from
one-hot responsibilities (weights divided by n, as its ``_initialize`` does)
are passed as ``weights_init``, ``means_init`` and ``precisions_init`` (the
inverse covariances). The matrix is the listed columns converted to float32
(what microseg reads with ``--scale none``), widened to float64. Options:
``reg_covar=1e-6, tol=1e-3, max_iter=100, n_init=1``, one thread.

``metrics.json`` holds scikit-learn's silhouette, Calinski-Harabasz and
Davies-Bouldin scores of a labelled sample (for ``choose-k``).

The ``blobs`` case is a generated mixture of anisotropic, differently sized
Gaussian clusters written to tests/data/gmm_blobs.parquet by this script.

    .venv/bin/python scripts/sklearn_gmm_reference.py

Written with Python 3.11, numpy 2.4.6, scikit-learn 1.9.1, pyarrow 26.0.1.
"""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sklearn
from sklearn.mixture import GaussianMixture
from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "tests" / "data" / "sklearn_gmm"
BLOBS = "tests/data/gmm_blobs.parquet"
TYPES = ["full", "diag", "spherical", "tied"]
REG, TOL, MAX_ITER = 1e-6, 1e-3, 100

CASES = [
    dict(case="blobs", input=BLOBS, features=["f0", "f1", "f2", "f3"], k=4, seed=11),
    dict(case="generated", input="tests/data/generated_small.parquet",
         features=["recency_days", "frequency", "monetary", "tenure_days", "open_rate", "click_rate"], k=5, seed=1),
    dict(case="online_retail", input="datasets/online_retail_customers.parquet",
         features=["recency_days", "frequency", "monetary", "tenure_days",
                   "avg_basket_value", "return_rate"], k=4, seed=2),
    dict(case="bank", input="datasets/bank-full.parquet",
         features=["age", "balance", "day", "duration", "campaign"], k=3, seed=3),
]


def make_blobs() -> None:
    """2,400 rows from 4 anisotropic Gaussians of unequal sizes (seeded)."""
    rng = np.random.default_rng(5)
    sizes = [1200, 600, 400, 200]
    parts = []
    for j, m in enumerate(sizes):
        a = rng.normal(size=(4, 4)) * (0.5 + j * 0.3)
        mean = rng.normal(scale=6.0, size=4)
        parts.append(rng.normal(size=(m, 4)) @ a + mean)
    X = np.vstack(parts).astype(np.float32)
    perm = rng.permutation(len(X))
    X = X[perm]
    table = pa.table({f"f{i}": X[:, i] for i in range(4)})
    pq.write_table(table, ROOT / BLOBS)


def f32_text(v: float) -> str:
    s = format(float(np.float32(v)), ".9g")
    assert np.float32(float(s)) == np.float32(v)
    return s


def precisions(cov: np.ndarray, kind: str) -> np.ndarray:
    if kind == "full":
        return np.array([np.linalg.inv(c) for c in cov])
    if kind == "tied":
        return np.linalg.inv(cov)
    return 1.0 / cov


def run_case(spec: dict) -> None:
    table = pq.read_table(ROOT / spec["input"], columns=spec["features"])
    X = np.column_stack([table.column(f).to_numpy().astype(np.float32) for f in spec["features"]])
    X = X.astype(np.float64)
    n, d = X.shape
    k = spec["k"]
    idx = np.sort(np.random.default_rng(spec["seed"]).choice(n, k, replace=False))
    C0 = X[idx].astype(np.float32).astype(np.float64)
    assert len({tuple(r) for r in C0}) == k
    dist = ((X[:, None, :] - C0[None, :, :]) ** 2).sum(axis=2)
    labels0 = dist.argmin(axis=1)
    resp = np.zeros((n, k))
    resp[np.arange(n), labels0] = 1.0
    out = OUT_DIR / spec["case"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "init.csv").write_text("".join(",".join(f32_text(v) for v in row) + "\n" for row in C0))
    for kind in TYPES:
        w0, m0, c0 = _estimate_gaussian_parameters(X, resp, REG, kind)
        w0 = w0 / n
        gm = GaussianMixture(n_components=k, covariance_type=kind, tol=TOL, reg_covar=REG,
                             max_iter=MAX_ITER, n_init=1, weights_init=w0, means_init=m0,
                             precisions_init=precisions(c0, kind))
        with threadpool_limits(limits=1):
            gm.fit(X)
            labels = gm.predict(X)
            score = gm.score(X)
            bic, aic = gm.bic(X), gm.aic(X)
        res = {
            "case": spec["case"], "input": spec["input"], "features": spec["features"],
            "covariance": kind, "k": k, "reg_covar": REG, "tol": TOL, "max_iter": MAX_ITER,
            "n_rows": n, "sklearn_version": sklearn.__version__, "numpy_version": np.__version__,
            "lower_bound": float(gm.lower_bound_), "score": float(score),
            "n_iter": int(gm.n_iter_), "converged": bool(gm.converged_),
            "bic": float(bic), "aic": float(aic),
            "weights": [float(v) for v in gm.weights_],
            "means": [[float(v) for v in r] for r in gm.means_],
            "init_labels": [int(v) for v in labels0], "labels": [int(v) for v in labels],
        }
        lines = [f"  {json.dumps(a)}: {json.dumps(b, separators=(',', ':'))}" for a, b in res.items()]
        (out / f"{kind}.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")
        print(f"{spec['case']}/{kind}: n_iter {gm.n_iter_}, score {score:.10g}, converged {gm.converged_}")


def write_metrics() -> None:
    """scikit-learn's cluster-validity scores of a labelled sample, for choose-k's tests:
    the first 600 rows of the blobs (float32 widened), labelled by their nearest of 5
    centres drawn from them; writes tests/data/sklearn_gmm/metrics.json."""
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score
    t = pq.read_table(ROOT / BLOBS)
    X = np.column_stack([t.column(c).to_numpy() for c in t.column_names]).astype(np.float64)[:600]
    C = X[[3, 100, 200, 300, 400]]
    labels = ((X[:, None, :] - C[None]) ** 2).sum(2).argmin(1)
    res = {
        "rows": 600, "labels": [int(v) for v in labels],
        "silhouette": float(silhouette_score(X, labels)),
        "calinski_harabasz": float(calinski_harabasz_score(X, labels)),
        "davies_bouldin": float(davies_bouldin_score(X, labels)),
        "sklearn_version": sklearn.__version__,
    }
    (OUT_DIR / "metrics.json").write_text(json.dumps(res) + "\n")
    print("metrics:", {k: v for k, v in res.items() if k != "labels"})


def main() -> None:
    make_blobs()
    for spec in CASES:
        run_case(spec)
    write_metrics()


if __name__ == "__main__":
    main()
