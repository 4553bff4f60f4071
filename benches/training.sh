#!/usr/bin/env bash
# Churn training throughput, Encore vs Python PyTorch, one run each on this
# machine: the same wide & deep network (models/src/churn.rs, re-written in
# benches/peers/churn_train.py), the same synthetic rows, batch size, AdamW
# settings and libtorch thread count, the venv's torch 2.13 on both sides.
#
#   benches/training.sh [--rows 200000] [--epochs 4] [--batch-size 512] [--threads 2]
#
# Writes benches/results/training-<timestamp>.jsonl and prints the ratio
# (samples/s, median of the epochs after the first).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
scripts/setup.sh >/dev/null

ARGS=(--rows 200000 --epochs 4 --batch-size 512 --threads 2)
[ $# -gt 0 ] && ARGS=("$@")

echo "bench: building release binaries" >&2
cargo build --release --locked -p encore-cli -p encore-scheduler -p encore-executor -p encore-benches --bins >&2
BIN=${CARGO_TARGET_DIR:-target}/release
mkdir -p benches/results
OUT=benches/results/training-$(date -u +%Y%m%dT%H%M%SZ).jsonl

echo "bench: encore (tch)" >&2
"$BIN/train-throughput" "${ARGS[@]}" | tee -a "$OUT"
echo "bench: python torch" >&2
python benches/peers/churn_train.py "${ARGS[@]}" | tee -a "$OUT"

python - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
encore, torch = rows[0]["samples_per_second"], rows[1]["samples_per_second"]
print(f"churn training: encore {encore:,.0f} samples/s, python {torch:,.0f} samples/s, "
      f"ratio {encore / torch:.2f}x (goal >= 1.3x)")
PY
