#!/usr/bin/env bash
# Training throughput, Encore vs Python PyTorch, one run each on this
# machine, for both models: the wide & deep churn network
# (models/src/churn.rs, re-written in benches/peers/churn_train.py) and the
# two-tower recommender (models/src/recommend.rs, benches/peers/
# recommend_train.py). Same synthetic data, batch size, AdamW settings and
# libtorch thread count, the venv's torch 2.13 on both sides. The recommend
# peer runs twice: as a Python team would first write it, and with
# --distinct, Encore's formulation (towers once per distinct user and item).
#
#   benches/training.sh [--no-build]
#
# --no-build uses the release binaries already built (they must match the
# checkout).
#
# Writes benches/results/training-<timestamp>.jsonl and prints the ratios
# (samples/s, median of the epochs after the first).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
scripts/setup.sh >/dev/null

CHURN=(--rows 200000 --epochs 4 --batch-size 512 --threads 2)
RECOMMEND=(--model recommend --rows 200000 --users 4000 --items 2000 --epochs 4 --batch-size 1024 --threads 2)

case "${1:-}" in
    "") echo "bench: building release binaries" >&2
        benches/build.sh ;;
    --no-build) ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
esac
BIN=${CARGO_TARGET_DIR:-target}/release
mkdir -p benches/results
OUT=benches/results/training-$(date -u +%Y%m%dT%H%M%SZ).jsonl

echo "bench: churn, encore (tch) then python torch" >&2
"$BIN/train-throughput" "${CHURN[@]}" | tee -a "$OUT"
python benches/peers/churn_train.py "${CHURN[@]}" | tee -a "$OUT"
echo "bench: recommend, encore (tch) then python torch" >&2
"$BIN/train-throughput" "${RECOMMEND[@]}" | tee -a "$OUT"
python benches/peers/recommend_train.py "${RECOMMEND[@]}" | tee -a "$OUT"
echo "bench: recommend, python torch with Encore's per-distinct-row formulation" >&2
python benches/peers/recommend_train.py "${RECOMMEND[@]}" --distinct | tee -a "$OUT"

python - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for model, (encore, torch) in (("churn", rows[0:2]), ("recommend", rows[2:4])):
    e, t = encore["samples_per_second"], torch["samples_per_second"]
    print(f"{model} training: encore {e:,.0f} samples/s, python {t:,.0f} samples/s, "
          f"ratio {e / t:.2f}x (goal >= 1.3x)")
# The same recommend step written the way Encore computes it (each distinct
# user and item of a batch through its tower once): what is left is the
# language, not the formulation.
e, d = rows[2]["samples_per_second"], rows[4]["samples_per_second"]
print(f"recommend training vs python written the same way (--distinct): "
      f"python {d:,.0f} samples/s, ratio {e / d:.2f}x")
PY
