"""How many centroids the 8-bit bound of the quantised assignment leaves per row.

numpy model of src/backend/cpu/quant.rs on the benchmark data of scripts/bench-peers.sh
(run that first): rows coded at their own scale (levels ±127 as with VNNI, ±63 as with
AVX2), centroids at theirs (±127), the Cauchy–Schwarz bound per centroid, and for
comparison one scale for all centroids and a bound uniform per row.

    PYTHON=.venv/bin/python; $PYTHON scripts/quant_candidates.py [bench-data]
"""
import sys

import faiss
import numpy as np

work = sys.argv[1] if len(sys.argv) > 1 else "bench-data"
X = np.load(f"{work}/data/cache/subs_n1000000_d32.zscore.npy")
C0 = np.loadtxt(f"{work}/data/c0_n1000000_d32_k256.csv", delimiter=",", dtype=np.float32)
km = faiss.Kmeans(32, 256, niter=5, max_points_per_centroid=X.shape[0] // 256 + 1)
km.train(X, init_centroids=C0)
C = km.centroids.astype(np.float64)
x = X[np.random.default_rng(1).choice(len(X), 20000, replace=False)].astype(np.float64)


def code(v, levels):
    s = np.abs(v).max(1, keepdims=True) / levels
    c = np.round(v / s)
    return s, c, np.linalg.norm(v - s * c, axis=1), np.linalg.norm(s * c, axis=1)


n2, cn = (C**2).sum(1), np.linalg.norm(C, axis=1)
for levels in (127, 63):
    sx, cx, ex, xq = code(x, levels)
    sc, cc, ec, _ = code(C, 127)
    est = n2[None, :] - 2 * (sx * cx) @ (sc * cc).T
    t = 2 * (ex[:, None] * cn[None, :] + xq[:, None] * ec[None, :])
    cand = (est - t <= (est + t).min(1, keepdims=True)).sum(1)
    tu = t.max(1, keepdims=True)
    uniform = (est - tu <= est.min(1, keepdims=True) + tu).sum(1)
    s = np.abs(C).max() / 127
    cg = np.round(C / s)
    eg = np.linalg.norm(C - s * cg, axis=1)
    estg = n2[None, :] - 2 * (sx * cx) @ (s * cg).T
    tg = 2 * (ex[:, None] * cn[None, :] + xq[:, None] * eg[None, :])
    one_scale = (estg - tg <= (estg + tg).min(1, keepdims=True)).sum(1)
    print(f"row codes ±{levels}: per-centroid bound {cand.mean():.2f} candidates per row "
          f"(median {np.median(cand):.0f}, p99 {np.percentile(cand, 99):.0f}); "
          f"one centroid scale {one_scale.mean():.2f}; bound uniform per row {uniform.mean():.2f}")
