#!/usr/bin/env bash
# A lake run from cron, tick after tick: how long does a tick take as the lake ages?
# Per tick: a new file of EVENTS dirty events (a day further every 6 ticks) lands in the inbox,
# then `clicklake run` ingests, cleans, builds, checks and compacts it. Prints one line per tick
# (wall seconds, peak RSS KB, seconds per stage, outcome, files compaction merged) and the files of
# `events` at the end. Uses the debug build unless BIN names another binary.
#   TICKS=100 EVENTS=300 scripts/soak.sh
#   RUN_ARGS=--no-compact scripts/soak.sh       the same ticks without compaction
set -euo pipefail
cd "$(dirname "$0")/.."
export CLICKLAKE_PII_KEY="${CLICKLAKE_PII_KEY:-soak-only-pseudonymisation-key}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clicklake-target}"
TICKS="${TICKS:-100}"
EVENTS="${EVENTS:-300}"
RUN_ARGS="${RUN_ARGS:-}"
if [ -z "${BIN:-}" ]; then
  cargo build --quiet
  BIN="$CARGO_TARGET_DIR/debug/clicklake"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
"$BIN" -q init >/dev/null
mkdir inbox
echo "tick seconds peak_rss_kb stages outcome files_merged"
for i in $(seq 1 "$TICKS"); do
  day=$(date -u -d "2026-01-01 + $((i / 6)) days" +%F)
  "$BIN" -q generate --seed "$i" --events "$EVENTS" --files 1 --days 2 --start "$day" \
    --dirty --out "gen/$i" >/dev/null
  mv "gen/$i/events-0001.ndjson" "inbox/tick-$i.ndjson"
  # shellcheck disable=SC2086
  /usr/bin/time -f "%e %M" -o time.txt "$BIN" -q run --inbox inbox --json $RUN_ARGS >run.json
  python3 - "$i" <<'EOF'
import json, sys
run = json.load(open("run.json"))
seconds, rss = open("time.txt").read().split()
stages = " ".join(f"{name}={s:.2f}" for name, s in run["stage_seconds"])
merged = sum(c["files_removed"] for c in run.get("compact") or [])
print(sys.argv[1], seconds, rss, stages, run["outcome"], merged)
EOF
done
"$BIN" tables | awk 'NR == 1 || $1 == "events" || $1 == "raw_events"'
