#!/usr/bin/env bash
# The main job, end to end: sets up what is missing, builds `encore`, then
# generates a music platform's data, starts a standalone cluster (scheduler
# + executor) and runs feature queries on it. Arguments go to `encore demo`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ENCORE_ROOT"
scripts/setup.sh

cargo build --locked -p encore-cli --bin encore
exec "${CARGO_TARGET_DIR:-target}/debug/encore" demo "$@"
