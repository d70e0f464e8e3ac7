#!/usr/bin/env bash
# On a machine with a real GPU: build, check GPU-vs-CPU agreement, and time the
# passes with `microseg bench` at n = 10⁷, d = 32, k ∈ {256, 1024}; where PyTorch is
# installed, time the same Lloyd iteration in PyTorch (matmul + argmin + index_add)
# on the same card. Writes everything to ${OUT:-gpu-check-out}/.
#   scripts/gpu-check.sh [ROWS]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROWS=${1:-10000000}
OUT=${OUT:-$ROOT/gpu-check-out}
mkdir -p "$OUT"
cd "$ROOT"
# NVIDIA machines may lack the Vulkan loader's ICD path: point it at the driver's.
for icd in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; do
    if [ -f "$icd" ] && [ -z "${VK_DRIVER_FILES:-}" ]; then export VK_DRIVER_FILES="$icd"; fi
done
cargo build --release --quiet 2>&1 | tail -5
MS=target/release/microseg
$MS info | tee "$OUT/info.txt"
# Agreement on the shipped real data set and on generated data (small, quick).
$MS generate --rows 200000 --dims 32 --clusters 24 --out "$OUT/agree.parquet" --force --quiet
for input in datasets/online_retail_customers.parquet "$OUT/agree.parquet"; do
    $MS bench "$input" --k 64 --iters 2 --backends cpu,gpu --json | tee -a "$OUT/agreement.jsonl"
done
# Timings at scale (generated in memory by bench).
for k in 256 1024; do
    $MS bench --rows "$ROWS" --dims 32 --k "$k" --iters 5 --backends gpu,cpu --json | tee -a "$OUT/bench.jsonl"
done
if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    for k in 256 1024; do
        python3 - "$ROWS" 32 "$k" <<'PY' | tee -a "$OUT/torch.jsonl"
import json, sys, time, torch
n, d, k = map(int, sys.argv[1:4])
g = torch.Generator(device="cuda").manual_seed(0)
x = torch.randn(n, d, device="cuda", generator=g)
c = x[torch.randperm(n, device="cuda", generator=g)[:k]].clone()
def it(c):
    dist = (c * c).sum(1)[None, :] - 2.0 * (x @ c.T)
    lab = dist.argmin(1)
    s = torch.zeros(k, d, device="cuda").index_add_(0, lab, x)
    cnt = torch.zeros(k, device="cuda").index_add_(0, lab, torch.ones(n, device="cuda"))
    return s / cnt.clamp(min=1)[:, None]
for _ in range(2): c = it(c)
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(10): c = it(c)
torch.cuda.synchronize()
s = (time.perf_counter() - t) / 10
print(json.dumps({"peer": "pytorch", "torch": torch.__version__, "n": n, "d": d, "k": k, "seconds_per_iteration": s,
                  "assign_gflops": 2 * n * k * d / s / 1e9}))
PY
    done
else
    echo "PyTorch with CUDA not available: no PyTorch comparison" | tee "$OUT/torch.txt"
fi
