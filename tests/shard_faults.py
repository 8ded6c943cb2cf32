"""Damage done to a split of real tar shards, as disks, networks and careless copies do it.

Each function damages one shard of a split made by ``conftest.write_split`` and says what
the manifest then claims: ``follow=True`` rewrites the shard's manifest entry (bytes,
sha256) to match the damaged file, so the checks at start cannot see it (a shard that
went bad while being written); its ``count`` always stays what the builder wrote.
"""
from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import webdataset as wds

from depthpi.data.shards import read_manifest, write_manifest
from depthpi.io import file_sha256


def shard_path(split: Path, shard: int) -> Path:
    return split / read_manifest(split, check_files=False).shards[shard].name


def follow(split: Path, shard: int, **changes) -> None:
    """The shard's manifest entry takes the file's size and sha256 (and ``changes``)."""
    manifest = read_manifest(split, check_files=False)
    entry = manifest.shards[shard]
    path = split / entry.name
    manifest.shards[shard] = dataclasses.replace(entry, bytes=path.stat().st_size, sha256=file_sha256(path), **changes)
    manifest.total_count = sum(s.count for s in manifest.shards)
    write_manifest(split, manifest)


def members_of(path: Path) -> list[dict]:
    """The shard's samples as tar members (``__key__`` + suffixes)."""
    samples = wds.DataPipeline(wds.SimpleShardList([str(path)]), wds.tarfile_to_samples())
    return [{k: v for k, v in m.items() if k == "__key__" or not k.startswith("__")} for m in samples]


def write_members(path: Path, members: list[dict]) -> None:
    with wds.TarWriter(str(path), encoder=False, mtime=0) as writer:
        for m in members:
            writer.write(m)


def _edit_sample(split: Path, shard: int, index: int, edit) -> str:
    path = shard_path(split, shard)
    members = members_of(path)
    edit(members[index])
    write_members(path, members)
    follow(split, shard)
    return members[index]["__key__"]


def corrupt_jpeg(split: Path, shard: int, index: int = 0) -> str:
    """The sample's RGB JPEG replaced by bytes no decoder accepts; returns its key."""
    return _edit_sample(split, shard, index, lambda m: m.update({"rgb.jpg": b"\xff\xd8 not a jpeg"}))


def corrupt_json(split: Path, shard: int, index: int = 0) -> str:
    """The sample's JSON cut in half; returns its key."""
    return _edit_sample(split, shard, index, lambda m: m.update({"json": m["json"][: len(m["json"]) // 2]}))


def member_offsets(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def truncate(split: Path, shard: int, member: int) -> None:
    """Cut the file in the middle of its ``member``-th tar member; the manifest follows."""
    path = shard_path(split, shard)
    info = member_offsets(path)[member]
    path.write_bytes(path.read_bytes()[:info.offset_data + info.size // 2])
    follow(split, shard)


def garbage_over_header(split: Path, shard: int, member: int) -> None:
    """512 random bytes over the ``member``-th member's header; size unchanged, manifest untouched.

    ``tarfile`` reads a bad header after the first as the end of the archive, silently.
    """
    path = shard_path(split, shard)
    offset = member_offsets(path)[member].offset
    data = bytearray(path.read_bytes())
    data[offset:offset + 512] = np.random.default_rng(0).integers(1, 256, 512, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def empty_tar(split: Path, shard: int) -> None:
    """A valid tar with no member where the samples were; the manifest follows."""
    write_members(shard_path(split, shard), [])
    follow(split, shard)


def zero_bytes(split: Path, shard: int) -> None:
    """The shard file emptied; the manifest follows."""
    shard_path(split, shard).write_bytes(b"")
    follow(split, shard)


def members_without_key(split: Path, shard: int) -> None:
    """Members whose names carry no key (``README``, ``.json``) added in front; the manifest follows."""
    path = shard_path(split, shard)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("README", ".json"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"junk"))
        with tarfile.open(path) as source:
            for info in source.getmembers():
                tar.addfile(info, source.extractfile(info))
    path.write_bytes(buffer.getvalue())
    follow(split, shard)


def duplicate_key(split: Path, shard: int, index: int = 0) -> str:
    """A copy of sample ``index`` appended to the shard (its key twice); the manifest follows."""
    path = shard_path(split, shard)
    members = members_of(path)
    write_members(path, members + [dict(members[index])])
    follow(split, shard)
    return members[index]["__key__"]


def remove_shard(split: Path, shard: int) -> str:
    """The shard file deleted (the manifest still lists it); returns its name."""
    path = shard_path(split, shard)
    path.unlink()
    return path.name


def wrong_count(split: Path, shard: int, delta: int) -> None:
    """The manifest's count of the shard off by ``delta`` (total_count adjusted to match)."""
    manifest = json.loads((split / "manifest.json").read_text())
    manifest["shards"][shard]["count"] += delta
    manifest["total_count"] += delta
    (split / "manifest.json").write_text(json.dumps(manifest))


def edit_json(split: Path, shard: int, index: int, change) -> str:
    """``change(record)`` applied to the sample's metadata JSON (a dict); returns its key."""

    def edit(members: dict) -> None:
        record = json.loads(members["json"])
        change(record)
        members["json"] = json.dumps(record).encode()

    return _edit_sample(split, shard, index, edit)
