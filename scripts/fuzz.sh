#!/usr/bin/env bash
# Run every cargo fuzz target for a bounded time (default 60 s each; FUZZ_SECONDS=N),
# starting from the seeds kept in fuzz/seeds/<target> (which hold every crash found so
# far, as regressions). Any crash fails the script and leaves the input in
# fuzz/artifacts/<target>/; add it to fuzz/seeds/<target>/ once fixed.
#
# cargo-fuzz needs unstable rustc flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them, so no nightly is needed. Without a sanitizer (-s none) the run finds
# panics, aborts, hangs and runaway memory, which is what the safe Rust code can do.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${FUZZ_SECONDS:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version "^0.13" --quiet
fi
export RUSTC_BOOTSTRAP=1
cd fuzz
targets=$(cargo fuzz list)
cargo fuzz build -s none
for t in $targets; do
    mkdir -p "corpus/$t"
    echo "fuzz: $t for ${SECONDS_EACH}s"
    log="$(mktemp)"
    status=0
    cargo fuzz run -s none "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECONDS_EACH" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E "^stat::(number_of_executed_units|peak_rss_mb)" "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -60 "$log" >&2
        echo "fuzz: $t crashed (exit $status); the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    rm -f "$log"
done
echo "fuzz: every target ran ${SECONDS_EACH}s without a crash"
