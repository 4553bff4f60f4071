#!/usr/bin/env bash
# Training throughput, Encore vs Python PyTorch, in interleaved rounds on this
# machine, for both models: the wide & deep churn network
# (models/src/churn.rs, re-written in benches/peers/churn_train.py) and the
# two-tower recommender (models/src/recommend.rs, benches/peers/
# recommend_train.py). Same synthetic data, batch size, AdamW settings and
# libtorch thread count, the venv's torch 2.13 on both sides. The headline
# peers are written as a Python team would first write them (default
# AdamW); the churn peer runs again with AdamW(fused=True), the one-kernel
# step Encore's optimiser calls (models/src/optim.rs), and the recommend peer
# again with --distinct, Encore's formulation (towers once per distinct user
# and item), plain and fused: the last is the same computation on both sides.
#
#   benches/training.sh [--no-build] [--rounds N]
#
# --no-build uses the release binaries already built (they must match the
# checkout). Every variant runs once per round (default 3 rounds), the
# variants interleaved, so that a slow spell of this shared VM hits both
# sides; a run's figure is samples/s, the median of its epochs after the
# first, and a variant's figure the median over its rounds. Ratios are of
# those medians, with the range of the per-round ratios beside them.
#
# Writes benches/results/training-<timestamp>.jsonl (one line per run,
# tagged with its variant and round) and prints the ratios.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
scripts/setup.sh >/dev/null

CHURN=(--rows 200000 --epochs 4 --batch-size 512 --threads 2)
RECOMMEND=(--model recommend --rows 200000 --users 4000 --items 2000 --epochs 4 --batch-size 1024 --threads 2)

BUILD=1
ROUNDS=3
while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-build) BUILD=0 ;;
        --rounds) ROUNDS="${2:?--rounds needs a number}"; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "--rounds: a positive number, not $ROUNDS" >&2; exit 2; }
if [[ "$BUILD" == 1 ]]; then
    echo "bench: building release binaries" >&2
    benches/build.sh
fi
BIN=${CARGO_TARGET_DIR:-target}/release
mkdir -p benches/results
OUT=benches/results/training-$(date -u +%Y%m%dT%H%M%SZ).jsonl

# run VARIANT ROUND COMMAND...: one run, its JSON line tagged and kept.
run() {
    local variant="$1" round="$2"
    shift 2
    echo "bench: round $round/$ROUNDS, $variant" >&2
    "$@" | sed "s|^{|{\"variant\":\"$variant\",\"round\":$round,|" | tee -a "$OUT"
}
for round in $(seq 1 "$ROUNDS"); do
    run churn/encore "$round" "$BIN/train-throughput" "${CHURN[@]}"
    run churn/python "$round" python benches/peers/churn_train.py "${CHURN[@]}"
    run churn/python-fused "$round" python benches/peers/churn_train.py "${CHURN[@]}" --fused
    run recommend/encore "$round" "$BIN/train-throughput" "${RECOMMEND[@]}"
    run recommend/python "$round" python benches/peers/recommend_train.py "${RECOMMEND[@]}"
    run recommend/python-distinct "$round" \
        python benches/peers/recommend_train.py "${RECOMMEND[@]}" --distinct
    run recommend/python-distinct-fused "$round" \
        python benches/peers/recommend_train.py "${RECOMMEND[@]}" --distinct --fused
done

python - "$OUT" <<'PY'
import json, statistics, sys
by = {}
for l in open(sys.argv[1]):
    r = json.loads(l)
    by.setdefault(r["variant"], {})[r["round"]] = r["samples_per_second"]
med = {v: statistics.median(rounds.values()) for v, rounds in by.items()}
def line(what, a, b, goal=""):
    paired = sorted(by[a][k] / by[b][k] for k in by[a] if k in by[b])
    print(f"{what}: encore {med[a]:,.0f} samples/s, python {med[b]:,.0f} samples/s, "
          f"ratio {med[a] / med[b]:.2f}x (rounds {paired[0]:.2f}-{paired[-1]:.2f}x){goal}")
print(f"medians over {len(by['churn/encore'])} rounds:")
line("churn training", "churn/encore", "churn/python", ", goal >= 1.3x")
line("recommend training", "recommend/encore", "recommend/python", ", goal >= 1.3x")
line("churn vs python with AdamW(fused=True)", "churn/encore", "churn/python-fused")
line("recommend vs python written as Encore is (--distinct)", "recommend/encore",
     "recommend/python-distinct")
line("recommend vs the same, fused (--distinct --fused)", "recommend/encore",
     "recommend/python-distinct-fused")
PY
