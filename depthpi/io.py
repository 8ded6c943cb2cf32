"""Atomic file writes: a reader, or a run resumed after a kill, sees the old file or the
new one, never half of one.

Every output of depthpi (shards, manifests, checkpoints, exports, metrics, reports, plots)
is written through here: to a temporary name in the same directory, then ``os.replace``.
The temporary name is unique per process and thread (two ranks writing one manifest do not
collide) and keeps the suffix, for writers that pick the format by it (matplotlib,
OpenCV, ``torch.export.save``): ``dir/.{stem}.{pid}-{thread}.tmp{suffix}``.

Two forms: :func:`atomic_path` for writers that want a path, :class:`AtomicFile` for
streams written piece by piece (tar shards).
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Iterator


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
        self.tmp, self.fsync = temporary_path(self.path), fsync
        self.file = open(self.tmp, "wb")

    def write(self, data) -> int:
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()

    def commit(self) -> Path:
        """Close the temporary and rename it to ``path``; returns ``path``."""
        self.file.flush()
        if self.fsync:
            os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Close and delete the temporary; ``path`` keeps whatever it held before."""
        self.file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes ``path`` when the block ends without error.

    ``fsync``: flush the file to disk before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
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
