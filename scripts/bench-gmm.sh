#!/usr/bin/env bash
# One EM iteration of a Gaussian mixture, microseg against scikit-learn, side by side
# on the same data, machine and threads (issue 12's benchmark).
#
#   scripts/bench-gmm.sh [ROWS] [THREADS]      (default 1000000 rows, 2 threads)
#
# Data: ROWS × 16 float32 from 64 Gaussian blobs (seeded), written to bench-data/.
# Both start from the same 64 centroids (the blob centres). scikit-learn: the time of
# its own _e_step + _m_step, after a fit of one iteration, median of 3. microseg: the
# mean seconds per EM iteration of `fit --method gmm --max-iter 5 --tol 0` (--json).
# Cases: diag with k = 64, and full with k = 32. Needs .venv with numpy, pyarrow,
# scikit-learn and threadpoolctl (scripts/test.sh makes it) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
THREADS=${2:-2}
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
mkdir -p bench-data
PY=.venv/bin/python
$PY - "$ROWS" <<'PYEOF'
import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
n = int(sys.argv[1]); rng = np.random.default_rng(3)
for k in (64, 32):
    c = rng.normal(scale=4.0, size=(k, 16)).astype(np.float32)
    X = (c[rng.integers(0, k, n)] + rng.normal(size=(n, 16)) * rng.uniform(0.5, 1.5, size=16)).astype(np.float32)
    pq.write_table(pa.table({f"f{i}": X[:, i] for i in range(16)}), f"bench-data/gmm_{n}_{k}.parquet")
    np.savetxt(f"bench-data/gmm_{n}_{k}_init.csv", c, delimiter=",", fmt="%.9g")
PYEOF
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | xargs)
echo "CPU: $cpu; $THREADS threads; $ROWS rows × 16"
for spec in "diag 64" "full 32"; do
  set -- $spec; cov=$1; k=$2
  data=bench-data/gmm_${ROWS}_${k}.parquet; init=bench-data/gmm_${ROWS}_${k}_init.csv
  ours=$(target/release/microseg --quiet --threads "$THREADS" fit "$data" --k "$k" --method gmm --covariance "$cov" \
    --scale none --init "$init" --max-iter 5 --tol 0 --model /tmp/microseg-bench-gmm.json --force --json |
    $PY -c "import json,sys; print(json.load(sys.stdin)['seconds_per_iteration'])")
  theirs=$($PY - "$data" "$init" "$k" "$cov" "$THREADS" <<'PYEOF'
import sys, time, warnings, numpy as np, pyarrow.parquet as pq
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits
data, init, k, cov, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
t = pq.read_table(data); X = np.column_stack([t.column(c).to_numpy() for c in t.column_names]).astype(np.float64)
warnings.simplefilter("ignore")
gm = GaussianMixture(k, covariance_type=cov, max_iter=1, means_init=np.loadtxt(init, delimiter=","), random_state=0)
with threadpool_limits(threads):
    gm.fit(X)
    times = []
    for _ in range(3):
        t0 = time.perf_counter(); _, log_resp = gm._e_step(X); gm._m_step(X, log_resp); times.append(time.perf_counter() - t0)
print(sorted(times)[1])
PYEOF
)
  $PY -c "
import sklearn; o, t = $ours, $theirs
print(f'{\"$cov\":5} k=$k: microseg {o:.3f} s/iteration, scikit-learn {sklearn.__version__} {t:.3f} s/iteration: ratio {o/t:.3f}')"
done
