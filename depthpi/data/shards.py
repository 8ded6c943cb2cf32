"""Writing and checking a split's WebDataset shards and its ``manifest.json``.

A split directory holds ``{prefix}-{i:06d}.tar`` shards and one ``manifest.json`` that
lists every shard with its sample count, byte size and sha256 (DESIGN.md "Sample
schema"). Exact counts let every rank agree on the epoch length before reading a byte.

Every file appears atomically (temp name + ``os.replace``), so a killed build leaves
either a finished shard or a temp file that the next run redoes. Tars are
byte-reproducible: members carry mtime 0, uid/gid 0 and fixed user/group names
(webdataset's ``TarWriter`` stamps the wall clock unless ``mtime`` is given).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import webdataset as wds
from tqdm import tqdm

from depthpi.data.schema import Sample, SampleError, encode_sample
from depthpi.io import atomic_write_bytes

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_SKIP_EXAMPLES = 20
_TAR_OWNER = "depthpi"

log = logging.getLogger(__name__)


class ManifestError(ValueError):
    """A split directory whose manifest is missing, unreadable or disagrees with the disk."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard as listed in the manifest.

    Attributes:
        name: file name inside the split directory.
        count: samples (keys) in the shard.
        bytes: file size in bytes.
        sha256: hex digest of the file.
        first_key, last_key: first and last sample key (None for an empty shard).
    """

    name: str
    count: int
    bytes: int
    sha256: str
    first_key: str | None = None
    last_key: str | None = None


@dataclass
class Manifest:
    """Contents of a split's ``manifest.json``.

    Attributes:
        shards: shards in stored order.
        total_count: sum of the shard counts.
        skeleton: joint-set name of every sample (see :mod:`depthpi.skeleton`).
        params: creation parameters as passed to the writer (source, seed, ...).
        skipped: samples the builder dropped: ``{"count", "by_reason", "examples"}``.
        version: manifest format version.
    """

    shards: list[ShardInfo]
    total_count: int
    skeleton: str = "h36m_17"
    params: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, Any] = field(default_factory=lambda: {"count": 0, "by_reason": {}, "examples": []})
    version: int = FORMAT_VERSION

    @property
    def counts(self) -> list[int]:
        return [shard.count for shard in self.shards]



def json_bytes(record: dict) -> bytes:
    return (json.dumps(record, indent=1, sort_keys=True, default=str) + "\n").encode()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- manifest --------------------------------------------------------------------
def write_manifest(split_dir: str | Path, manifest: Manifest) -> Path:
    """Write ``split_dir/manifest.json`` atomically; returns its path."""
    path = Path(split_dir) / MANIFEST_NAME
    atomic_write_bytes(path, json_bytes(asdict(manifest)), fsync=True)
    return path


def read_manifest(split_dir: str | Path, *, check_sha256: bool = False) -> Manifest:
    """Read and check a split's manifest against the shards on disk.

    Args:
        split_dir: directory holding ``manifest.json`` and the shards.
        check_sha256: also hash every shard (a full read of the split).
    Raises:
        ManifestError: naming the file, when the manifest is missing or unparsable, a
            listed shard is missing, or a shard's size (or sha256) differs.
    """
    path = Path(split_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found; build the split with `depthpi shards build` "
                            f"or point the config at a directory that holds {MANIFEST_NAME}")
    try:
        record = json.loads(path.read_text())
        shards = [ShardInfo(**shard) for shard in record.pop("shards")]
        manifest = Manifest(shards=shards, **record)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ManifestError(f"{path}: unreadable manifest ({type(err).__name__}: {err})") from None
    if manifest.version != FORMAT_VERSION:
        raise ManifestError(f"{path}: format version {manifest.version}, expected {FORMAT_VERSION}")
    if manifest.total_count != sum(manifest.counts):
        raise ManifestError(f"{path}: total_count {manifest.total_count} != sum of shard counts "
                            f"{sum(manifest.counts)}")
    for shard in manifest.shards:
        _check_shard(Path(split_dir), shard, path, check_sha256)
    return manifest


def _check_shard(split_dir: Path, shard: ShardInfo, manifest_path: Path, check_sha256: bool) -> None:
    shard_path = split_dir / shard.name
    if not shard_path.is_file():
        raise ManifestError(f"{shard_path}: listed in {manifest_path} but missing on disk")
    size = shard_path.stat().st_size
    if size != shard.bytes:
        raise ManifestError(f"{shard_path}: {size} bytes on disk, {manifest_path} says {shard.bytes} "
                            f"(truncated or rewritten shard; rebuild the split)")
    if check_sha256 and file_sha256(shard_path) != shard.sha256:
        raise ManifestError(f"{shard_path}: sha256 differs from {manifest_path}")


# --- writing ---------------------------------------------------------------------
class _HashingFile:
    """File wrapper that hashes and counts what passes through ``write``."""

    def __init__(self, path: Path):
        self.file = open(path, "wb")
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self.file.write(data)

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


def _check_key(key: str) -> None:
    # webdataset splits member names at the first dot: "a.b.rgb.jpg" would become key "a".
    if not key or "." in key or "/" in key:
        raise ValueError(f"sample key {key!r}: must be non-empty without '.' or '/'")


class TarShard:
    """One shard being written to a temp name; ``finish`` renames it into place."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp")
        self.file = _HashingFile(self.tmp)
        # mtime/owner fixed: the same samples give the same bytes on any machine and day.
        self.tar = wds.TarWriter(self.file, encoder=False, mtime=0, user=_TAR_OWNER, group=_TAR_OWNER)
        self.count, self.first_key, self.last_key = 0, None, None

    def write(self, members: dict[str, Any]) -> None:
        self.tar.write(members)
        self.count += 1
        self.first_key = self.first_key or members["__key__"]
        self.last_key = members["__key__"]

    @property
    def bytes(self) -> int:
        return self.file.bytes

    def finish(self) -> ShardInfo:
        self.tar.close()
        self.file.close()
        os.replace(self.tmp, self.path)
        return ShardInfo(self.path.name, self.count, self.file.bytes, self.file.sha256.hexdigest(),
                         self.first_key, self.last_key)

    def abort(self) -> None:
        self.tar.close()
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class ShardWriter:
    """Write samples into ``{prefix}-{i:06d}.tar`` shards and a manifest at close.

    Usage::

        with ShardWriter(out_dir, max_count=1000, params={"source": "ntu"}) as writer:
            for sample in samples:
                writer.write(sample)
        manifest = writer.manifest

    Args:
        out_dir: split directory (created).
        max_count: samples per shard at most.
        max_bytes: bytes per shard at most (a shard closes once it reaches it).
        prefix: shard file name prefix.
        params: creation parameters recorded in the manifest.
        skeleton: joint-set name; every written :class:`Sample` must use it.
        start_index: number of the first shard.
        write_manifest_on_close: False when the caller assembles the manifest itself.
    """

    def __init__(self, out_dir: str | Path, max_count: int = 1000, max_bytes: int = 3 << 30,
                 prefix: str = "shard", params: dict | None = None, skeleton: str = "h36m_17",
                 start_index: int = 0, write_manifest_on_close: bool = True):
        if max_count < 1 or max_bytes < 1:
            raise ValueError(f"ShardWriter: max_count and max_bytes must be >= 1, got {max_count}, {max_bytes}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_count, self.max_bytes, self.prefix = max_count, max_bytes, prefix
        self.params, self.skeleton = dict(params or {}), skeleton
        self.index, self.write_manifest_on_close = start_index, write_manifest_on_close
        self.shards: list[ShardInfo] = []
        self.manifest: Manifest | None = None
        self._current: TarShard | None = None
        self._keys: set[str] = set()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._current is not None:
            self._current.abort()  # a failed write must not leave a plausible-looking shard

    def write(self, sample: Sample | dict[str, Any]) -> None:
        """Append one sample (a :class:`Sample`, or members from :func:`encode_sample`)."""
        if isinstance(sample, Sample):
            if sample.meta.skeleton != self.skeleton:
                raise ValueError(f"sample {sample.key!r}: skeleton {sample.meta.skeleton!r}, "
                                 f"the writer expects {self.skeleton!r}")
            sample = encode_sample(sample)
        key = sample["__key__"]
        _check_key(key)
        if key in self._keys:
            raise ValueError(f"sample key {key!r} written twice to {self.out_dir}")
        self._keys.add(key)
        if self._current is None:
            self._current = TarShard(self.out_dir / f"{self.prefix}-{self.index:06d}.tar")
        self._current.write(sample)
        if self._current.count >= self.max_count or self._current.bytes >= self.max_bytes:
            self._next_shard()

    def _next_shard(self) -> None:
        self.shards.append(self._current.finish())
        self._current, self.index = None, self.index + 1

    def close(self) -> Manifest:
        """Finish the open shard and (unless disabled) write the manifest."""
        if self._current is not None:
            self._next_shard()
        self.manifest = Manifest(shards=list(self.shards), total_count=sum(s.count for s in self.shards),
                                 skeleton=self.skeleton, params=self.params)
        if self.write_manifest_on_close:
            write_manifest(self.out_dir, self.manifest)
        return self.manifest


# --- parallel, resumable building ---------------------------------------------------
def sidecar_path(out_dir: Path, name: str) -> Path:
    return out_dir / f".{name}.json"


def _job_digest(params: dict, start: int, stop: int) -> str:
    return hashlib.sha256(json_bytes({"params": params, "start": start, "stop": stop})).hexdigest()


def finished_shard(out_dir: Path, name: str, digest: str) -> dict | None:
    """The sidecar of a finished shard built with the same parameters, else None."""
    try:
        record = json.loads(sidecar_path(out_dir, name).read_text())
        size = (out_dir / name).stat().st_size
        complete = record["digest"] == digest and record["shard"]["bytes"] == size
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None
    return record if complete else None


def _build_shard(out_dir: Path, name: str, start: int, stop: int, digest: str,
                 make_sample: Callable[[int], Sample | None], skeleton: str) -> dict:
    """Write samples [start, stop) into ``out_dir/name``; returns the sidecar record."""
    shard, skipped = TarShard(out_dir / name), []
    try:
        for index in range(start, stop):
            try:
                sample = make_sample(index)
                if sample is None:
                    skipped.append({"index": index, "key": None, "reason": "make_sample returned None"})
                    continue
                if sample.meta.skeleton != skeleton:
                    raise SampleError(sample.key, "skeleton", f"{sample.meta.skeleton!r}, expected {skeleton!r}")
                members = encode_sample(sample)
            except SampleError as err:
                skipped.append({"index": index, "key": err.key, "reason": f"{err.field}: {err.reason}"})
                continue
            _check_key(members["__key__"])
            shard.write(members)
    except BaseException:
        shard.abort()
        raise
    record = {"digest": digest, "start": start, "stop": stop, "shard": asdict(shard.finish()),
              "skipped": skipped}
    # The sidecar comes after the rename: its presence certifies a complete shard.
    atomic_write_bytes(sidecar_path(out_dir, name), json_bytes(record), fsync=True)
    return record


def build_shards(out_dir: str | Path, num_samples: int, samples_per_shard: int,
                 make_sample: Callable[[int], Sample | None], workers: int = 1, params: dict | None = None,
                 desc: str = "shards", prefix: str = "shard", skeleton: str = "h36m_17") -> Manifest:
    """Build a split from ``make_sample(index)``: parallel, resumable, byte-deterministic.

    Shard i holds indices ``[i * samples_per_shard, (i + 1) * samples_per_shard)``. A shard
    whose tar and sidecar (``.{name}.json``) exist with matching size and parameters is
    kept; anything else (including a leftover temp file) is rebuilt. ``make_sample``
    returning None or raising :class:`SampleError` skips the index; the manifest records
    the skips.

    Args:
        out_dir: split directory.
        num_samples: indices 0 … num_samples − 1.
        samples_per_shard: indices per shard.
        make_sample: picklable (module-level function or ``functools.partial`` of one);
            it runs in spawned worker processes when ``workers > 1``.
        workers: processes building shards concurrently.
        params: creation parameters recorded in the manifest; changing them rebuilds.
        desc: progress bar label.
        prefix: shard file name prefix.
        skeleton: joint-set name every sample must use.
    Returns:
        The manifest, also written to ``out_dir/manifest.json``.
    """
    if num_samples < 1 or samples_per_shard < 1 or workers < 1:
        raise ValueError(f"build_shards({out_dir}): num_samples, samples_per_shard and workers must be >= 1, "
                         f"got {num_samples}, {samples_per_shard}, {workers}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = dict(params or {})
    digest_params = {**params, "samples_per_shard": samples_per_shard, "skeleton": skeleton}
    jobs = {}
    for i in range(math.ceil(num_samples / samples_per_shard)):
        start, stop = i * samples_per_shard, min((i + 1) * samples_per_shard, num_samples)
        jobs[f"{prefix}-{i:06d}.tar"] = (start, stop, _job_digest(digest_params, start, stop))
    records = {name: finished_shard(out_dir, name, job[2]) for name, job in jobs.items()}
    todo = [name for name, record in records.items() if record is None]
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, unit="shard") as bar:
        for name, record in _run_jobs(out_dir, {n: jobs[n] for n in todo}, make_sample, skeleton, workers):
            records[name] = record
            bar.update()
            bar.set_postfix(skipped=sum(len(r["skipped"]) for r in records.values() if r))
    manifest = _assemble_manifest([records[name] for name in jobs], params, skeleton)
    write_manifest(out_dir, manifest)
    if manifest.skipped["count"]:
        log.warning("%s: %d of %d samples skipped while building (%s); see %s", out_dir,
                    manifest.skipped["count"], num_samples, manifest.skipped["by_reason"], MANIFEST_NAME)
    return manifest


def _run_jobs(out_dir: Path, jobs: dict, make_sample, skeleton: str, workers: int):
    """Yield (name, sidecar record) as shards finish; in-process when ``workers == 1``."""
    if workers == 1 or len(jobs) <= 1:
        for name, (start, stop, digest) in jobs.items():
            yield name, _build_shard(out_dir, name, start, stop, digest, make_sample, skeleton)
        return
    # spawn: no inherited locks or threads from the parent (torch, cv2) in the builders.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
        futures = {pool.submit(_build_shard, out_dir, name, start, stop, digest, make_sample, skeleton): name
                   for name, (start, stop, digest) in jobs.items()}
        for future in as_completed(futures):
            yield futures[future], future.result()


def _assemble_manifest(records: list[dict], params: dict, skeleton: str) -> Manifest:
    shards = [ShardInfo(**record["shard"]) for record in records]
    skipped = [item for record in records for item in record["skipped"]]
    reasons = Counter(item["reason"].split(":")[0] for item in skipped)
    return Manifest(shards=shards, total_count=sum(s.count for s in shards), skeleton=skeleton, params=params,
                    skipped={"count": len(skipped), "by_reason": dict(sorted(reasons.items())),
                             "examples": skipped[:MAX_SKIP_EXAMPLES]})
