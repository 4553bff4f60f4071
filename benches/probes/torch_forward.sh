#!/usr/bin/env bash
# Builds and runs torch_forward.cpp against the project's libtorch (the
# torch wheel in .venv, as the model server links it): one JSON line per
# rows x variant. With no model given, exports the bench churn model first.
#
#   benches/probes/torch_forward.sh [MODEL.pt [WIDTH]]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/env.sh
scripts/setup.sh >/dev/null
TORCH=$(python -c 'import os, torch; print(os.path.dirname(torch.__file__))')
BUILD=target/probes
mkdir -p "$BUILD"
g++ -O2 -std=c++20 -D_GLIBCXX_USE_CXX11_ABI=1 \
    -I"$TORCH/include" -I"$TORCH/include/torch/csrc/api/include" \
    benches/probes/torch_forward.cpp -o "$BUILD/torch_forward.tmp" \
    -L"$TORCH/lib" -Wl,-rpath,"$TORCH/lib" -ltorch_cpu -lc10 -ltorch
mv "$BUILD/torch_forward.tmp" "$BUILD/torch_forward"
MODEL=${1:-}
if [ -z "$MODEL" ]; then
    python benches/peers/export_models.py --registry "$BUILD/registry" --users 1000 --items 1000 >&2
    MODEL=$BUILD/registry/churn/1/model.pt
fi
"$BUILD/torch_forward" "$MODEL" "${2:-32}"
