#!/usr/bin/env bash
# Runs the test suite on CPU. Sets up .venv (and, where possible, a local SLURM) itself.
#   bash launch/test.sh [pytest args]
export DEPTHPI_EXTRAS="${DEPTHPI_EXTRAS:-dev,deepspeed,export}"
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
# DeepSpeed JIT-compiles its CPU communication op on first use (~1.5 min of one core on a
# fresh machine): start it now, beside the SLURM install and the first tests; the DeepSpeed
# test waits for the marker (tests/conftest.py, deepspeed_cpu_ops).
if python -c "import deepspeed, transformers" >/dev/null 2>&1; then
  export DEPTHPI_SHM_OP_BUILT="$(mktemp -u /tmp/depthpi-shm-op.XXXXXX)"
  (DS_ACCELERATOR=cpu python -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" \
     >/tmp/depthpi-shm-op-build.log 2>&1; touch "$DEPTHPI_SHM_OP_BUILT") &
fi
# A local SLURM (slurmctld, slurmd, munge; iproute2 for two test hosts) for the sweep tests; skipped where apt is unavailable.
source "$(dirname "${BASH_SOURCE[0]}")/setup_slurm.sh"
# Two test workers (pytest-xdist) of one torch thread each: most tests keep one core busy and
# many wait on subprocesses, SLURM or a socket. A file's tests stay on one worker unless the
# file spreads them, slow ones first, in the suite's order (tests/conftest.py);
# DEPTHPI_TEST_WORKERS=0 runs them in one process.
WORKERS="${DEPTHPI_TEST_WORKERS:-2}"
if [ "$WORKERS" -gt 0 ]; then
  python -m pytest -n "$WORKERS" --dist loadgroup --no-loadscope-reorder --durations=15 tests "$@"
else
  python -m pytest --durations=15 tests "$@"
fi
