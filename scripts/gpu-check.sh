#!/usr/bin/env bash
# On a machine with a real GPU: build, check GPU-vs-CPU agreement, and time the
# passes with `microseg bench` at n = 10⁷, d = 32, k ∈ {256, 1024}, and exact top-k
# search (`bench --topk`: 1,000 queries over 10⁶ rows of 384 dimensions, top 10,
# what `neighbors` and `similar` run); where PyTorch is installed, time the same Lloyd
# iteration (matmul + argmin + index_add) and the same top-k (matmul + topk) on the
# same card. Writes everything to ${OUT:-gpu-check-out}/, table.md (each pass's
# seconds on the CPU, the GPU and PyTorch, and which of the CPU and the GPU wins) and
# auto.json: where each kind of pass won on this adapter. Jobs on such a machine set
# MICROSEG_AUTO_FILE=.../auto.json and `--backend auto` follows it.
#   scripts/gpu-check.sh [ROWS] [TOPK_ROWS]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROWS=${1:-10000000}
TOPK_ROWS=${2:-1000000}
OUT=${OUT:-$ROOT/gpu-check-out}
mkdir -p "$OUT"
rm -f "$OUT"/agreement.jsonl "$OUT"/bench.jsonl "$OUT"/topk.jsonl "$OUT"/torch.jsonl "$OUT"/torch.txt "$OUT"/auto.json
cd "$ROOT"
# NVIDIA machines may lack the Vulkan loader's ICD path: point it at the driver's.
for icd in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; do
    if [ -f "$icd" ] && [ -z "${VK_DRIVER_FILES:-}" ]; then export VK_DRIVER_FILES="$icd"; fi
done
cargo build --release --quiet 2>&1 | tail -5
MS=target/release/microseg
ALLOW=""
case "${MICROSEG_ALLOW_SOFTWARE_GPU:-0}" in 1 | true | yes | on) ALLOW=--allow-software-gpu ;; esac
$MS info $ALLOW | tee "$OUT/info.txt"
$MS info $ALLOW --json >"$OUT/info.json"
# Agreement on the shipped real data set and on generated data (small, quick).
$MS generate --rows 200000 --dims 32 --clusters 24 --out "$OUT/agree.parquet" --force --quiet
for input in datasets/online_retail_customers.parquet "$OUT/agree.parquet"; do
    $MS bench "$input" --k 64 --iters 2 --backends cpu,gpu --json | tee -a "$OUT/agreement.jsonl"
done
# Timings at scale (generated in memory by bench).
for k in 256 1024; do
    $MS bench --rows "$ROWS" --dims 32 --k "$k" --iters 5 --backends gpu,cpu --json | tee -a "$OUT/bench.jsonl"
done
# Exact top-k (the lists compared with the CPU's in the report).
$MS bench --topk 1000 --rows "$TOPK_ROWS" --dims 384 --k 10 --iters 3 --backends gpu,cpu --json | tee -a "$OUT/topk.jsonl"
if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    python3 - "$TOPK_ROWS" 384 1000 10 <<'PY' | tee -a "$OUT/torch.jsonl"
import json, sys, time, torch
n, d, q, k = map(int, sys.argv[1:5])
g = torch.Generator(device="cuda").manual_seed(0)
x = torch.nn.functional.normalize(torch.randn(n, d, device="cuda", generator=g), dim=1)
y = torch.nn.functional.normalize(torch.randn(q, d, device="cuda", generator=g), dim=1)
def search():
    return torch.topk(y @ x.T, k, dim=1)
for _ in range(2): search()
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(10): search()
torch.cuda.synchronize()
s = (time.perf_counter() - t) / 10
print(json.dumps({"peer": "pytorch", "torch": torch.__version__, "mode": "topk", "n": n, "d": d, "queries": q, "k": k,
                  "seconds": s, "note": "f32 scores on the device (not exact re-scored)"}))
PY
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
# The table: one line per pass; "wins" is the faster of microseg's CPU and GPU.
python3 - "$OUT" <<'PY' | tee "$OUT/table.md"
import json, os, sys
out = sys.argv[1]
def lines(name):
    p = os.path.join(out, name)
    return [json.loads(l) for l in open(p) if l.strip().startswith("{")] if os.path.exists(p) else []
torch = lines("torch.jsonl")
print("| pass | shape | cpu s | gpu s | pytorch s (its whole Lloyd iteration; its f32 top-k) | gpu / cpu | wins | exact on gpu |")
print("|---|---|---|---|---|---|---|---|")
def row(label, shape, res, secs, exact, peer):
    cpu = next((secs(r) for r in res if r["backend"] == "cpu"), None)
    gpu = next((r for r in res if r["backend"] != "cpu"), None)
    gs = secs(gpu) if gpu else None
    f = lambda v: "-" if v is None else f"{v:.4f}"
    ratio = f"{gs / cpu:.2f}" if gs and cpu else "-"
    wins = "-" if gs is None or cpu is None else ("gpu" if gs < cpu else "cpu")
    print(f"| {label} | {shape} | {f(cpu)} | {f(gs)} | {f(peer['seconds_per_iteration'] if peer and 'seconds_per_iteration' in peer else (peer or {}).get('seconds'))} | {ratio} | {wins} | {exact(gpu) if gpu else '-'} |")
for b in lines("bench.jsonl"):
    peer = next((t for t in torch if t.get("mode") != "topk" and t["k"] == b["k"]), None)
    row("k-means assign", f"n={b['n']} d={b['d']} k={b['k']}", b["results"], lambda r: r["assign_seconds"],
        lambda g: f"labels agree: {g['label_agreement_with_cpu']:.6f}", peer)
for b in lines("topk.jsonl"):
    peer = next((t for t in torch if t.get("mode") == "topk"), None)
    row("top-k search", f"n={b['n']} d={b['d']} q={b['queries']} k={b['k']}", b["results"], lambda r: r["seconds"],
        lambda g: f"lists identical: {json.dumps(g['lists_identical_to_cpu'])}", peer)
# auto.json: the GPU for a kind of pass only where it won every shape measured, exactly.
def side(runs, secs, exact):
    won = []
    for b in runs:
        cpu = next((r for r in b["results"] if r["backend"] == "cpu"), None)
        gpu = next((r for r in b["results"] if r["backend"] != "cpu"), None)
        won.append(bool(cpu and gpu and secs(gpu) < secs(cpu) and exact(gpu)))
    return "gpu" if won and all(won) else "cpu"
info = json.load(open(os.path.join(out, "info.json")))
auto = {
    "adapter": info.get("auto_adapter"),
    "kmeans": side(lines("bench.jsonl"), lambda r: r["assign_seconds"], lambda g: g["mismatches_beyond_near_ties"] == 0),
    "similarity": side(lines("topk.jsonl"), lambda r: r["seconds"], lambda g: g["lists_identical_to_cpu"] is True),
}
if auto["adapter"] is not None:
    json.dump(auto, open(os.path.join(out, "auto.json"), "w"))
    print(f"\nauto.json: {json.dumps(auto)}")
PY
