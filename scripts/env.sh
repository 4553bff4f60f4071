# Sourced by the other scripts: one place for the build environment.
# libtorch comes from the torch wheel in the project virtualenv (tch 0.26
# checks for exactly torch 2.13.0).
ENCORE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ENCORE_ROOT
export ENCORE_VENV="${ENCORE_VENV:-$ENCORE_ROOT/.venv}"
export PATH="$ENCORE_VENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export LIBTORCH_BYPASS_VERSION_CHECK=0
