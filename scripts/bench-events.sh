#!/usr/bin/env bash
# Events → features against DuckDB, Polars and DataFusion on the same Parquet log, side by
# side on this machine: microseg features (every feature) against each engine computing
# only the per-subscriber counts, sums, recency and hour-of-day histograms, on 2 threads.
# The Polars and DataFusion runs are the embedded engines the events issue weighed for
# the aggregation (their Python packages drive the same Rust engines a Rust build would).
# Usage: scripts/bench-events.sh [SUBSCRIBERS] [DAYS]   (default 1000000 240: about 10^8 events)
# Needs: target/release/microseg, and a Python with duckdb, polars, datafusion and pyarrow
# ($PYTHON, default .venv/bin/python, where scripts/test.sh installs all but datafusion:
# .venv/bin/pip install datafusion; ENGINES="duckdb polars datafusion" to choose).
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
ENGINES="${ENGINES:-duckdb polars datafusion}"
"$PY" - $ENGINES <<'PY'
import importlib, sys
print(", ".join(f"{e} {importlib.import_module(e).__version__}" for e in sys.argv[1:]))
PY
for run in 1 2; do
    /usr/bin/time -f "microseg features: %e s wall, %U s user, %M KB peak RSS" \
        "$BIN" features --events "$LOG" --as-of 2026-06-30 --value-col value --category-col category \
        --timezone-col timezone --out "$DATA/features.parquet" --force --quiet
    case " $ENGINES " in *" duckdb "*) ;; *) SKIP_DUCKDB=1 ;; esac
    [ -n "${SKIP_DUCKDB:-}" ] || /usr/bin/time -f "duckdb 2 threads: %e s wall, %U s user, %M KB peak RSS" "$PY" - "$LOG" <<'PY'
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
    case " $ENGINES " in *" polars "*)
    POLARS_MAX_THREADS=2 /usr/bin/time -f "polars 2 threads: %e s wall, %U s user, %M KB peak RSS" "$PY" - "$LOG" <<'PY'
import datetime, sys, polars as pl
ts, ev = pl.col("timestamp"), pl.col("event")
utc = datetime.timezone.utc
as_of = datetime.datetime(2026, 6, 30, 23, 59, 59, tzinfo=utc)
since = datetime.datetime(2026, 6, 1, tzinfo=utc)
buy, eng = ev == "purchase", ev.is_in(["open", "click"])
(
    pl.scan_parquet(sys.argv[1])
    .filter(ts <= as_of)
    .group_by("subscriber_id")
    .agg(
        buy.sum().alias("orders"),
        ts.dt.date().filter(buy).n_unique().alias("purchase_days"),
        pl.col("value").sum().alias("revenue"),
        ts.filter(buy).max().alias("last_purchase"),
        ts.filter(buy).min().alias("first_purchase"),
        (ev == "send").sum().alias("sends"),
        (ev == "open").sum().alias("opens"),
        (ev == "click").sum().alias("clicks"),
        ((ev == "open") & (ts > since)).sum().alias("opens_30d"),
        ts.filter(ev == "open").max().alias("last_open"),
        *[(eng & (ts.dt.hour() == h)).sum().alias(f"h{h}") for h in range(24)],
    )
    .sink_parquet("/dev/null")
)
PY
    ;; esac
    case " $ENGINES " in *" datafusion "*)
    rm -f "$DATA/datafusion_out.parquet"
    /usr/bin/time -f "datafusion 2 partitions: %e s wall, %U s user, %M KB peak RSS" "$PY" - "$LOG" "$DATA/datafusion_out.parquet" <<'PY'
import sys, datafusion
ctx = datafusion.SessionContext(datafusion.SessionConfig().with_target_partitions(2))
ctx.register_parquet("ev", sys.argv[1])
hours = ",\n".join(
    f"count(*) FILTER (WHERE event IN ('open', 'click') AND date_part('hour', timestamp) = {h}) AS h{h}"
    for h in range(24)
)
# DataFusion writes a file (it takes /dev/null for a directory); its output is 10^6 rows.
ctx.sql(f"""
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
    count(*) FILTER (WHERE event = 'open' AND timestamp > TIMESTAMP '2026-06-01T00:00:00Z') AS opens_30d,
    max(timestamp) FILTER (WHERE event = 'open') AS last_open,
    {hours}
  FROM ev WHERE timestamp <= TIMESTAMP '2026-06-30T23:59:59Z'
  GROUP BY subscriber_id
) TO '{sys.argv[2]}' STORED AS PARQUET
""").collect()
PY
    ;; esac
done
