#!/usr/bin/env bash
# The one release build every bench script uses: the same package set each
# time, so cargo unifies dependency features the same way and the benches
# share one build (building a subset, e.g. only encore-model-server and
# encore-benches, selects other DataFusion features and rebuilds it: ~20
# minutes on 2 cores).
#
#   benches/build.sh        (after `source scripts/env.sh`)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --locked -p encore-cli -p encore-scheduler -p encore-executor \
    -p encore-model-server -p encore-benches --bins >&2
