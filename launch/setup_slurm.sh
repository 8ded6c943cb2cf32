#!/usr/bin/env bash
# Installs a local SLURM (Debian's slurmctld, slurmd, slurm-client, munge) for the sweep
# tests, which then start a single-node cluster on localhost in a temporary directory
# (tests/slurm_cluster.py). Nothing is configured or started here.
#   bash launch/setup_slurm.sh        (or source it from launch/test.sh)
# Skips with a message, never fails, where it cannot install: not root, or no apt-get.
# Set DEPTHPI_NO_SLURM=1 to skip it deliberately.
_depthpi_slurm_version() {
  dpkg-query -W -f='slurm ${Version}' slurm-client 2>/dev/null || echo "version unknown"
}
_depthpi_setup_slurm() {
  local missing=()
  local bin
  for bin in slurmctld slurmd sbatch munged; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    echo "[setup] SLURM present: $(_depthpi_slurm_version)"
    return 0
  fi
  if [ "${DEPTHPI_NO_SLURM:-0}" = "1" ]; then
    echo "[setup] DEPTHPI_NO_SLURM=1: not installing SLURM; the SLURM sweep tests will be skipped"
    return 0
  fi
  if [ "$(id -u)" != "0" ]; then
    echo "[setup] SLURM missing (${missing[*]}) and not root: skipping install; the SLURM sweep tests will be skipped"
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "[setup] SLURM missing (${missing[*]}) and no apt-get: skipping install; the SLURM sweep tests will be skipped"
    return 0
  fi
  echo "[setup] installing slurmctld slurmd slurm-client munge (apt-get)"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
           slurmctld slurmd slurm-client munge >/tmp/depthpi-setup-slurm.log 2>&1 \
         || { apt-get update -q >>/tmp/depthpi-setup-slurm.log 2>&1 \
              && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                   slurmctld slurmd slurm-client munge >>/tmp/depthpi-setup-slurm.log 2>&1; }; }; then
    echo "[setup] SLURM install failed (log: /tmp/depthpi-setup-slurm.log); the SLURM sweep tests will be skipped"
    return 0
  fi
  echo "[setup] SLURM installed: $(_depthpi_slurm_version)"
}
_depthpi_setup_slurm
unset -f _depthpi_setup_slurm _depthpi_slurm_version
