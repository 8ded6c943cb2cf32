"""Atomic file writes: a reader, or a run resumed after a kill, sees the old file or the
new one, never half of one.

Every output of depthpi (shards, manifests, checkpoints, exports, metrics, reports, plots)
is written through here: to a temporary name in the same directory, then ``os.replace``.
The temporary name is unique per process and thread (two ranks writing one manifest do not
collide) and keeps the suffix, for writers that pick the format by it (matplotlib,
OpenCV, ``torch.export.save``).
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes ``path`` when the block ends without error.

    ``fsync``: flush the file to disk before the rename (shards and manifests, which a
    crash must not leave empty).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp{path.suffix}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = False) -> None:
    with atomic_path(path, fsync) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, fsync: bool = False) -> None:
    with atomic_path(path, fsync) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, record, indent: int | None = 1) -> None:
    """``record`` as JSON (numbers that are numpy scalars or tensors become floats)."""
    atomic_write_text(path, json.dumps(record, indent=indent, default=float) + "\n")
