#!/usr/bin/env bash
# Side-by-side Lloyd iterations: microseg against scikit-learn (sk_lloyd) and FAISS
# (faiss_full: every row, no subsampling), using the shared peer harness
# (../shared/bench/peers) on the same Parquet tables, the same z-scored data and the
# same initial centroids C0 = X[sort(default_rng(0).choice(n, k))], 20 iterations, tol 0.
#
#   PYTHON=/path/to/venv/bin/python scripts/bench-peers.sh
#
# PYTHON needs the harness's requirements (pip install -r ../shared/bench/peers/requirements.txt).
# Settings (environment): THREADS ("1 2"), CONFIGS ("32:256 16:1024" as d:k), N (1000000),
# ITERS (20), WORK (bench-data/, git-ignored). Writes WORK/results/sbs.jsonl (peers),
# WORK/results/microseg.jsonl and prints a table of per-iteration times and ratios.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS_DIR:-$ROOT/../shared/bench/peers}
PY=${PYTHON:-python3}
WORK=${WORK:-$ROOT/bench-data}
THREADS=${THREADS:-"1 2"}
CONFIGS=${CONFIGS:-"32:256 16:1024"}
N=${N:-1000000}
ITERS=${ITERS:-20}
PYX="env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $PY"

mkdir -p "$WORK/data" "$WORK/results"
# The harness writes next to itself; the shared copy is read-only, so run a copy.
cp "$PEERS/bench_peers.py" "$PEERS/gen_data.py" "$WORK/"
cp "$PEERS/results/ceilings_best.json" "$WORK/results/ceilings.json"
(cd "$ROOT" && cargo build --release --quiet)
MS="$ROOT/target/release/microseg"
: >"$WORK/results/microseg.jsonl"
rm -f "$WORK/results/sbs.jsonl"

for cfg in $CONFIGS; do
    d=${cfg%%:*}
    k=${cfg##*:}
    pq="$WORK/data/subs_n${N}_d${d}.parquet"
    [ -f "$pq" ] || $PYX "$WORK/gen_data.py" --rows "$N" --dims "$d" --clusters 24 --seed 42 --out "$pq"
    for t in $THREADS; do
        echo "== n=$N d=$d k=$k threads=$t" >&2
        $PYX "$WORK/bench_peers.py" run --data "$pq" --k "$k" --threads "$t" --iters "$ITERS" --repeats 1 \
            --peers sk_lloyd faiss_full --out sbs.jsonl --no-resume >&2
        npy="$WORK/data/cache/subs_n${N}_d${d}.zscore.npy"
        c0="$WORK/data/c0_n${N}_d${d}_k${k}.csv"
        $PYX - "$npy" "$k" "$c0" <<'PY'
import sys, numpy as np
X = np.load(sys.argv[1], mmap_mode="r"); k = int(sys.argv[2])
idx = np.sort(np.random.default_rng(0).choice(X.shape[0], size=k, replace=False))
np.savetxt(sys.argv[3], np.asarray(X[idx], dtype=np.float32), delimiter=",", fmt="%.9g")
PY
        # Every CPU kernel this machine has, with plain Lloyd; and the f32 kernel with
        # the bounded variants (what auto ran before the 8-bit kernels).
        rm -f "$WORK"/model_d${d}_k${k}_*.json
        runs="lloyd:f32-avx2 hamerly:f32-avx2 pruned:f32-avx2 lloyd:int8-avx2"
        if "$MS" info --json | grep -q '"f32-avx512"'; then runs="$runs lloyd:f32-avx512"; fi
        if "$MS" info --json | grep -q '"int8-vnni"'; then runs="$runs lloyd:int8-vnni"; fi
        if "$MS" info --json | grep -q '"int8-amx"'; then runs="$runs lloyd:int8-amx"; fi
        for run in $runs; do
            alg=${run%%:*}
            kern=${run##*:}
            start=$(date +%s.%N)
            line=$("$MS" fit "$pq" --exclude segment_true --k "$k" --init "$c0" --max-iter "$ITERS" --tol 0 \
                --algorithm "$alg" --kernel "$kern" --threads "$t" --model "$WORK/model_d${d}_k${k}_${alg}_${kern}.json" \
                --force --json --quiet)
            echo "$line" | $PYX -c "import json,sys; r=json.load(sys.stdin); r.update(d=$d, kernel='$kern', wall_total_s=$(date +%s.%N)-$start); print(json.dumps(r))" \
                >>"$WORK/results/microseg.jsonl"
        done
        # The models are one file whatever the kernel and algorithm.
        if [ "$(md5sum "$WORK"/model_d${d}_k${k}_*.json | awk '{print $1}' | sort -u | wc -l)" != 1 ]; then
            echo "models differ between kernels or algorithms at d=$d k=$k" >&2
            exit 1
        fi
    done
done

$PYX - "$WORK/results/sbs.jsonl" "$WORK/results/microseg.jsonl" <<'PY'
import json, sys
peers = [json.loads(l) for l in open(sys.argv[1]) if '"kind": "run"' in l]
ours = [json.loads(l) for l in open(sys.argv[2])]
cols = [("lloyd", "f32-avx2"), ("pruned", "f32-avx2"), ("lloyd", "f32-avx512"), ("lloyd", "int8-avx2"), ("lloyd", "int8-vnni"), ("lloyd", "int8-amx")]
print("| n | d | k | threads | sk_lloyd s/it | faiss_full s/it | " + " | ".join(f"{a} {k} s/it" for a, k in cols)
      + " | best/faiss | best/sk | inertia rel. to faiss |")
print("|---|---|---|---|---|---|" + "---|" * len(cols) + "---|---|---|")
for p in peers:
    if p.get("peer") != "faiss_full" or p.get("status") != "ok":
        continue
    key = (p["d"], p["k"], p["threads"])
    sk = next((q for q in peers if q.get("peer") == "sk_lloyd" and (q["d"], q["k"], q["threads"]) == key and q.get("status") == "ok"), None)
    m = {(r["algorithm"], r["kernel"]): r for r in ours if (r["d"], r["k"], r["threads"]) == key}
    if not m:
        continue
    f = p["per_iter_s"]; s = sk["per_iter_s"] if sk else float("nan")
    cells = [f"{m[c]['seconds_per_iteration']:.4f}" if c in m else "–" for c in cols]
    best = min(r["seconds_per_iteration"] for r in m.values())
    inertia = next(iter(m.values()))["inertia"]
    print(f"| {p['n']:,} | {p['d']} | {p['k']} | {p['threads']} | {s:.4f} | {f:.4f} | " + " | ".join(cells)
          + f" | {best/f:.2f} | {best/s:.2f} | {inertia/p['inertia']-1:+.1e} |")
PY
