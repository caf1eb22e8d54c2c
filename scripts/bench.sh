#!/usr/bin/env bash
# Benchmarks on a release build. Per size: generates dirty events once (cached under bench/data,
# 100 files ordered by time), then per run on a fresh local lake:
#   ingest      all files but the newest ~1% of lines           (the backlog)
#   clean-full  first clean of that backlog                     (= a full refresh)
#   ingest-topup / clean-incr   the newest ~1%: new and late events plus resends (the cron tick)
#   clean-refresh               clean --full-refresh of everything, for the incremental ratio
#   build-full / build-incr / build-refresh   the star schema after each clean
#   q-*                         three typical ad-hoc queries
# Each stage appends one JSON line to bench/results.jsonl (wall and CPU seconds, peak RSS,
# rows/s, MB/s) and a table is printed at the end.
#   SIZES="1000000 10000000" RUNS=3 MEMORY_LIMIT=2GiB scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clicklake-target}"
SIZES="${SIZES:-1000000}"
RUNS="${RUNS:-3}"
MEMORY_LIMIT="${MEMORY_LIMIT:-}"
cargo build --release --locked --quiet
bin="$CARGO_TARGET_DIR/release/clicklake"
mkdir -p bench/data
results=bench/results.jsonl
commit="$(git rev-parse --short HEAD 2>/dev/null || echo dev)"
machine="$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
started_at=$(date -u +%FT%TZ)

stage() { # stage LABEL EVENTS RUN -- CMD...
  local label=$1 n=$2 run=$3; shift 4
  scripts/measure.py "$label" -- "$@" 2>/dev/null | python3 -c '
import json, sys
r = json.loads(sys.stdin.read()); s = r.pop("summary", {}) or {}
rows = s.get("lines") or s.get("raw_rows_consumed") or 0
r.update(events=int(sys.argv[1]), run=int(sys.argv[2]), commit=sys.argv[3], machine=sys.argv[4],
         memory_limit=sys.argv[5] or None, started_at=sys.argv[6], rows=rows,
         rows_per_s=round(rows / r["wall_s"]) if r["wall_s"] else None)
if s.get("bytes_read"):
    r.update(bytes_read=s["bytes_read"], mb_per_s=round(s["bytes_read"] / 1e6 / r["wall_s"], 1))
for k in ("mode", "events_written", "events_changed", "events_copied", "visitors_touched",
          "files_added", "files_removed", "bytes_written", "exact_duplicates", "conflicting_duplicates"):
    if k in s:
        r[k] = s[k]
print(json.dumps(r))' "$n" "$run" "$commit" "$machine" "$MEMORY_LIMIT" "$started_at" | tee -a "$results"
}

for n in $SIZES; do
  data="bench/data/$n"
  if [ ! -f "$data/_manifest.json" ]; then
    "$bin" generate --events "$n" --files 100 --dirty --seed 1 --out "$data" >&2
  fi
  # The top-up is the newest files, about 1% of all lines: new sessions plus the late events and
  # resends the generator routes to later files.
  mapfile -t files < <(ls "$data"/*.ndjson | sort)
  keep=$(wc -l "${files[@]}" | python3 -c '
import sys
counts = [int(l.split()[0]) for l in sys.stdin if not l.strip().endswith(" total")]
total, acc, k = sum(counts), 0, len(counts)
while k > 1 and acc < total / 100:
    k -= 1; acc += counts[k]
print(k)')
  backlog=("${files[@]:0:keep}")
  topup=("${files[@]:keep}")
  for run in $(seq 1 "$RUNS"); do
    lake=$(mktemp -d -p "${BENCH_TMP:-/tmp}")
    flags=(--lake "$lake/lake")
    [ -n "$MEMORY_LIMIT" ] && flags+=(--memory-limit "$MEMORY_LIMIT")
    stage ingest "$n" "$run" -- "$bin" "${flags[@]}" ingest --json "${backlog[@]}"
    stage clean-full "$n" "$run" -- "$bin" "${flags[@]}" clean --json
    stage build-full "$n" "$run" -- "$bin" "${flags[@]}" build --json
    stage ingest-topup "$n" "$run" -- "$bin" "${flags[@]}" ingest --json "${topup[@]}"
    stage clean-incr "$n" "$run" -- "$bin" "${flags[@]}" clean --json
    stage build-incr "$n" "$run" -- "$bin" "${flags[@]}" build --json
    stage clean-refresh "$n" "$run" -- "$bin" "${flags[@]}" clean --json --full-refresh
    stage build-refresh "$n" "$run" -- "$bin" "${flags[@]}" build --json --full-refresh
    # Typical ad-hoc queries: one day of one segment; one customer's features; a week's funnel.
    stage q-day-segment "$n" "$run" -- "$bin" "${flags[@]}" sql --format csv -c \
      "SELECT event_type, count(*) FROM events WHERE event_date = DATE '2026-01-07' AND segment = 'anonymous' GROUP BY 1"
    stage q-user-features "$n" "$run" -- "$bin" "${flags[@]}" sql --format csv -c \
      "SELECT * FROM agg_user_features WHERE user_key = (SELECT max(user_key) FROM dim_user WHERE is_registered)"
    stage q-funnel-week "$n" "$run" -- "$bin" "${flags[@]}" sql --format csv -c \
      "SELECT device, sum(sessions), sum(sessions_with_cart), sum(sessions_checkout), sum(sessions_purchased) FROM agg_funnel_daily WHERE session_date BETWEEN DATE '2026-01-05' AND DATE '2026-01-11' GROUP BY 1"
    rm -rf "$lake"
  done
done

python3 - "$results" "$started_at" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [r for r in rows if r.get("started_at") == sys.argv[2]]
groups = {}
for r in rows:
    groups.setdefault((r["events"], r["label"]), []).append(r)
print(f"\n{'events':>10} {'stage':<14} {'runs':>4} {'wall s':>8} {'cpu s':>8} {'rows/s':>10} {'MB/s':>7} {'peak RSS MB':>12}")
for (n, label), rs in groups.items():
    med = lambda k: statistics.median([r[k] for r in rs if r.get(k) is not None] or [0])
    print(f"{n:>10} {label:<14} {len(rs):>4} {med('wall_s'):>8.2f} {med('cpu_s'):>8.2f} "
          f"{med('rows_per_s'):>10.0f} {med('mb_per_s'):>7.1f} {med('peak_rss_mb'):>12.0f}")
EOF
