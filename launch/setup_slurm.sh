#!/usr/bin/env bash
# Installs a local SLURM (Debian's slurmctld, slurmd, slurm-client, munge) and iproute2 for the
# sweep tests, which then start a cluster in a temporary directory (tests/slurm_cluster.py):
# node localhost, and two test hosts in network namespaces where root and iproute2 allow.
# Nothing is configured or started here.
#   bash launch/setup_slurm.sh        (or source it from launch/test.sh)
# Skips with a message, never fails, where it cannot install: not root, or no apt-get.
# Set DEPTHPI_NO_SLURM=1 to skip it deliberately.
_depthpi_slurm_version() {
  dpkg-query -W -f='slurm ${Version}' slurm-client 2>/dev/null || echo "version unknown"
}
_depthpi_setup_slurm() {
  local missing=() packages=()
  local bin
  for bin in slurmctld slurmd sbatch munged; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
  done
  [ "${#missing[@]}" -eq 0 ] || packages+=(slurmctld slurmd slurm-client munge)
  command -v ip >/dev/null 2>&1 || { missing+=(ip); packages+=(iproute2); }
  if [ "${#missing[@]}" -eq 0 ]; then
    echo "[setup] SLURM present: $(_depthpi_slurm_version)"
    return 0
  fi
  if [ "${DEPTHPI_NO_SLURM:-0}" = "1" ]; then
    echo "[setup] DEPTHPI_NO_SLURM=1: not installing ${packages[*]}; the tests that need them will be skipped"
    return 0
  fi
  if [ "$(id -u)" != "0" ]; then
    echo "[setup] missing ${missing[*]} and not root: skipping install; the tests that need them will be skipped"
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "[setup] missing ${missing[*]} and no apt-get: skipping install; the tests that need them will be skipped"
    return 0
  fi
  echo "[setup] installing ${packages[*]} (apt-get)"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
           "${packages[@]}" >/tmp/depthpi-setup-slurm.log 2>&1 \
         || { apt-get update -q >>/tmp/depthpi-setup-slurm.log 2>&1 \
              && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                   "${packages[@]}" >>/tmp/depthpi-setup-slurm.log 2>&1; }; }; then
    echo "[setup] install failed (log: /tmp/depthpi-setup-slurm.log); the tests that need it will be skipped"
    return 0
  fi
  echo "[setup] SLURM installed: $(_depthpi_slurm_version)"
}
_depthpi_setup_slurm
unset -f _depthpi_setup_slurm _depthpi_slurm_version
