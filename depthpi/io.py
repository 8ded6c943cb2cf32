"""Atomic file writes: a reader, or a run resumed after a kill, sees the old file or the
new one, never half of one.

Every output of depthpi is written to a temporary name in the same directory (unique per
process and thread, keeping the suffix), then ``os.replace``d: :func:`atomic_path` for
writers that want a path, :class:`AtomicFile` for streams. A full disk is one
:class:`DiskFullError` line naming the directory and the space needed. Digests:
:class:`HashingStream` (sha256 and byte count of a stream), :func:`file_sha256`.

docs/shards.md ("Atomic writes") has the details.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import threading
from pathlib import Path
from typing import IO, Iterator

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Writers that report a full disk only in words: safetensors (Rust), or not at all: torch's
# zip writer says "unexpected pos" once a short write left it behind.
_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")
LOW_SPACE_BYTES = 4 << 20


class DiskFullError(RuntimeError):
    """A write that failed because its file system is full (or the quota spent): one line
    naming the directory, how much was needed and how much is free."""


def mebibytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def free_bytes(directory: str | Path) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def is_disk_full(err: BaseException, directory: str | Path) -> bool:
    """Whether ``err``, raised while writing into ``directory``, means its disk is full:
    ENOSPC or EDQUOT anywhere in the exception chain or its words, or, for writers that hide
    the cause, less than 4 MiB left (checked while the failed temporary is still there)."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL_ERRNOS:
            return True
        if any(words in str(seen) for words in _FULL_WORDS):
            return True
        seen = seen.__cause__ or seen.__context__
    free = free_bytes(directory)
    return free is not None and free < LOW_SPACE_BYTES


def disk_full(directory: str | Path, what: str, needed: int | None = None, written: int | None = None,
              advice: str = "free some space there or write elsewhere, then run the same command again",
              freed: int = 0) -> DiskFullError:
    """The one-line error for ``what`` failing in ``directory`` for lack of space.

    ``needed``: bytes the write needs (an estimate); else ``written``: bytes it had written.
    ``freed``: bytes the failed write's partial files give back once removed.
    """
    free = free_bytes(directory)
    free = None if free is None else free + freed
    if needed is not None:
        size = f"needs about {mebibytes(needed)}"
    elif written is not None:
        size = f"needs more than the {mebibytes(written)} it had written"
    else:
        size = "needs more space"
    there = f", {mebibytes(free)} free there" if free is not None else ""
    return DiskFullError(f"{directory}: disk full: {what} {size}{there}; {advice}")


def temporary_path(path: Path) -> Path:
    """The temporary name this process and thread writes ``path`` under."""
    return path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp{path.suffix}")


def remove_temporaries(path: str | Path) -> list[Path]:
    """Delete what killed writers of ``path`` left behind (any process's temporaries).

    Only for a caller that is the one writer of ``path`` at this time (a shard builder
    redoing that shard): a concurrent writer's temporary would be deleted too.
    """
    path = Path(path)
    left = sorted(path.parent.glob(f".{path.stem}.*.tmp{path.suffix}"))
    for stale in left:
        stale.unlink(missing_ok=True)
    return left


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


class AtomicFile:
    """A binary file written under a temporary name that :meth:`commit` renames into place.

    Usage::

        with AtomicFile(path) as f:   # commit on success, discard on an exception
            f.write(data)

    Args:
        path: the final name; its directory is created.
        fsync: flush to disk before the rename (shards and manifests, which a crash must
            not leave empty).
    """

    def __init__(self, path: str | Path, fsync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp, self.fsync, self.written = temporary_path(self.path), fsync, 0
        self.file = open(self.tmp, "wb")

    def write(self, data) -> int:
        try:
            n = self.file.write(data)
        except OSError as err:
            raise self._full(err) from err
        self.written += n
        return n

    def flush(self) -> None:
        try:
            self.file.flush()
        except OSError as err:
            raise self._full(err) from err

    def commit(self) -> Path:
        """Close the temporary and rename it to ``path``; returns ``path``."""
        try:
            self.file.flush()
            if self.fsync:
                os.fsync(self.file.fileno())
        except OSError as err:
            raise self._full(err) from err
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def _full(self, err: OSError) -> OSError:
        """A :class:`DiskFullError` for ``err`` when it means a full disk (else ``err``)."""
        if not is_disk_full(err, self.path.parent):
            return err
        return disk_full(self.path.parent, f"writing {self.path.name}", written=self.written, freed=self.written)

    def discard(self) -> None:
        """Close and delete the temporary; ``path`` keeps whatever it held before."""
        try:
            self.file.close()  # flushes what is buffered: fails again on a full disk
        except OSError:
            pass
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = False, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes ``path`` when the block ends without error.

    ``fsync``: flush the file to disk before the rename. ``needed``: the bytes the file
    will take (an estimate), for the message should the disk fill up.

    Raises:
        DiskFullError: the write failed for lack of space (whatever the writer raised).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    except Exception as err:
        if not is_disk_full(err, path.parent):  # judged before the temporary goes
            raise
        written = tmp.stat().st_size if tmp.exists() else None
        raise disk_full(path.parent, f"writing {path.name}", needed=needed, written=written,
                        freed=written or 0) from err
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = False) -> None:
    with AtomicFile(path, fsync) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, fsync: bool = False) -> None:
    atomic_write_bytes(path, text.encode(), fsync)


def atomic_write_json(path: str | Path, record, indent: int | None = 1) -> None:
    """``record`` as JSON (numbers that are numpy scalars or tensors become floats)."""
    atomic_write_text(path, json.dumps(record, indent=indent, default=float) + "\n")


def read_json(path: str | Path):
    """The JSON record in the file at ``path``, or None where there is no such file."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


class HashingStream:
    """A binary stream whose bytes are hashed (sha256) and counted as they pass through
    :meth:`read` or :meth:`write`: a shard hashed while it is written, parsed or fetched."""

    def __init__(self, raw: IO[bytes]):
        self.raw, self.sha256, self.bytes = raw, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self._add(data)
        return data

    def write(self, data) -> int:
        self._add(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()

    def _add(self, data) -> None:
        self.sha256.update(data)
        self.bytes += len(data)

    def hexdigest(self) -> str:
        return self.sha256.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of the file at ``path``."""
    with open(path, "rb") as f:  # hashlib.file_digest needs Python 3.11; we support 3.10
        stream = HashingStream(f)
        while stream.read(1 << 20):
            pass
    return stream.hexdigest()
