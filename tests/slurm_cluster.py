"""A real SLURM cluster on this machine for the sweep tests: ``localhost`` and two test hosts.

``slurm_cluster`` (session fixture) generates a munge key and a ``slurm.conf`` in a temp
directory, starts ``munged``, ``slurmctld`` and a ``slurmd`` per node as child processes,
points the client tools at them through ``SLURM_CONF``, and stops them by PID at the end.
Node ``localhost`` (partition ``debug``, the default) runs in this machine's network. Where
network namespaces can be made (root, iproute2), nodes ``h1`` and ``h2`` (partition
``hosts``) are test hosts: each a network namespace with its own address on a bridge beside
the controller, and an ``/etc/hosts`` of its own (a private mount namespace) naming both, as
a cluster's DNS would; a job across them rendezvouses over two network stacks. Where they
cannot be made, ``cluster.hosts`` is None and ``cluster.no_hosts`` says why. Binaries come
from Debian's slurmctld, slurmd, slurm-client, munge and iproute2 (``launch/setup_slurm.sh``).
"""
from __future__ import annotations

import os
import random
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
SlurmctldHost={ctld_host}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={socket}
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
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
SlurmdParameters=config_overrides
SchedulerParameters=sched_interval=1
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=5
MessageTimeout=20
"""
# Node lines: the test hosts' before localhost's (after it, slurm 22.05 reports "Duplicated NodeHostName").
NODE = "NodeName={name} NodeAddr={address} NodeHostname={name} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN\n"
PARTITION = "PartitionName={name} Nodes={nodes} MaxTime=INFINITE State=UP{default}\n"


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


class TwoHosts:
    """Nodes ``h1``, ``h2``: network namespaces joined by veth pairs to a bridge that carries
    the controller's address (``10.77.N.1``; the hosts are ``.2`` and ``.3``). Names carry a
    free ``N``, so that concurrent test runs on one machine do not meet."""

    NAMES = ("h1", "h2")

    def __init__(self, root: Path):
        self.root = root
        used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
        self.net = next(n for n in random.sample(range(1, 255), 254) if f" 10.77.{n}." not in used)
        self.bridge, self.gateway = f"dpb{self.net}", f"10.77.{self.net}.1"
        self.namespaces = {h: f"dp{self.net}{h}" for h in self.NAMES}
        self.addresses = {h: f"10.77.{self.net}.{i + 2}" for i, h in enumerate(self.NAMES)}
        self.hosts_file = root / "hosts"

    def create(self) -> "TwoHosts":
        """Make the bridge and the namespaces; raise RuntimeError saying what failed (nothing left behind)."""
        commands = [["ip", "link", "add", self.bridge, "type", "bridge"],
                    ["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge],
                    ["ip", "link", "set", self.bridge, "up"]]
        for i, host in enumerate(self.NAMES):
            ns, veth = self.namespaces[host], f"dp{self.net}v{i}"
            commands += [["ip", "netns", "add", ns],
                         ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns],
                         ["ip", "link", "set", veth, "master", self.bridge], ["ip", "link", "set", veth, "up"],
                         ["ip", "-n", ns, "addr", "add", f"{self.addresses[host]}/24", "dev", "eth0"],
                         ["ip", "-n", ns, "link", "set", "eth0", "up"], ["ip", "-n", ns, "link", "set", "lo", "up"]]
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                self.remove()
                raise RuntimeError(f"'{' '.join(command)}' failed: {done.stderr.strip()}")
        names = "".join(f"{self.addresses[h]} {h}\n" for h in self.NAMES)
        self.hosts_file.write_text(Path("/etc/hosts").read_text() + names)
        return self

    def command(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` run on ``host``: in its network namespace (``nsenter``: ``ip netns exec`` would
        remount /sys, and slurmd then fails on cgroups) with its own /etc/hosts."""
        return ["nsenter", f"--net=/run/netns/{self.namespaces[host]}", "unshare", "--mount", "--propagation",
                "private", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(self.hosts_file), *argv]

    def remove(self) -> None:
        for ns in self.namespaces.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def make_test_hosts(root: Path) -> tuple[TwoHosts | None, str]:
    """The test hosts, or None and why they cannot be made here."""
    missing = [b for b in ("ip", "nsenter", "unshare", "mount") if shutil.which(b) is None]
    if missing:
        return None, f"missing {', '.join(missing)} (iproute2, util-linux)"
    if os.geteuid() != 0:
        return None, "network namespaces need root"
    try:
        hosts = TwoHosts(root).create()
    except RuntimeError as err:
        return None, str(err)
    probe = subprocess.run(hosts.command("h1", ["getent", "hosts", "h2"]), capture_output=True, text=True)
    if probe.returncode or hosts.addresses["h2"] not in probe.stdout:  # e.g. no mount namespace in a container
        hosts.remove()
        return None, f"a test host could not be entered ({probe.stderr.strip() or probe.stdout.strip()})"
    return hosts, ""


