#!/usr/bin/env bash
# Runs every test: installs what the tests need (s3s-fs, pyarrow in a venv), then cargo nextest on the debug profile.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clicklake-target}"

if ! command -v s3s-fs >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
  echo "installing s3s-fs 0.14.1 (S3-compatible server for the storage tests)..." >&2
  cargo install --locked s3s-fs@0.14.1 --features binary
fi
export PATH="$HOME/.cargo/bin:$PATH"

# pyarrow, for the test that reads the lake with another engine (scripts/read_delta.py).
PY="$HOME/.cache/clicklake-py"
if ! "$PY/bin/python" -c "import pyarrow.parquet" >/dev/null 2>&1; then
  echo "installing pyarrow into $PY (external-reader test)..." >&2
  python3 -m venv "$PY"
  "$PY/bin/pip" install --quiet "pyarrow==26.0.1"
fi
export CLICKLAKE_PYTHON="$PY/bin/python"

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "installing cargo-nextest..." >&2
  cargo install --locked cargo-nextest
fi

cargo nextest run --locked --no-fail-fast "$@"
