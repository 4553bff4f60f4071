#!/usr/bin/env bash
# Installs what Encore needs on a fresh machine, idempotently: a project
# virtualenv with the PyTorch wheel that tch links against, and the Python
# clients used by tests. Fast (a few seconds) when everything is already there.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

TORCH_VERSION=2.13.0
PY_REQUIREMENTS="$ENCORE_ROOT/scripts/requirements.txt"

if [ ! -x "$ENCORE_VENV/bin/python" ]; then
    echo "setup: creating virtualenv $ENCORE_VENV"
    python3 -m venv "$ENCORE_VENV"
fi

# A stamp records what was installed, so the common case costs no pip call.
stamp="$ENCORE_VENV/.encore-setup"
want="torch==$TORCH_VERSION $(sha256sum "$PY_REQUIREMENTS" | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing torch==$TORCH_VERSION and Python requirements (first run only, ~2 minutes)"
    "$ENCORE_VENV/bin/pip" install --quiet --disable-pip-version-check \
        "torch==$TORCH_VERSION" -r "$PY_REQUIREMENTS"
    echo "$want" > "$stamp"
fi

installed=$("$ENCORE_VENV/bin/python" -c 'import torch; print(torch.__version__)')
case "$installed" in
    "$TORCH_VERSION"*) ;;
    *) echo "setup: expected torch $TORCH_VERSION in $ENCORE_VENV, found $installed" >&2; exit 1 ;;
esac
