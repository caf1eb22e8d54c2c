#!/usr/bin/env bash
# Runs every test: installs what the tests need (s3s-fs), then cargo nextest on the debug profile.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clicklake-target}"

if ! command -v s3s-fs >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
  echo "installing s3s-fs 0.14.1 (S3-compatible server for the storage tests)..." >&2
  cargo install --locked s3s-fs@0.14.1 --features binary
fi
export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "installing cargo-nextest..." >&2
  cargo install --locked cargo-nextest
fi

cargo nextest run --locked --no-fail-fast "$@"
