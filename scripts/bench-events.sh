#!/usr/bin/env bash
# Events → features against DuckDB on the same Parquet log, side by side on this machine:
# microseg features (every feature) against DuckDB computing only the per-subscriber
# counts, sums, recency and hour-of-day histograms (SET threads TO 2).
# Usage: scripts/bench-events.sh [SUBSCRIBERS] [DAYS]   (default 1000000 240: about 10^8 events)
# Needs: target/release/microseg, and a Python with duckdb and pyarrow ($PYTHON, default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
SUBS="${1:-1000000}"
DAYS="${2:-240}"
PY="${PYTHON:-.venv/bin/python}"
BIN=target/release/microseg
DATA=bench-data
mkdir -p "$DATA"
LOG="$DATA/events_s${SUBS}_d${DAYS}.parquet"
[ -f "$LOG" ] || "$BIN" generate-events --subscribers "$SUBS" --days "$DAYS" --out "$LOG" --quiet
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($(nproc) threads)"
"$PY" - "$LOG" <<'PY'
import sys, pyarrow.parquet as pq
m = pq.ParquetFile(sys.argv[1]).metadata
print(f"log: {m.num_rows} events, {m.num_row_groups} row groups")
PY
for run in 1 2; do
    /usr/bin/time -f "microseg features: %e s wall, %U s user, %M KB peak RSS" \
        "$BIN" features --events "$LOG" --as-of 2026-06-30 --value-col value --category-col category \
        --timezone-col timezone --out "$DATA/features.parquet" --force --quiet
    /usr/bin/time -f "duckdb 2 threads: %e s wall, %U s user, %M KB peak RSS" "$PY" - "$LOG" <<'PY'
import sys, duckdb
con = duckdb.connect()
con.execute("SET threads TO 2")
con.execute(f"""
COPY (
  SELECT subscriber_id,
    count(*) FILTER (WHERE event = 'purchase') AS orders,
    count(DISTINCT CAST(timestamp AS DATE)) FILTER (WHERE event = 'purchase') AS purchase_days,
    sum(value) AS revenue,
    max(timestamp) FILTER (WHERE event = 'purchase') AS last_purchase,
    min(timestamp) FILTER (WHERE event = 'purchase') AS first_purchase,
    count(*) FILTER (WHERE event = 'send') AS sends,
    count(*) FILTER (WHERE event = 'open') AS opens,
    count(*) FILTER (WHERE event = 'click') AS clicks,
    count(*) FILTER (WHERE event = 'open' AND timestamp > TIMESTAMPTZ '2026-06-01 00:00:00+00') AS opens_30d,
    max(timestamp) FILTER (WHERE event = 'open') AS last_open,
    histogram(hour(timestamp)) FILTER (WHERE event IN ('open', 'click')) AS hours
  FROM read_parquet('{sys.argv[1]}') WHERE timestamp <= TIMESTAMPTZ '2026-06-30 23:59:59+00'
  GROUP BY subscriber_id
) TO '/dev/null' (FORMAT parquet)
""")
PY
done
