"""The one resumable shard builder: the synthetic set, the raw-data converters and
precomputed teacher features all write their shards through :func:`build`.

A build is a list of :class:`ShardJob` (the shard's path and siblings, the parameters its
bytes depend on, what the fill needs). A finished shard has a sidecar
``.{name}.done.json``, written after the shard is renamed into place, certifying it; a
rerun keeps every shard whose sidecar has the job's digest and whose tars have the recorded
sizes, and redoes the rest (byte-identical with a deterministic fill). The fill writes
members into the open :class:`TarShard` and returns the shard's report for the manifest.

docs/shards.md ("Building shards") gives the sidecar's format.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm import tqdm

from depthpi.data.schema import Sample, SampleError, encode_sample
from depthpi.data.shards import (MANIFEST_NAME, Manifest, ShardInfo, TarShard, json_bytes,
                                 write_manifest)
from depthpi.io import DiskFullError, atomic_write_bytes, mebibytes, remove_temporaries

SIDECAR_FORMAT = 1
MAX_SKIP_EXAMPLES = 20
log = logging.getLogger(__name__)


def params_digest(params: dict) -> str:
    """sha256 of the canonical JSON of ``params`` (sorted keys, no spaces; str() for the rest)."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ShardJob:
    """One shard to build.

    Attributes:
        path: the shard file.
        params: everything its bytes depend on (JSON-able); their digest decides a redo.
        work: what the fill function needs beyond ``params`` (not part of the digest).
        size: the job's share of the progress bar (videos, samples; default 1 shard).
        siblings: further shards the same fill writes (e.g. one per stored view), certified
            with ``path``'s sidecar: the job is finished when all of them are.
    """

    path: Path
    params: dict
    work: Any = None
    size: int = 1
    siblings: tuple[Path, ...] = ()

    @property
    def digest(self) -> str:
        return params_digest(self.params)

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.path, *self.siblings)


Fill = Callable[..., dict]  # fill(job, shard, *sibling_shards) -> report


def sidecar_path(shard: str | Path) -> Path:
    shard = Path(shard)
    return shard.with_name(f".{shard.name}.done.json")


