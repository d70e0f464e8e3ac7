#!/usr/bin/env bash
# Scale check (issue: 10⁷ × 32, k = 256 on a 2-core, 24 GiB machine): generate the
# table, fit it and assign it, recording wall time and peak RSS (GNU time) of each.
# Budgets: fit peak RSS ≤ 1.3 × the matrix (n·d·4 bytes) + 300 MB; assign < 1 GB.
#   scripts/scale-check.sh [ROWS] [DIMS] [K]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROWS=${1:-10000000}
DIMS=${2:-32}
K=${3:-256}
WORK=${WORK:-$ROOT/bench-data}
mkdir -p "$WORK"
(cd "$ROOT" && cargo build --release --quiet)
MS="$ROOT/target/release/microseg"
T="/usr/bin/time -f %e,%M"
data="$WORK/scale_n${ROWS}_d${DIMS}.parquet"
[ -f "$data" ] || $T -o "$WORK/scale_generate.time" "$MS" generate --rows "$ROWS" --dims "$DIMS" --clusters 24 --out "$data" --quiet
$T -o "$WORK/scale_fit.time" "$MS" fit "$data" --k "$K" --model "$WORK/scale_model.json" --force --json --quiet >"$WORK/scale_fit.json"
$T -o "$WORK/scale_assign.time" "$MS" assign --model "$WORK/scale_model.json" "$data" --out "$WORK/scale_assign.parquet" --force --json --quiet >"$WORK/scale_assign.json"
python3 - "$WORK" "$ROWS" "$DIMS" <<'PY'
import json, sys
w, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
matrix = n * d * 4
def t(name):
    wall, kb = open(f"{w}/scale_{name}.time").read().strip().splitlines()[-1].split(",")
    return float(wall), int(kb) * 1024
fit = json.load(open(f"{w}/scale_fit.json")); asg = json.load(open(f"{w}/scale_assign.json"))
fw, fr = t("fit"); aw, ar = t("assign")
budget = 1.3 * matrix + 300e6
print(f"matrix {matrix/1e9:.2f} GB; fit budget {budget/1e9:.2f} GB")
print(f"fit:    {fw:.0f} s wall, peak RSS {fr/1e9:.2f} GB ({'within' if fr <= budget else 'OVER'} budget); "
      f"{fit['iterations']} iterations, {fit['seconds_per_iteration']:.2f} s/iteration, algorithm {fit['algorithm']}, "
      f"read {fit['read_seconds']:.1f} s, init {fit['init_seconds']:.1f} s, inertia {fit['inertia']:.6e}")
print(f"assign: {aw:.0f} s wall, peak RSS {ar/1e9:.2f} GB ({'under' if ar < 1e9 else 'OVER'} 1 GB); {asg['n_rows']} rows, "
      f"{asg['rows_per_second']:.0f} rows/s")
PY
