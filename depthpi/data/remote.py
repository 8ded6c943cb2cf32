"""Reading a split's files from a server: one argument list per file, never a shell.

``http(s)://`` (and ftp/sftp/scp) files are read with ``curl``; ``pipe:CMD`` runs the
user's command split into words, without a shell, the file's name joined to its last word.
A name from a manifest has passed :func:`depthpi.data.shards.check_shard_name` and lands
inside one argument only. Every read has a connect and a stall timeout and a size bound
(:class:`TransportError`); :func:`fetch` retries, :func:`check_reachable` tells a server
outage (:class:`ServerUnreachable`) from one bad file. Settings: :class:`RemoteConfig`
(``data.remote``), made this process's default by :func:`configure`.

docs/shards.md ("Remote splits") has the details.
"""
from __future__ import annotations

import io
import logging
import math
import os
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import IO
from urllib.parse import quote, urlsplit

from depthpi.io import HashingStream
from depthpi.validation import check

log = logging.getLogger(__name__)

CURL_SCHEMES = ("http", "https", "ftp", "ftps", "sftp", "scp")
SCHEMES = CURL_SCHEMES + ("pipe", "gs")
_BLOCK = 1 << 20


@dataclass(frozen=True)
class RemoteConfig:
    """How files of a split on a server are read (config key ``data.remote``).

    Attributes:
        connect_timeout_s: seconds to open a connection (curl's ``--connect-timeout``).
        stall_timeout_s: seconds without a byte after which a read is abandoned (any URL,
            ``pipe:`` commands included; it also bounds the wait for the first byte).
        retries: further tries of a file after a failed read; then a shard is reported
            missing (or the run stops, when the server itself cannot be reached).
        retry_delay_s: seconds before the first retry, doubled before each next one.
    """

    connect_timeout_s: float = 30.0
    stall_timeout_s: float = 120.0
    retries: int = 2
    retry_delay_s: float = 2.0

    def __post_init__(self):
        for key in ("connect_timeout_s", "stall_timeout_s"):
            check(getattr(self, key) > 0, key, "seconds > 0", getattr(self, key))
        check(0 <= self.retries <= 100, "retries", "an integer in [0, 100]", self.retries)
        check(0 <= self.retry_delay_s <= 3600, "retry_delay_s", "seconds in [0, 3600]", self.retry_delay_s)


_settings = RemoteConfig()


def configure(cfg: RemoteConfig | None) -> None:
    """Make ``cfg`` this process's settings for remote reads (None: keep them)."""
    global _settings
    if cfg is not None:
        _settings = cfg


def settings() -> RemoteConfig:
    return _settings


class TransportError(OSError):
    """A read from a server that failed: no connection, a stall, a non-zero exit, too many bytes."""


class ServerUnreachable(ConnectionError):
    """A split's server cannot be reached at all (not one file: the server). One line."""


# --- commands -------------------------------------------------------------------------
def scheme_of(root: str) -> str:
    return root.split(":", 1)[0].lower()


def command(root: str, name: str, cfg: RemoteConfig | None = None) -> list[str]:
    """The argument list that writes file ``name`` of the split at ``root`` to stdout.

    ``name`` must already be a checked shard name (or ``manifest.json``); it becomes part
    of exactly one argument, whatever it holds.

    Raises:
        ValueError: a scheme this module does not read, or an empty ``pipe:`` command.
    """
    cfg = cfg or _settings
    scheme = scheme_of(root)
    if scheme == "pipe":
        words = shlex.split(root[len("pipe:"):])
        if not words:
            raise ValueError(f"{root!r}: empty pipe: command (expected pipe:CMD whose last word is the split's "
                             f"location)")
        return words[:-1] + [f"{words[-1]}/{name}"]
    url = f"{root}/{quote(name)}"
    if scheme in CURL_SCHEMES:
        return ["curl", "--fail", "--silent", "--show-error", "--location", "--proto-redir", "=http,https",
                "--connect-timeout", f"{cfg.connect_timeout_s:g}",
                # curl's own stall guard; the reader's select() below bounds every command the same way
                "--speed-limit", "1", "--speed-time", str(math.ceil(cfg.stall_timeout_s)), url]
    if scheme == "gs":
        return ["gsutil", "cat", url]
    raise ValueError(f"{root}: scheme {scheme!r} is not read by depthpi (use {', '.join(SCHEMES[:2])}:// or "
                     f"pipe:CMD)")


