# Sourced by launch/demo.sh and launch/test.sh: creates .venv and installs depthpi into it.
# Needs only a Python >= 3.10 on PATH. Re-running is cheap: the install is skipped while
# pyproject.toml is unchanged.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
EXTRAS="${DEPTHPI_EXTRAS:-}"
STAMP=.venv/.depthpi-installed
WANT="$(sha256sum pyproject.toml | cut -c1-16) ${EXTRAS}"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing torch (CPU build) and depthpi${EXTRAS:+[$EXTRAS]} into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # torch first, pinned to the CPU build on this machine's disk; the package itself
  # declares torch>=2.3, which this satisfies without pulling a CUDA build.
  .venv/bin/python -m pip install -q "torch==${DEPTHPI_TORCH_VERSION:-2.13.0}" 2>&1 | grep -v "^WARNING: Location" || true
  if [[ ",$EXTRAS," == *",deepspeed,"* ]]; then
    # DeepSpeed's setup.py imports torch: without the installed one (no build isolation)
    # pip would fetch a multi-GB CUDA torch into the isolated build environment.
    .venv/bin/python -m pip install -q --no-build-isolation "deepspeed>=0.14" 2>&1 | grep -v "^WARNING: Location" || true
  fi
  .venv/bin/python -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import depthpi, torch, webdataset, cv2" || { echo "[setup] install failed" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