def finished_record(job: ShardJob) -> dict | None:
    """The sidecar record of ``job``'s shard if it was finished with the same parameters, else None."""
    try:
        record = json.loads(sidecar_path(job.path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != SIDECAR_FORMAT or record.get("digest") != job.digest:
        return None
    if record.get("shard") is None:
        return record if not any(path.exists() for path in job.paths) else None
    try:
        infos = [record["shard"], *record["siblings"]] if job.siblings else [record["shard"]]
        sizes = [info["bytes"] for info in infos]
        return record if [path.stat().st_size for path in job.paths] == sizes else None
    except (OSError, KeyError, TypeError):
        return None


def write_shard(job: ShardJob, fill: Fill, keep_empty: bool = False) -> dict:
    """Write ``job``'s shard with ``fill`` and certify it with its sidecar; returns the record.

    Without ``keep_empty`` a shard that received no sample is not written (its record's
    ``shard`` is None); with it, it is an empty tar listed like any other.
    """
    sidecar_path(job.path).unlink(missing_ok=True)  # no stale certificate while the shard changes
    shards = [TarShard(path) for path in job.paths]
    try:
        report = fill(job, *shards)
    except BaseException:
        for shard in shards:
            shard.abort()
        raise
    if any(shard.count for shard in shards) or keep_empty:
        infos = [asdict(shard.finish()) for shard in shards]
    else:
        for shard, path in zip(shards, job.paths):
            shard.abort()
            path.unlink(missing_ok=True)
        infos = [None]
    record = {"format": SIDECAR_FORMAT, "digest": job.digest, "params": job.params, "shard": infos[0],
              "report": report, **({"siblings": infos[1:]} if job.siblings else {})}
    atomic_write_bytes(sidecar_path(job.path), json_bytes(record), fsync=True)
    return record


def build(jobs: list[ShardJob], fill: Fill, *, workers: int = 1, desc: str = "shards", unit: str = "shard",
          progress: bool = True, keep_empty: bool = False, initializer: Callable[[], None] | None = None
          ) -> list[dict]:
    """Build every job whose shard is not finished; returns the records in job order.

    Args:
        jobs: the shards of the build (their directories are created).
        fill: ``fill(job, shard, *sibling_shards) -> report``; picklable (a module-level
            function or a ``functools.partial`` of one) when ``workers > 1``.
        workers: processes building shards concurrently (spawned: no inherited locks or
            threads of torch or OpenCV).
        desc, unit, progress: the progress bar (its total is the jobs' ``size``).
        keep_empty: write shards that received no sample (see :func:`write_shard`).
        initializer: run once in each worker process.
    """
    for job in jobs:  # a build is the one writer of its shards: what killed writers left goes
        for path in job.paths:
            remove_temporaries(path)
        remove_temporaries(sidecar_path(job.path))
    records = [finished_record(job) for job in jobs]
    todo = [i for i, record in enumerate(records) if record is None]
    if len(todo) < len(jobs):
        log.info("%s: %d of %d shards finished earlier with the same parameters, kept", desc,
                 len(jobs) - len(todo), len(jobs))
    total, kept = sum(j.size for j in jobs), sum(jobs[i].size for i, r in enumerate(records) if r is not None)
    with tqdm(total=total, initial=kept, desc=desc, unit=unit, disable=not progress, dynamic_ncols=True) as bar:
        try:
            for index, record in _run(jobs, todo, fill, workers, keep_empty, initializer):
                records[index] = record
                bar.update(jobs[index].size)
        except DiskFullError as err:
            raise DiskFullError(f"{err}{_space_left_to_write(records)}") from None
    return records


def _space_left_to_write(records: list[dict | None]) -> str:
    """What the shards not yet written would take, judged by the finished ones ('' if none is)."""
    sizes = [r["shard"]["bytes"] for r in records if r is not None and r["shard"] is not None]
    left = sum(record is None for record in records)
    if not sizes:
        return ""
    return (f" (the {left} shards left need about {mebibytes(left * sum(sizes) // len(sizes))} at the "
            f"{mebibytes(sum(sizes) // len(sizes))} of a finished one; the finished ones are kept)")


def _run(jobs: list[ShardJob], todo: list[int], fill: Fill, workers: int, keep_empty: bool,
         initializer) -> Iterator[tuple[int, dict]]:
    """(job index, record) as shards finish; in this process when ``workers == 1``."""
    for index in todo:
        for path in jobs[index].paths:
            path.parent.mkdir(parents=True, exist_ok=True)
    if workers <= 1 or len(todo) <= 1:
        for index in todo:
            yield index, write_shard(jobs[index], fill, keep_empty)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context, initializer=initializer) as pool:
        futures = {pool.submit(write_shard, jobs[index], fill, keep_empty): index for index in todo}
        for future in as_completed(futures):
            yield futures[future], future.result()


def manifest_of(records: list[dict], params: dict, skeleton: str, skipped: dict) -> Manifest:
    """The split's manifest from its shards' records (those with no sample are left out)."""
    shards = [ShardInfo(**record["shard"]) for record in records if record["shard"] is not None]
    return Manifest(shards=shards, total_count=sum(s.count for s in shards), skeleton=skeleton, params=params,
                    skipped=skipped)


# --- a split from make_sample(index) ---------------------------------------------------------
def _fill_indexed(job: ShardJob, shard: TarShard, make_sample: Callable[[int], Sample | None],
                  skeleton: str) -> dict:
    """Samples ``[start, stop)`` of ``make_sample``; None or a SampleError skips an index."""
    skipped = []
    for index in range(job.params["start"], job.params["stop"]):
        try:
            sample = make_sample(index)
            if sample is None:
                skipped.append({"index": index, "key": None, "reason": "make_sample returned None"})
                continue
            if sample.meta.skeleton != skeleton:
                raise SampleError(sample.key, "skeleton", f"{sample.meta.skeleton!r}, expected {skeleton!r}")
            shard.write(encode_sample(sample))
        except SampleError as err:
            skipped.append({"index": index, "key": err.key, "reason": f"{err.field}: {err.reason}"})
    return {"skipped": skipped}


def build_shards(out_dir: str | Path, num_samples: int, samples_per_shard: int,
                 make_sample: Callable[[int], Sample | None], workers: int = 1, params: dict | None = None,
                 desc: str = "shards", prefix: str = "shard", skeleton: str = "h36m_17",
                 progress: bool = True) -> Manifest:
    """Build a split from ``make_sample(index)``: parallel, resumable, byte-deterministic.

    Shard i holds indices ``[i * samples_per_shard, (i + 1) * samples_per_shard)``.
    ``make_sample`` returning None or raising :class:`SampleError` skips the index; the
    manifest records the skips. A shard left with no sample is not listed.

    Args:
        out_dir: split directory.
        num_samples: indices 0 … num_samples − 1.
        samples_per_shard: indices per shard.
        make_sample: picklable; it runs in spawned worker processes when ``workers > 1``.
        workers: processes building shards concurrently.
        params: creation parameters recorded in the manifest; changing them rebuilds.
        desc: progress bar label. prefix: shard file name prefix.
        skeleton: joint-set name every sample must use.
    Returns:
        The manifest, also written to ``out_dir/manifest.json``.
    """
    if num_samples < 1 or samples_per_shard < 1 or workers < 1:
        raise ValueError(f"build_shards({out_dir}): num_samples, samples_per_shard and workers must be >= 1, "
                         f"got {num_samples}, {samples_per_shard}, {workers}")
    out_dir, params = Path(out_dir), dict(params or {})
    jobs = []
    for i in range(math.ceil(num_samples / samples_per_shard)):
        start, stop = i * samples_per_shard, min((i + 1) * samples_per_shard, num_samples)
        jobs.append(ShardJob(out_dir / f"{prefix}-{i:06d}.tar", {"build": params, "skeleton": skeleton,
                                                                   "start": start, "stop": stop}))
    records = build(jobs, partial(_fill_indexed, make_sample=make_sample, skeleton=skeleton), workers=workers,
                    desc=desc, progress=progress)
    skipped = [item for record in records for item in record["report"]["skipped"]]
    reasons = Counter(item["reason"].split(":")[0] for item in skipped)
    summary = {"count": len(skipped), "by_reason": dict(sorted(reasons.items())),
               "examples": skipped[:MAX_SKIP_EXAMPLES]}
    manifest = manifest_of(records, params, skeleton, summary)
    write_manifest(out_dir, manifest)
    if skipped:
        log.warning("%s: %d of %d samples skipped while building (%s); see %s", out_dir, len(skipped), num_samples,
                    manifest.skipped["by_reason"], MANIFEST_NAME)
    return manifest