class SlurmCluster:
    """Daemons of one local cluster; ``env`` is what client tools need (``SLURM_CONF``)."""

    def __init__(self, root: Path, cpus: int = 4):
        self.root = root
        self.conf = root / "slurm.conf"
        self.socket = root / "munge" / "munge.socket"
        self.cpus = cpus
        self.hosts: TwoHosts | None = None
        self.no_hosts = "not started"
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    @property
    def nodes(self) -> list[str]:
        return ["localhost", *(TwoHosts.NAMES if self.hosts else ())]

    def _write_config(self) -> None:
        for sub in ("state", "spool", "munge", *(f"spool/{n}" for n in self.nodes)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        memory_mb = max(1024, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2)
        ctld_host = f"{socket.gethostname().split('.')[0]}({self.hosts.gateway})" if self.hosts else "localhost"
        text = SLURM_CONF.format(root=self.root, socket=self.socket, ctld_host=ctld_host, ctld_port=_free_port(),
                                 slurmd_port=_free_port())
        hosts = self.hosts.addresses if self.hosts else {}
        text += "".join(NODE.format(name=h, address=a, cpus=2, memory_mb=memory_mb) for h, a in hosts.items())
        text += NODE.format(name="localhost", address="127.0.0.1", cpus=self.cpus, memory_mb=memory_mb)
        text += PARTITION.format(name="debug", nodes="localhost", default=" Default=YES")
        text += PARTITION.format(name="hosts", nodes=",".join(hosts), default="") if hosts else ""
        self.conf.write_text(text)

    def _start(self, name: str, command: list[str]) -> None:
        log = open(self.root / f"{name}.console", "w")
        self.processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                                start_new_session=True)

    def start(self) -> "SlurmCluster":
        """Make the test hosts if possible, write the configs, start the daemons; wait for idle nodes."""
        self.hosts, self.no_hosts = make_test_hosts(self.root)
        self._write_config()
        munge = self.root / "munge"
        self._start("munged", ["munged", "--foreground", "--force", f"--socket={self.socket}",
                               f"--key-file={munge / 'munge.key'}", f"--pid-file={munge / 'munged.pid'}",
                               f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}"])
        wait_for(self.socket.exists, 20, "munged's socket")
        self._start("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        for node in self.nodes:
            slurmd = ["slurmd", "-D", "-N", node, "-f", str(self.conf)]
            self._start(f"slurmd-{node}", self.hosts.command(node, slurmd) if node != "localhost" else slurmd)
        wait_for(lambda: self.run("sinfo", "-h", "-N", "-o", "%T", check=False).split() == ["idle"] * len(self.nodes),
                 60, f"{len(self.nodes)} idle node(s) (logs in {self.root})")
        return self

    def run(self, *command: str, check: bool = True) -> str:
        """Run a SLURM client command against this cluster; its stdout."""
        done = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=60)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def job_state(self, job_id: str) -> str:
        """``JobState`` of a job (``123`` or array task ``123_1``) from ``scontrol show job``."""
        return self.job_field(job_id, "JobState")

    def job_field(self, job_id: str, name: str) -> str:
        """One ``Name=value`` field of ``scontrol show job`` ('' when absent)."""
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False)
        return next((f.split("=", 1)[1] for f in out.split() if f.startswith(f"{name}=")), "")

    def stop(self) -> None:
        """Cancel remaining jobs, stop the daemons by PID (TERM, then KILL), remove the test hosts."""
        jobs = self.run("squeue", "-h", "-o", "%A", check=False).split()
        if jobs:
            self.run("scancel", *sorted(set(jobs)), check=False)
            try:
                wait_for(lambda: not self.run("squeue", "-h", "-o", "%A", check=False).split(), 10, "cancelled jobs")
            except TimeoutError:
                pass  # the daemons are stopped below all the same
        for name in [*(f"slurmd-{n}" for n in self.nodes), "slurmctld", "munged"]:
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self.hosts:
            self.hosts.remove()


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
