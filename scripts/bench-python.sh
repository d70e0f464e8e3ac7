#!/usr/bin/env bash
# The Python package against the CLI on the same Parquet, same options, same backend:
# 10⁶ rows × 32 features, k = 256, 20 Lloyd iterations (tol 0), alternating runs.
# Python's time includes pyarrow reading the file, as the CLI's includes its reading.
# Usage: PYTHON=.venv/bin/python scripts/bench-python.sh [ROWS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
ROWS="${1:-1000000}"
RUNS="${2:-3}"
BIN=target/release/microseg
DATA=bench-data/python_${ROWS}x32.parquet
mkdir -p bench-data
[ -f "$DATA" ] || "$BIN" generate --rows "$ROWS" --dims 32 --clusters 256 --seed 7 --out "$DATA" --quiet
OPTS=(--k 256 --max-iter 20 --tol 0 --seed 0 --backend cpu)
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads; rows $ROWS × 32, k 256, 20 iterations"
for run in $(seq 1 "$RUNS"); do
    t0=$(date +%s.%N)
    "$BIN" fit "$DATA" "${OPTS[@]}" --model bench-data/cli.json --force --quiet
    t1=$(date +%s.%N)
    "$PYTHON" - "$DATA" <<'PY'
import sys, microseg, pyarrow.parquet as pq
m = microseg.fit(pq.read_table(sys.argv[1]), k=256, max_iter=20, tol=0.0, seed=0, backend="cpu")
m.save("bench-data/py.json")
PY
    t2=$(date +%s.%N)
    cmp -s bench-data/cli.json bench-data/py.json && same=identical || same=DIFFERENT
    python3 -c "import sys; c, p = float(sys.argv[2]) - float(sys.argv[1]), float(sys.argv[3]) - float(sys.argv[2]); print(f'run $run: CLI {c:.2f} s, Python {p:.2f} s (incl. interpreter start and import), ratio {p / c:.3f}; models $same')" "$t0" "$t1" "$t2"
done
