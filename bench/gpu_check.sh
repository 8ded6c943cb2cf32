#!/usr/bin/env bash
# The GPU check in one command (bench/gpu_check.py says what it measures):
#   bash bench/gpu_check.sh [--out DIR] [--tiny] [--keep-work]
# Python: $DEPTHPI_PYTHON if set; else .venv/bin/python when its torch sees CUDA (any torch
# with --tiny); else python3. Packages that Python lacks are installed from the wheels in
# .whl/ (bench/gpu_wheels.sh fills it; a device run carries it) into a folder of its own.
# The 8-minute budget counts from here: setup is part of it.
set -uo pipefail
export GPU_CHECK_STARTED="${GPU_CHECK_STARTED:-$(date +%s)}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

tiny=0
for arg in "$@"; do [ "$arg" = "--tiny" ] && tiny=1; done
venv_ok() {
    [ -x .venv/bin/python ] && .venv/bin/python -c \
        "import sys, torch; sys.exit(0 if $tiny or torch.cuda.is_available() else 1)" 2>/dev/null
}
if [ -n "${DEPTHPI_PYTHON:-}" ]; then PY="$DEPTHPI_PYTHON"
elif venv_ok; then PY="$ROOT/.venv/bin/python"
else PY="$(command -v python3)"
fi

NEEDED="import torch, accelerate, omegaconf, webdataset, tensorboard, cv2, yaml, deepspeed"
if ! "$PY" -c "$NEEDED" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        SITE="${TMPDIR:-/tmp}/depthpi-gpu-check-site"
        echo "[gpu_check.sh] installing the carried wheels into $SITE: $(ls .whl | tr '\n' ' ')"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
            && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "[gpu_check.sh] $PY lacks some of: ${NEEDED#import } and there is no .whl/ (bash bench/gpu_wheels.sh)"
    fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
echo "[gpu_check.sh] $("$PY" --version 2>&1) at $PY; setup took $(( $(date +%s) - GPU_CHECK_STARTED )) s"
exec "$PY" bench/gpu_check.py "$@"