def server_of(root: str) -> str:
    """What to call the server of a split in a message: ``scheme://host:port``, or the pipe command."""
    if scheme_of(root) == "pipe":
        return f"pipe command {root[len('pipe:'):].strip()!r}"
    parts = urlsplit(root)
    return f"{parts.scheme}://{parts.netloc}"


# --- one watched read -------------------------------------------------------------------
class _CommandReader(io.RawIOBase):
    """stdout of a command, read with a stall timeout, a byte limit and its exit status checked at EOF."""

    def __init__(self, argv: list[str], where: str, stall_s: float, limit: int | None):
        super().__init__()
        self.where, self.stall_s, self.limit, self.received, self.done = where, stall_s, limit, 0, False
        self.program = argv[0]
        self.stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.stderr,
                                         start_new_session=True)  # its own group: a kill reaches its children
        except OSError as err:
            self.stderr.close()
            raise TransportError(f"{where}: cannot run {self.program!r} ({err.strerror or err})") from None
        self.fd = self.proc.stdout.fileno()
        self.poller = select.poll()  # not select(): a busy process may hold fds beyond 1024
        self.poller.register(self.fd, select.POLLIN | select.POLLHUP | select.POLLERR)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.done:
            return 0
        if not self.poller.poll(self.stall_s * 1000):
            self._kill()
            raise TransportError(f"{self.where}: no data for {self.stall_s:g} s (the server stalls; "
                                 f"data.remote.stall_timeout_s)")
        data = os.read(self.fd, len(buffer))
        if not data:
            self._finish()
            return 0
        self.received += len(data)
        if self.limit is not None and self.received > self.limit:
            self._kill()
            raise TransportError(f"{self.where}: more than the {self.limit} bytes this file may hold; abandoned")
        buffer[:len(data)] = data
        return len(data)

    def _finish(self) -> None:
        try:
            status = self.proc.wait(timeout=self.stall_s)
        except subprocess.TimeoutExpired:
            self._kill()
            raise TransportError(f"{self.where}: {self.program} closed its output but did not exit") from None
        self.done = True
        if status != 0:
            self.stderr.seek(0)
            said = self.stderr.read(4096).decode(errors="replace").strip().splitlines()
            raise TransportError(f"{self.where}: {self.program} exited with status {status}"
                                 + (f" ({said[-1][:200]})" if said else ""))

    def _kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.done = True

    def close(self) -> None:
        if not self.closed:
            self._kill()  # a reader that stops early: the command is not needed any more
            self.proc.stdout.close()
            self.stderr.close()
        super().close()


def open_stream(root: str, name: str, limit: int | None = None) -> IO[bytes]:
    """A watched binary stream of file ``name`` of the split at ``root`` (one try)."""
    cfg = _settings
    raw = _CommandReader(command(root, name, cfg), f"{root}/{name}", cfg.stall_timeout_s, limit)
    return io.BufferedReader(raw, _BLOCK)


def fetch(root: str, name: str, limit: int | None = None, retries: int | None = None) -> tuple[IO[bytes], str]:
    """File ``name`` of the split at ``root``, copied into an anonymous temporary file.

    Returns:
        (the temporary file positioned at 0, hex sha256 of its bytes).
    Raises:
        TransportError: every try failed (``data.remote.retries`` + 1 by default); its
            message is the last failure's.
    """
    cfg = _settings
    tries = 1 + (cfg.retries if retries is None else retries)
    for attempt in range(tries):
        target = tempfile.TemporaryFile()
        try:
            with open_stream(root, name, limit) as stream:
                reader = HashingStream(stream)
                shutil.copyfileobj(reader, target, _BLOCK)
            target.seek(0)
            return target, reader.hexdigest()
        except TransportError as err:
            target.close()
            if attempt + 1 == tries:
                raise
            delay = cfg.retry_delay_s * 2 ** attempt
            log.warning("%s (try %d of %d; again in %.3g s)", err, attempt + 1, tries, delay)
            time.sleep(delay)
        except BaseException:
            target.close()
            raise
    raise AssertionError("unreachable")


def check_reachable(root: str, failure: TransportError, what: str) -> None:
    """After ``failure`` to read ``what``: raise :class:`ServerUnreachable` if the split's
    manifest cannot be read either (the server is gone, not one file).

    Raises:
        ServerUnreachable: one line naming the server, what failed and why.
    """
    try:
        fetch(root, "manifest.json", retries=0)[0].close()
    except TransportError as probe:
        raise ServerUnreachable(f"{server_of(root)}: unreachable ({_reason(probe)}); {what} failed after "
                                f"{1 + _settings.retries} tries ({_reason(failure)})") from None


def _reason(err: TransportError) -> str:
    return str(err).split(": ", 1)[-1]
