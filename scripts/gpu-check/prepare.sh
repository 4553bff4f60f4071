#!/usr/bin/env bash
# Prepares gpucheck/ (git-ignored) for scripts/gpu-check/check.py, which runs
# on a machine with a GPU and a Python torch but no Rust toolchain: models
# trained and exported by this checkout's release `encore` (churn and
# recommend, small synthetic data) plus a 100,000-item recommend module from
# benches/peers/export_models.py for timings. About 1.5 minutes; ~30 MB.
#
#   scripts/gpu-check/prepare.sh        (after benches/build.sh)
#   then, on the GPU machine, from the repository root, with gpucheck/ copied
#   along:  python3 scripts/gpu-check/check.py   (writes $OUT/gpucheck.json)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/env.sh
BIN=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
rm -rf gpucheck
mkdir -p gpucheck/bench
"$BIN/encore" datagen --users 3000 --items 2000 --days 75 --out "$WORK/data" >&2
for kind in churn recommend; do
    "$BIN/encore" train "$kind" --data "$WORK/data" --cutoff 2026-02-15 --registry gpucheck/registry >&2
done
python benches/peers/export_models.py --registry "$WORK/bench" --users 1000 --items 100000 >&2
cp "$WORK/bench/recommend/1/model.pt" gpucheck/bench/recommend.pt
cp "$WORK/bench/recommend/1/manifest.json" gpucheck/bench/recommend.json
du -sh gpucheck
