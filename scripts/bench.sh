#!/usr/bin/env bash
# Ingest benchmark on a release build: generates dirty events once per size (cached under
# bench/data), ingests them into a fresh local lake, and appends one JSON line per run to
# bench/results.jsonl (wall and CPU seconds, peak RSS, events/s, MB/s).
#   SIZES="1000000 10000000" RUNS=3 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clicklake-target}"
SIZES="${SIZES:-1000000}"
RUNS="${RUNS:-3}"
cargo build --release --locked --quiet
bin="$CARGO_TARGET_DIR/release/clicklake"
mkdir -p bench/data
results=bench/results.jsonl
for n in $SIZES; do
  data="bench/data/$n"
  files=$(( n / 100000 )); [ "$files" -lt 10 ] && files=10; [ "$files" -gt 20 ] && files=20
  if [ ! -f "$data/_manifest.json" ]; then
    "$bin" generate --events "$n" --files "$files" --dirty --seed 1 --out "$data" >&2
  fi
  for run in $(seq 1 "$RUNS"); do
    lake=$(mktemp -d)
    line=$(scripts/measure.py "ingest-$n" -- "$bin" --lake "$lake/lake" ingest --json "$data" 2>/dev/null)
    rm -rf "$lake"
    echo "$line" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read()); s = r.get("summary", {})
r.update(events=int(sys.argv[1]), run=int(sys.argv[2]), commit=sys.argv[3], machine=sys.argv[4],
         lines=s.get("lines"), bytes_read=s.get("bytes_read"),
         lines_per_s=round(s.get("lines", 0) / r["wall_s"]), mb_per_s=round(s.get("bytes_read", 0) / 1e6 / r["wall_s"], 1))
r.pop("summary", None)
print(json.dumps(r))' "$n" "$run" "$(git rev-parse --short HEAD 2>/dev/null || echo dev)" "$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB" | tee -a "$results"
  done
done
