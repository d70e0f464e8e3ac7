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
    inproc=$("$PYTHON" - "$DATA" <<'PY'
import sys, time
t0 = time.perf_counter()
import microseg, pyarrow.parquet as pq
t1 = time.perf_counter()
table = pq.read_table(sys.argv[1])
t2 = time.perf_counter()
m = microseg.fit(table, k=256, max_iter=20, tol=0.0, seed=0, backend="cpu")
m.save("bench-data/py.json")
t3 = time.perf_counter()
print(f"{t3 - t1:.3f} {t1 - t0:.3f} {t2 - t1:.3f} {t3 - t2:.3f}")
PY
)
    t2=$(date +%s.%N)
    cmp -s bench-data/cli.json bench-data/py.json && same=identical || same=DIFFERENT
    python3 -c "
import sys
c, whole = float(sys.argv[2]) - float(sys.argv[1]), float(sys.argv[3]) - float(sys.argv[2])
work, imp, read, fit = map(float, sys.argv[4].split())
print(f'run $run: CLI {c:.2f} s (process: read + fit + save); Python fit + save {fit:.2f} s, ratio {fit / c:.3f}; '
      f'with pyarrow reading every column first {work:.2f} s, ratio {work / c:.3f} '
      f'(pyarrow read {read:.2f} s; import {imp:.2f} s and interpreter start outside it; whole process {whole:.2f} s, '
      f'ratio {whole / c:.3f}); models $same')" "$t0" "$t1" "$t2" "$inproc"
done
