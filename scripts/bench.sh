#!/usr/bin/env bash
# Benchmarks on a release build. Per size: generates dirty events once (cached under bench/data,
# 100 files ordered by time), then per run on a fresh local lake:
#   ingest      all files but the newest ~1% of lines           (the backlog)
#   clean-full  first clean of that backlog                     (= a full refresh)
#   ingest-topup / clean-incr   the newest ~1%: new and late events plus resends (the cron tick)
#   clean-refresh               clean --full-refresh of everything, for the incremental ratio
#   build-full / build-incr / build-refresh   the star schema after each clean
#   q-*                         three typical ad-hoc queries
#   files                       live files and sizes per partition of the main tables (Delta logs)
#   duck-ingest / duck-build    the DuckDB reference (scripts/duckdb_reference.py, threads=2) on
#                               the same backlog files, with the same semantics; its counts must
#                               equal clicklake's (lines, landed, quarantined per reason, events,
#                               sessions, orders, customers, product-days, revenue per currency)
#   duck-simple                 DuckDB's quick path the issue quoted (read_ndjson with a fixed
#                               schema, a few filters, dedup, partitioned write): speed only
# Each stage appends one JSON line to bench/results.jsonl (wall and CPU seconds, peak RSS, peak
# anonymous memory (RSS less mapped code, sampled: see scripts/measure.py), rows/s, MB/s) and
# tables of medians and clicklake/DuckDB ratios are printed at the end.
#   SIZES="1000000 10000000" RUNS=3 MEMORY_LIMIT=1GiB scripts/bench.sh
#   STORE=s3 scripts/bench.sh      the lake on s3s-fs on loopback (DuckDB stays on local disk)
#   DUCKDB=0 scripts/bench.sh      skip the reference
set -euo pipefail
# The generated events carry e-mails and IPs, pseudonymised at landing (as in production).
export CLICKLAKE_PII_KEY="${CLICKLAKE_PII_KEY:-bench-only-pseudonymisation-key}"
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clicklake-target}"
SIZES="${SIZES:-1000000}"
RUNS="${RUNS:-3}"
MEMORY_LIMIT="${MEMORY_LIMIT:-}"
STORE="${STORE:-local}"
DUCKDB="${DUCKDB:-1}"
PY="$HOME/.cache/clicklake-py/bin/python"
if [ "$DUCKDB" = 1 ] && ! "$PY" -c "import duckdb" >/dev/null 2>&1; then
  echo "installing the duckdb Python package into $HOME/.cache/clicklake-py..." >&2
  python3 -m venv "$HOME/.cache/clicklake-py"
  "$HOME/.cache/clicklake-py/bin/pip" install --quiet "duckdb==2.0.0" "pyarrow==26.0.1"
fi
if [ "$STORE" = s3 ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
  s3root=$(mktemp -d -p "${BENCH_TMP:-/tmp}")
  mkdir -p "$s3root/bench"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  s3s-fs --host 127.0.0.1 --port "$port" --access-key bench --secret-key benchsecret "$s3root" >/dev/null 2>&1 &
  s3pid=$!
  trap 'kill $s3pid 2>/dev/null; rm -rf "$s3root"' EXIT
  export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret \
    AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
  # s3s-fs does not set TCP_NODELAY: a request on a reused connection waits ~40 ms for a delayed ACK.
  export CLICKLAKE_S3_REUSE_CONNECTIONS=false
  # Wait until the server answers (a loaded machine can take a few seconds to start it).
  python3 -c '
import socket, sys, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.2).close(); sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("s3s-fs did not start on port " + sys.argv[1])' "$port"
fi
cargo build --release --locked --quiet
bin="$CARGO_TARGET_DIR/release/clicklake"
mkdir -p bench/data
# Data cached by another generator version (other bytes for the same seed) is made again.
manifest_version() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("generator_version", 1))' "$1"
}
probe=$(mktemp -d)
"$bin" generate --events 1 --files 1 --out "$probe" >/dev/null
generator_version=$(manifest_version "$probe/_manifest.json")
rm -rf "$probe"
results=bench/results.jsonl
commit="$(git rev-parse --short HEAD 2>/dev/null || echo dev)"
machine="$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
started_at=$(date -u +%FT%TZ)

stage() { # stage LABEL EVENTS RUN -- CMD...
  local label=$1 n=$2 run=$3; shift 4
  local err="${BENCH_TMP:-/tmp}/clicklake-bench-$$.err"
  trap 'status=$?; if [ $status -ne 0 ] && [ -s "'"$err"'" ]; then echo "a stage failed; its last output:" >&2; tail -5 "'"$err"'" >&2; fi' ERR
  scripts/measure.py "$label" -- "$@" 2>"$err" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read()); s = r.pop("summary", {}) or {}
