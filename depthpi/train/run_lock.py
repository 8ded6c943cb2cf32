"""One writer per run directory: the run whose main process holds ``run_dir/run.lock``.

The main process takes an exclusive ``fcntl`` lock on the file (a POSIX record lock, which
network file systems with lock support honour across nodes) and writes its host, pid and
start time into it. The kernel drops the lock when the process ends, however it ends, so a
crash never leaves a run directory locked. The other ranks of the run take no lock of
their own: they share their main process's and learn its verdict from a collective, so a
refused run stops on every rank at once. A second run started on a held directory is
refused at start, naming the holder.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from depthpi.dist import first_on_any_rank

LOCK_NAME = "run.lock"


class RunDirBusy(ValueError):
    """The run directory is held by another live process (one line naming it)."""


class RunDirLock:
    """The exclusive lock of one run directory, held by this process until :meth:`release`."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and record who holds it.

        Raises:
            RunDirBusy: another process holds it (its host, pid and start time named).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EAGAIN or EACCES: held by another process
            os.close(fd)  # this process held no lock on the file: closing it releases nothing of ours
            raise RunDirBusy(self._refusal()) from None
        os.ftruncate(fd, 0)
        holder = {"host": socket.gethostname(), "pid": os.getpid(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        os.write(fd, (json.dumps(holder) + "\n").encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the lock
            self.fd = None

    def _refusal(self) -> str:
        try:
            holder = json.loads(self.path.read_text()[:4096])
            who = f"pid {holder['pid']} on host {holder['host']} (since {holder['since']})"
        except (OSError, ValueError, TypeError, KeyError):
            who = "another process (it has not recorded itself yet)"
        return (f"{self.path.parent}: this run directory is in use by {who}, which holds {self.path}; wait for "
                f"that run to end (or stop it), or choose another run.out_dir")


@contextlib.contextmanager
def hold_run_dir(run_dir: str | Path, is_main: bool) -> Iterator[None]:
    """Hold ``run_dir`` for the run while the block runs (a collective: every rank enters).

    Raises:
        RunDirBusy: on every rank, when another process holds the directory.
    """
    lock, refusal = RunDirLock(run_dir), None
    if is_main:
        try:
            lock.acquire()
        except RunDirBusy as err:
            refusal = str(err)
    refusal = first_on_any_rank(refusal, "run directory lock")
    if refusal:
        lock.release()
        raise RunDirBusy(refusal)
    try:
        yield
    finally:
        lock.release()
