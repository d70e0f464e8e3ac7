#!/usr/bin/env bash
# Exact top-k similarity, side by side: FAISS IndexFlatIP (faiss-cpu) against
# `microseg neighbors --metric ip` on the same vectors: base N × 384 (generated,
# clustered, L2-normalised, float32), 1,000 queries, k = 100, CPU, 1 and 2 threads.
#   PYTHON=/path/to/venv/bin/python scripts/bench-similarity.sh [N]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
N=${1:-1000000}
WORK=${WORK:-$ROOT/bench-data}
mkdir -p "$WORK"
PYX="env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $PY"
(cd "$ROOT" && cargo build --release --quiet)
MS="$ROOT/target/release/microseg"
base="$WORK/sim_base_n$N.parquet"
queries="$WORK/sim_queries.parquet"
$PYX - "$N" "$base" "$queries" <<'PY'
import os, sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
n, base, queries = int(sys.argv[1]), sys.argv[2], sys.argv[3]
d = 384
rng = np.random.default_rng(42)
centres = rng.standard_normal((256, d)).astype(np.float32)
def make(m, seed, path):
    if os.path.exists(path):
        return
    r = np.random.default_rng(seed)
    w = pq.ParquetWriter(path, pa.schema([("subscriber_id", pa.int64()), ("emb", pa.list_(pa.float32(), d))]))
    for s in range(0, m, 100_000):
        k = min(100_000, m - s)
        x = centres[r.integers(0, 256, k)] + 0.6 * r.standard_normal((k, d)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).ravel()), d)
        w.write_table(pa.table({"subscriber_id": np.arange(s, s + k, dtype=np.int64), "emb": emb}))
    w.close()
make(n, 1, base)
make(1000, 2, queries)
PY
for t in 1 2; do
    $PYX - "$base" "$queries" "$t" <<'PY'
import json, sys, time, numpy as np, pyarrow.parquet as pq, faiss
base, queries, t = sys.argv[1], sys.argv[2], int(sys.argv[3])
faiss.omp_set_num_threads(t)
def load(p):
    col = pq.read_table(p, columns=["emb"]).column("emb").combine_chunks()
    return np.ascontiguousarray(col.values.to_numpy(zero_copy_only=False).reshape(len(col), -1), dtype=np.float32)
xb, xq = load(base), load(queries)
index = faiss.IndexFlatIP(xb.shape[1]); index.add(xb)
index.search(xq[:10], 100)
t0 = time.perf_counter(); D, I = index.search(xq, 100); s = time.perf_counter() - t0
np.save(base + f".faiss_ids_t{t}.npy", I)
print(json.dumps({"peer": "faiss IndexFlatIP", "faiss": faiss.__version__, "threads": t, "base": xb.shape[0], "queries": xq.shape[0], "k": 100, "search_seconds": s, "queries_per_second": xq.shape[0] / s}))
PY
    "$MS" neighbors --base "$base" --queries "$queries" --embedding emb --k 100 --metric ip --threads "$t" --out "$WORK/sim_out_t$t.parquet" --force --json --quiet
done
$PYX - "$base" "$WORK/sim_out_t2.parquet" <<'PY'
import sys, numpy as np, pyarrow.parquet as pq
I = np.load(sys.argv[1] + ".faiss_ids_t2.npy")
t = pq.read_table(sys.argv[2]).to_pandas()
ours = t.sort_values(["query", "rank"], key=lambda c: c.astype(int) if c.name == "query" else c).groupby("query", sort=False)["neighbor"].apply(lambda s: set(map(int, s)))
agree = np.mean([len(ours[str(q)] & set(I[q])) / 100 for q in range(I.shape[0])])
print(f'{{"recall_of_faiss_top100_in_microseg": {agree:.6f}}}')
PY