rows = s.get("lines") or s.get("raw_rows_consumed") or 0
r.update(events=int(sys.argv[1]), run=int(sys.argv[2]), commit=sys.argv[3], machine=sys.argv[4],
         memory_limit=sys.argv[5] or None, started_at=sys.argv[6], rows=rows, store=sys.argv[7],
         rows_per_s=round(rows / r["wall_s"]) if r["wall_s"] else None)
if s.get("bytes_read"):
    r.update(bytes_read=s["bytes_read"], mb_per_s=round(s["bytes_read"] / 1e6 / r["wall_s"], 1))
for k in ("mode", "events_written", "events_changed", "events_copied", "visitors_touched",
          "files_added", "files_removed", "bytes_written", "exact_duplicates", "conflicting_duplicates"):
    if k in s:
        r[k] = s[k]
for k in ("landed", "quarantined", "quarantined_by_reason", "events_rows", "sessions", "orders",
          "user_features", "product_daily", "revenue_by_currency"):
    if k in s:
        r[k] = s[k]
print(json.dumps(r))' "$n" "$run" "$commit" "$machine" "$MEMORY_LIMIT" "$started_at" "$STORE" | tee -a "$results"
}

for n in $SIZES; do
  data="bench/data/$n"
  if [ -f "$data/_manifest.json" ] && [ "$(manifest_version "$data/_manifest.json")" != "$generator_version" ]; then
    echo "bench data in $data is from another generator version; generating it again" >&2
    rm -rf "$data"
  fi
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
    if [ "$STORE" = s3 ]; then
      # A short prefix: s3s-fs keeps a multipart upload's metadata in a file named after the
      # base64 of the key, so keys over ~130 bytes fail with 500 InternalError (ENAMETOOLONG).
      s3runs=$(( ${s3runs:-0} + 1 ))
      flags=(--lake "s3://bench/r$s3runs")
    else
      flags=(--lake "$lake/lake")
    fi
    [ -n "$MEMORY_LIMIT" ] && flags+=(--memory-limit "$MEMORY_LIMIT")
    stage ingest "$n" "$run" -- "$bin" "${flags[@]}" ingest --json "${backlog[@]}"
    stage clean-full "$n" "$run" -- "$bin" "${flags[@]}" clean --json
    stage build-full "$n" "$run" -- "$bin" "${flags[@]}" build --json
    # The counts the DuckDB reference must reproduce on the same backlog.
    "$bin" "${flags[@]}" sql --format json -o "$lake/counts.json" -c "
      SELECT (SELECT count(*) FROM raw_events) AS landed,
             (SELECT count(*) FROM quarantine) AS quarantined,
             (SELECT count(*) FROM events) AS events_rows,
             (SELECT count(*) FROM fact_sessions) AS sessions,
             (SELECT count(*) FROM fact_orders) AS orders,
             (SELECT count(*) FROM agg_user_features) AS user_features,
             (SELECT count(*) FROM agg_product_daily) AS product_daily" 2>/dev/null
    "$bin" "${flags[@]}" sql --format json -o "$lake/by_reason.json" -c \
      "SELECT reason, count(*) AS n FROM quarantine GROUP BY 1" 2>/dev/null
    "$bin" "${flags[@]}" sql --format json -o "$lake/revenue.json" -c \
      "SELECT currency, CAST(sum(revenue) AS VARCHAR) AS revenue FROM fact_orders GROUP BY 1" 2>/dev/null
    # Files written per partition, from each table's Delta log (the s3s-fs bucket is a directory).
    if [ "$STORE" = s3 ]; then lakedir="$s3root/bench/r$s3runs"; else lakedir="$lake/lake"; fi
    "$PY" scripts/lake_files.py "$lakedir" raw_events quarantine events fact_sessions fact_orders \
      agg_user_features agg_product_daily | "$PY" -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    r.update(label="files", events=int(sys.argv[1]), run=int(sys.argv[2]), commit=sys.argv[3],
             machine=sys.argv[4], memory_limit=sys.argv[5] or None, started_at=sys.argv[6],
             store=sys.argv[7])
    print(json.dumps(r))' "$n" "$run" "$commit" "$machine" "$MEMORY_LIMIT" "$started_at" "$STORE" \
      | tee -a "$results"
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
    if [ "$DUCKDB" = 1 ]; then
      # The reference on the backlog; its counts against clicklake's after build-full.
      duck="$lake/duck"
      export DUCKDB_MEMORY_LIMIT=""
      [ -n "$MEMORY_LIMIT" ] && export DUCKDB_MEMORY_LIMIT="${MEMORY_LIMIT/iB/B}"
      stage duck-ingest "$n" "$run" -- "$PY" scripts/duckdb_reference.py ingest "$duck" "${backlog[@]}"
      stage duck-build "$n" "$run" -- "$PY" scripts/duckdb_reference.py build "$duck"
      # The quick path the issue quoted (no per-rule classification): speed only.
      stage duck-simple "$n" "$run" -- "$PY" scripts/duckdb_reference.py simple "$lake/duck-simple" "${backlog[@]}"
      rm -rf "$lake/duck-simple"
      python3 -c '
