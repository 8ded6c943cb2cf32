"""A real single-node SLURM cluster on localhost for the sweep tests.

``slurm_cluster`` (session fixture) generates a munge key and a ``slurm.conf`` in a temp
directory, starts ``munged``, ``slurmctld`` and ``slurmd`` in the foreground as child
processes, points the client tools at them through ``SLURM_CONF``, and stops them by PID
at the end. Binaries come from Debian's slurmctld, slurmd, slurm-client and munge
(``launch/setup_slurm.sh``); without them the tests using the fixture are skipped.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
SLURM_CONF = """\
ClusterName=depthpi-test
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={socket}
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
JobRequeue=1
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=5
MessageTimeout=20
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll ``predicate`` until it returns a truthy value; raise naming ``what`` on time-out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class SlurmCluster:
    """Daemons of one local cluster; ``env`` is what client tools need (``SLURM_CONF``)."""

    def __init__(self, root: Path, cpus: int = 2):
        self.root = root
        self.conf = root / "slurm.conf"
        self.socket = root / "munge" / "munge.socket"
        self.cpus = cpus
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        for sub in ("state", "spool", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        memory_mb = max(1024, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2)
        self.conf.write_text(SLURM_CONF.format(root=self.root, socket=self.socket, cpus=self.cpus,
                                               memory_mb=memory_mb, ctld_port=_free_port(),
                                               slurmd_port=_free_port()))

    def _start(self, name: str, command: list[str]) -> None:
        log = open(self.root / f"{name}.console", "w")
        self.processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                                start_new_session=True)

    def start(self) -> "SlurmCluster":
        """Write the configs and start munged, slurmctld, slurmd; wait for an idle node."""
        self._write_config()
        munge = self.root / "munge"
        self._start("munged", ["munged", "--foreground", "--force", f"--socket={self.socket}",
                               f"--key-file={munge / 'munge.key'}", f"--pid-file={munge / 'munged.pid'}",
                               f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}"])
        wait_for(self.socket.exists, 20, "munged's socket")
        self._start("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._start("slurmd", ["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)])
        wait_for(lambda: "idle" in self.run("sinfo", "-h", "-o", "%T", check=False), 60,
                 f"an idle node (logs in {self.root})")
        return self

    def run(self, *command: str, check: bool = True) -> str:
        """Run a SLURM client command against this cluster; its stdout."""
        done = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=60)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def job_state(self, job_id: str) -> str:
        """``JobState`` of a job (``123`` or array task ``123_1``) from ``scontrol show job``."""
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False)
        for field in out.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return ""

    def stop(self) -> None:
        """Cancel remaining jobs, then stop the daemons by PID (TERM, then KILL)."""
        jobs = self.run("squeue", "-h", "-o", "%A", check=False).split()
        if jobs:
            self.run("scancel", *sorted(set(jobs)), check=False)
            try:
                wait_for(lambda: not self.run("squeue", "-h", "-o", "%A", check=False).split(), 10, "cancelled jobs")
            except TimeoutError:
                pass  # the daemons are stopped below all the same
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running local cluster; ``SLURM_CONF`` is set for the session (restored after)."""
    missing = missing_binaries()
    if missing:
        pytest.skip(f"SLURM not installed (missing {', '.join(missing)}): run launch/setup_slurm.sh as root")
    root = Path(tmp_path_factory.mktemp("slurm"))
    cluster = SlurmCluster(root)
    previous = os.environ.get("SLURM_CONF")
    try:
        cluster.start()
    except Exception as err:
        cluster.stop()
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(root.glob("*.log"))
                         if p.is_file())
        pytest.fail(f"local SLURM cluster did not start: {err}\n{logs}")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        cluster.stop()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
