#!/usr/bin/env bash
# Runs the test suite on CPU. Sets up .venv (and, where possible, a local SLURM) itself.
#   bash launch/test.sh [pytest args]
export DEPTHPI_EXTRAS="${DEPTHPI_EXTRAS:-dev,deepspeed,export}"
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
# A single-node SLURM (slurmctld, slurmd, munge) for the sweep tests; skipped where apt is unavailable.
source "$(dirname "${BASH_SOURCE[0]}")/setup_slurm.sh"
exec python -m pytest tests "$@"
