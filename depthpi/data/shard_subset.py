"""A split made of a range of another split's shards (``depthpi shards subset``).

The shards are hard links to the source's files (copies where the two folders are on
different file systems), so a subset costs no space and its manifest entries, sha256
included, stay true. Low-label studies cut a labelled split this way: a small labelled part
and the rest as unlabelled RGB-D pairs (a run's ``data.unlabeled`` withholds every label).
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

from depthpi.data.shards import MANIFEST_NAME, Manifest, ManifestError, read_manifest, write_manifest
from depthpi.io import atomic_path

log = logging.getLogger(__name__)


def parse_range(text: str, count: int) -> tuple[int, int]:
    """``"START:STOP"`` (Python slice bounds, either may be empty) → (start, stop) within ``count``.

    Raises:
        ValueError: naming the text, for anything but a non-empty range of shard indices.
    """
    head, colon, tail = text.partition(":")
    try:
        if not colon:
            raise ValueError
        start, stop, _ = slice(int(head) if head else None, int(tail) if tail else None).indices(count)
    except ValueError:
        raise ValueError(f"--shards {text!r}: expected START:STOP shard indices, e.g. 0:12") from None
    if stop <= start:
        raise ValueError(f"--shards {text!r}: selects no shard of the {count} in the split")
    return start, stop


def take_shards(source: str | Path, out: str | Path, start: int, stop: int, role: str | None = None) -> Manifest:
    """Write split ``out`` holding shards ``start:stop`` of local split ``source``.

    Args:
        source: split directory (its files are checked against its manifest first).
        out: new split directory; an existing one must hold the same subset (re-running is a no-op).
        start, stop: shard indices in the source's stored order.
        role: the new manifest's ``split`` (e.g. ``unlabeled``); default: the source's.
    Returns:
        The new split's manifest; its ``params.subset_of`` names the source and the range.
    """
    source, out = Path(source), Path(out)
    manifest = read_manifest(source)
    shards = manifest.shards[start:stop]
    params = {**manifest.params, "split": role or manifest.params.get("split"),
              "subset_of": {"split": str(source), "shards": [start, stop], "of": len(manifest.shards)}}
    subset = replace(manifest, shards=shards, total_count=sum(s.count for s in shards), params=params,
                     skipped={"count": 0, "by_reason": {}, "examples": []})
    if (out / MANIFEST_NAME).is_file():
        existing = read_manifest(out)
        if existing.shards != subset.shards or existing.params != subset.params:
            raise ManifestError(f"{out}: already holds another split; remove it or choose another --out")
        return existing
    out.mkdir(parents=True, exist_ok=True)
    for shard in shards:
        _link_or_copy(source / shard.name, out / shard.name)
    write_manifest(out, subset)
    log.info("%s: %d samples in %d shards (shards %d:%d of %s)", out, subset.total_count, len(shards),
             start, stop, source)
    return subset


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        dst.unlink()  # a leftover of an interrupted run: its manifest was never written
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not supported
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
