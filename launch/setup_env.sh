# Sourced by launch/demo.sh and launch/test.sh: creates .venv and installs depthpi into it.
# Needs only a Python >= 3.10 on PATH. Re-running is cheap: the install is skipped while
# pyproject.toml is unchanged. Its own variables are prefixed (and unset at the end): the
# scripts that source it keep their names.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
_setup_extras="${DEPTHPI_EXTRAS:-}"
_setup_stamp=.venv/.depthpi-installed
_setup_want="$(sha256sum pyproject.toml | cut -c1-16) ${_setup_extras}"
if [ ! -f "$_setup_stamp" ] || [ "$(cat "$_setup_stamp")" != "$_setup_want" ]; then
  echo "[setup] installing torch (CPU build) and depthpi${_setup_extras:+[$_setup_extras]} into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # torch first, pinned to the CPU build on this machine's disk; the package itself
  # declares torch>=2.3, which this satisfies without pulling a CUDA build.
  .venv/bin/python -m pip install -q "torch==${DEPTHPI_TORCH_VERSION:-2.13.0}" 2>&1 | grep -v "^WARNING: Location" || true
  if [[ ",$_setup_extras," == *",deepspeed,"* ]]; then
    # DeepSpeed's setup.py imports torch: without the installed one (no build isolation)
    # pip would fetch a multi-GB CUDA torch into the isolated build environment.
    .venv/bin/python -m pip install -q --no-build-isolation "deepspeed>=0.14" 2>&1 | grep -v "^WARNING: Location" || true
  fi
  # opencv-python(-headless) and the contrib build depthpi needs install the same cv2 files: where an
  # older .venv has a plain build, every build goes, and the contrib one is installed afresh below.
  if .venv/bin/python -m pip show -q opencv-python-headless >/dev/null 2>&1 \
     || .venv/bin/python -m pip show -q opencv-python >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall -q -y opencv-python-headless opencv-python opencv-contrib-python-headless \
      >/dev/null 2>&1 || true
  fi
  .venv/bin/python -m pip install -q -e ".${_setup_extras:+[$_setup_extras]}" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import depthpi, torch, webdataset, cv2; cv2.HOGDescriptor" || { echo "[setup] install failed" >&2; exit 1; }
  echo "$_setup_want" > "$_setup_stamp"
fi
unset _setup_extras _setup_stamp _setup_want
export PATH="$ROOT/.venv/bin:$PATH"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
