#!/usr/bin/env bash
# The main job on a local lake with generated sample data: generate dirty clickstream, ingest it,
# clean it into events, build the star schema, check it, show the tables, and run queries. Safe to re-run (ingest is exactly-once per file).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clicklake-target}"
# Build the way the tests do (same feature set), so the demo and the tests share one build.
cargo test --locked --no-run --quiet
bin="$CARGO_TARGET_DIR/debug/clicklake"
lake="${CLICKLAKE_LAKE:-./demo/lake}"
data=./demo/inbox
# The generated events carry e-mails and IPs: ingest pseudonymises them with this key (a real
# lake keeps its key in a secret store, never in the lake or a script).
export CLICKLAKE_PII_KEY="${CLICKLAKE_PII_KEY:-demo-only-pseudonymisation-key}"

"$bin" generate --events 100000 --files 4 --dirty --seed 42 --out "$data"
"$bin" --lake "$lake" ingest "$data"
"$bin" --lake "$lake" clean
"$bin" --lake "$lake" build
"$bin" --lake "$lake" check --quiet
"$bin" --lake "$lake" tables
echo
echo "The tables are Delta tables under $lake. Try:"
query="SELECT event_date, segment, count(*) AS events FROM raw_events GROUP BY 1, 2 ORDER BY 1, 2"
echo "  $bin --lake $lake sql -c \"$query\""
"$bin" --lake "$lake" sql -c "$query"
"$bin" --lake "$lake" sql -c "SELECT reason, count(*) AS lines FROM quarantine GROUP BY 1 ORDER BY 2 DESC"
"$bin" --lake "$lake" sql -c "SELECT session_source, count(DISTINCT session_key) AS sessions, count(*) AS events FROM events GROUP BY 1"
"$bin" --lake "$lake" sql -c "SELECT segment, device, sum(sessions) AS sessions, sum(sessions_with_cart) AS carts, sum(sessions_purchased) AS purchases FROM agg_funnel_daily GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 8"
"$bin" --lake "$lake" sql -c "SELECT primary_segment, count(*) AS customers FROM dim_user GROUP BY 1 ORDER BY 2 DESC"