import json, sys
counts = json.load(open(sys.argv[1]))[0]
counts["quarantined_by_reason"] = {r["reason"]: r["n"] for r in json.load(open(sys.argv[2]))}
counts["revenue_by_currency"] = {r["currency"]: r["revenue"] for r in json.load(open(sys.argv[3]))}
print(json.dumps(counts))' "$lake/counts.json" "$lake/by_reason.json" "$lake/revenue.json" \
        | python3 -c '
import json, sys
ours = json.loads(sys.stdin.read())
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
mine = [r for r in rows if r.get("started_at") == sys.argv[2] and r["events"] == int(sys.argv[3]) and r["run"] == int(sys.argv[4])]
duck = {}
for r in mine:
    if r["label"] in ("duck-ingest", "duck-build"):
        duck.update({k: r[k] for k in ours if k in r})
bad = {k: (ours[k], duck.get(k)) for k in ours if ours[k] != duck.get(k)}
print("same counts as DuckDB:" if not bad else "COUNTS DIFFER (clicklake, duckdb):", bad or ours, file=sys.stderr)
sys.exit(1 if bad else 0)' "$results" "$started_at" "$n" "$run"
    fi
    rm -rf "$lake"
  done
done

python3 - "$results" "$started_at" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [r for r in rows if r.get("started_at") == sys.argv[2]]
groups = {}
layout = [r for r in rows if r["label"] == "files"]
rows = [r for r in rows if r["label"] != "files"]
for r in rows:
    groups.setdefault((r["events"], r["label"]), []).append(r)
print(f"\n{'events':>10} {'stage':<14} {'runs':>4} {'wall s':>8} {'cpu s':>8} {'rows/s':>10} {'MB/s':>7} {'peak RSS MB':>12} {'anon MB':>8}")
for (n, label), rs in groups.items():
    med = lambda k: statistics.median([r[k] for r in rs if r.get(k) is not None] or [0])
    print(f"{n:>10} {label:<14} {len(rs):>4} {med('wall_s'):>8.2f} {med('cpu_s'):>8.2f} "
          f"{med('rows_per_s'):>10.0f} {med('mb_per_s'):>7.1f} {med('peak_rss_mb'):>12.0f} "
          # Under 100 ms a stage may end before its first sample.
          + (f"{med('peak_anon_mb'):>8.0f}" if any(r.get("peak_anon_mb") for r in rs) else f"{'-':>8}"))
sizes = sorted({n for n, _ in groups})
def med(n, label, k="wall_s"):
    vs = [r[k] for r in groups.get((n, label), []) if r.get(k) is not None]
    return statistics.median(vs) if vs else None
pairs = [("ingest + clean-full", ["ingest", "clean-full"], ["duck-ingest"]),
         ("  vs DuckDB quick path", ["ingest", "clean-full"], ["duck-simple"]),
         ("build-full", ["build-full"], ["duck-build"])]
if any((n, "duck-ingest") in groups for n in sizes):
    print(f"\n{'events':>10} {'clicklake vs DuckDB':<22} {'clicklake s':>11} {'DuckDB s':>9} {'ratio':>6} {'RSS MB':>7} {'DuckDB RSS':>10} {'anon MB':>8} {'DuckDB anon':>11}")
    peak = lambda n, labels, k: max((med(n, l, k) or 0) for l in labels)
    for n in sizes:
        for name, ours, theirs in pairs:
            a = [med(n, l) for l in ours]; b = [med(n, l) for l in theirs]
            if None in a or None in b:
                continue
            print(f"{n:>10} {name:<22} {sum(a):>11.2f} {sum(b):>9.2f} {sum(a)/sum(b):>6.2f} "
                  f"{peak(n, ours, 'peak_rss_mb'):>7.0f} {peak(n, theirs, 'peak_rss_mb'):>10.0f} "
                  f"{peak(n, ours, 'peak_anon_mb'):>8.0f} {peak(n, theirs, 'peak_anon_mb'):>11.0f}")
if layout:
    print(f"\n{'events':>10} {'table (run 1)':<18} {'partitions':>10} {'files':>6} {'files/partition':>16} {'file MB min/med/max':>22}")
    for r in layout:
        if r["run"] == 1:
            fpp = "/".join(str(x) for x in r["files_per_partition"])
            mb = "/".join(str(x) for x in r["file_mb"])
            print(f"{r['events']:>10} {r['table']:<18} {r['partitions']:>10} {r['files']:>6} {fpp:>16} {mb:>22}")
for n in sizes:
    inc, full = med(n, "clean-incr"), med(n, "clean-refresh")
    binc, bfull = med(n, "build-incr"), med(n, "build-refresh")
    if inc and full:
        print(f"{n:>10} incremental after a 1% top-up: clean {inc:.2f}s = {100*inc/full:.0f}% of a full refresh"
              + (f", build {binc:.2f}s = {100*binc/bfull:.0f}%" if binc and bfull else ""))
EOF
