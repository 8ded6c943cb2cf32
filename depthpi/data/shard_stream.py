"""Reading shards as a stream of samples, with every loss accounted for. No torch.

The stages, each a generator over the previous one (webdataset's shape):
``select_shards`` → :class:`TarSamples` (tar → samples; each shard's count is compared with
its manifest entry) → ``decode_samples`` → ``map_samples``. A bad sample is skipped and
counted; a shard that ends early or fails to read is a *shortfall*, reported with its
counts and last key; a key seen twice is skipped. Everything lands in a :class:`ReadLog`
(counts by reason with one example each, shortfalls, refills), warned about at the 1st,
10th, 100th... occurrence.

docs/shards.md ("The stream") has the details.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Mapping, Sequence

import cv2
import numpy as np
import webdataset as wds

from depthpi.data.remote import ServerUnreachable
from depthpi.data.schema import Sample, SampleError, decode_sample
from depthpi.data.shard_cache import ShardRefused, local_copy
from depthpi.data.shards import Manifest, ShardInfo, SplitLocation
from depthpi.data.tar_members import TarErrors, describe, tar_samples

log = logging.getLogger(__name__)

MapFn = Callable[[Sample, int], dict]
# Data-dependent failures of decoding (not bugs of the pipeline): skipped like SampleError.
DECODE_ERRORS = (SampleError, ValueError, TypeError, KeyError, IndexError, AttributeError, cv2.error)
MAX_RECORDS = 20  # skip records a ReadLog keeps in full (beyond the one example per reason)


# --- accounting ------------------------------------------------------------------------
class ReadReport:
    """What a reader met: samples read and used, bytes read per source, skips by reason (one
    example each), shortfalls per shard, refill passes. Mergeable; :meth:`as_dict` is plain JSON."""

    def __init__(self):
        self.read, self.used = 0, 0
        self.bytes: Counter = Counter()  # source role (ShardSource.role) → bytes read from its shards
        self.skipped: Counter = Counter()
        self.examples: dict[str, dict] = {}
        self.refills: list[dict] = []
        self.shortfalls: list[dict] = []

    def merge(self, other: dict) -> None:
        self.read += other["samples_read"]
        self.used += other["samples_used"]
        self.bytes.update(other["bytes_read"])
        self.skipped.update(other["skipped"])
        for reason, example in other["examples"].items():
            self.examples.setdefault(reason, example)
        self.refills.extend(other["refills"])
        self.shortfalls.extend(other["shortfalls"])

    def as_dict(self) -> dict:
        """``samples_read``, ``samples_used``, ``bytes_read`` {source role: bytes},
        ``skipped`` {reason: n}, ``skipped_total``, ``examples`` {reason: {key, shard,
        message}}, ``refills`` [{epoch, rank, worker, pass, missing}], ``shortfalls``
        [{shard, expected, read, missing, last_key, error}] (``missing`` < 0: the shard held
        more samples than its manifest entry lists)."""
        return {"samples_read": self.read, "samples_used": self.used, "bytes_read": dict(self.bytes),
                "skipped": dict(self.skipped),
                "skipped_total": sum(self.skipped.values()), "examples": dict(self.examples),
                "refills": list(self.refills), "shortfalls": list(self.shortfalls)}

    def __bool__(self) -> bool:
        return bool(self.read or self.used or self.bytes or self.skipped or self.refills or self.shortfalls)


class ReadLog:
    """A reader's :class:`ReadReport` in the making, with rate-limited warnings.

    Args:
        context: who reads, for the log lines (e.g. ``rank 0 worker 1 epoch 3``).
    """

    def __init__(self, context: str):
        self.context, self.report, self.seen = context, ReadReport(), Counter()
        self.records: list[dict] = []  # the first MAX_RECORDS skips in full (precompute's manifest)

    def skip(self, reason: str, key: str | None, shard: str | None, message: str) -> None:
        self.report.skipped[reason] += 1
        self.report.examples.setdefault(reason, {"key": key, "shard": shard, "message": message})
        if len(self.records) < MAX_RECORDS:
            self.records.append({"reason": reason, "key": key, "shard": shard, "message": message})
        self.seen[reason] += 1
        n = self.seen[reason]
        if n == 1 or float(np.log10(n)).is_integer():  # 1st, 10th, 100th, ...
            log.warning("%s: skipped sample %s of shard %s (%s; occurrence %d of %s)", self.context, key, shard,
                        message, n, reason)

    def shortfall(self, info: ShardInfo, read: int, last_key: str | None, error: str | None) -> None:
        record = {"shard": info.name, "expected": info.count, "read": read, "missing": info.count - read,
                  "last_key": last_key, "error": error}
        self.report.shortfalls.append(record)
        log.warning("%s: %s", self.context, shortfall_message(record))

    def take(self) -> dict | None:
        """The report since the last ``take`` (None if nothing happened); starts a new one."""
        report, self.report = self.report, ReadReport()
        return report.as_dict() if report else None


def shortfall_message(record: dict) -> str:
    """One line for a shortfall record: counts, where the tar ended, why."""
    shard, read, expected = record["shard"], record["read"], record["expected"]
    if read > expected:
        return f"shard {shard}: {read} samples read, its manifest entry lists {expected} (stale manifest?)"
    after = f"after key {record['last_key']}" if record["last_key"] else "before its first sample"
    why = record["error"] or "the tar ended early (a damaged header reads as the end of the archive)"
    return f"shard {shard}: {read} of {expected} samples read, {expected - read} missing; stopped {after}: {why}"


def skip_summary(reports: Iterable[dict]) -> dict:
    """Merged reports (of several loaders, passes or ranks) → what a run reports of its losses:
    ``{"total": n, "by_reason": {reason: n}, "examples": {reason: {key, shard, message}},
    "shortfalls": {shard: record}}``. Missing samples of short shards count under
    ``shard:missing`` (each shard once, however many passes found it short)."""
    merged = ReadReport()
    for report in reports:
        merged.merge(report)
    by_reason, examples = dict(merged.skipped), dict(merged.examples)
    shortfalls = {}
    for record in merged.shortfalls:
        shortfalls.setdefault(record["shard"], record)
    missing = sum(max(r["missing"], 0) for r in shortfalls.values())
    if missing:
        first = next(r for r in shortfalls.values() if r["missing"] > 0)
        by_reason["shard:missing"] = missing
        examples["shard:missing"] = {"key": None, "shard": first["shard"], "message": shortfall_message(first)}
    return {"total": sum(by_reason.values()), "by_reason": by_reason, "examples": examples,
            "shortfalls": shortfalls}


def read_summary(reports: Iterable[dict]) -> dict:
    """Merged reports → what reading cost per sample used: ``{"samples": n, "bytes": {role: b},
    "bytes_per_sample": {role: b / n}}`` (``images``, ``features``: see :class:`ShardSource`).
    Bytes count everything read, the spare samples a reader reads past without using included."""
    merged = ReadReport()
    for report in reports:
        merged.merge(report)
    per_sample = {role: n / merged.used if merged.used else None for role, n in sorted(merged.bytes.items())}
    return {"samples": merged.used, "bytes": dict(sorted(merged.bytes.items())), "bytes_per_sample": per_sample}


# --- opening and parsing tars --------------------------------------------------------------
@dataclass(frozen=True)
class ShardSource:
    """One shard to read: where it is, its manifest entry, the role its bytes are counted
    under, and an optional companion shard (same keys, same order, e.g. precomputed teacher
    features) read in step with it."""

    url: str
    info: ShardInfo
    remote: bool = False
    companion: ShardSource | None = None
    role: str = "images"


def split_sources(location: SplitLocation, manifest: Manifest, role: str = "images") -> list[ShardSource]:
    """The :class:`ShardSource` of every shard of ``manifest`` (manifest order)."""
    return [ShardSource(location.url(shard.name), shard, location.remote, role=role) for shard in manifest.shards]


class CountedStream:
    """A binary stream whose reads add their size to ``log``'s bytes of ``role``."""

    def __init__(self, stream: IO[bytes], log: ReadLog, role: str):
        self.stream, self.log, self.role = stream, log, role

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.log.report.bytes[self.role] += len(data)
        return data

    def close(self) -> None:
        self.stream.close()


def read_to_end(stream: IO[bytes]) -> None:
    """Consume the bytes after the archive's end: a failing stream (curl's exit status) fails here."""
    while stream.read(1 << 20):
        pass


def _close_quietly(stream: IO[bytes] | None) -> None:
    try:
        if stream is not None:
            stream.close()
    except Exception:  # closing early kills curl & co.; their exit status says nothing then
        pass


def open_shard(source: ShardSource, cache_dir: str | Path | None = None) -> IO[bytes]:
    """A binary stream of the shard: the file, or a checked local copy of a remote shard
    (kept in ``cache_dir`` when given; :mod:`depthpi.data.shard_cache`)."""
    if not source.remote:
        return open(source.url, "rb")
    return local_copy(source.url, source.info, cache_dir)


def read_shard(source: ShardSource, log: ReadLog, cache_dir: str | Path | None = None) -> Iterator[dict]:
    """Samples (tar members by key, plus ``__shard__``: the manifest's name) of one shard.

    Read to its end, the shard's distinct keys are compared with the manifest's count and
    any difference is logged as a shortfall; a reader that stops early checks nothing.
    """
    info, seen, last_key, stream = source.info, set(), None, None
    errors = TarErrors(log, info.name)
    try:
        stream = CountedStream(open_shard(source, cache_dir), log, source.role)
        for sample in tar_samples(stream, source.url, errors):
            key = sample["__key__"]
            if key in seen:
                log.skip("tar:duplicate key", key, info.name, "a second sample with this key in the shard")
                continue
            seen.add(key)
            last_key, sample["__shard__"] = key, info.name
            yield sample
        read_to_end(stream)
        stream.close()
    except ServerUnreachable:  # not this shard: the whole server (the run stops, see depthpi.data.loader)
        raise
    except ShardRefused as err:
        errors.fatal = errors.fatal or str(err)
    except Exception as err:  # tar and stream errors end the shard: counted below, never raised
        errors.fatal = errors.fatal or describe(err)
    finally:
        _close_quietly(stream)
    if len(seen) != info.count:
        log.shortfall(info, len(seen), last_key, errors.fatal)
    elif errors.fatal:
        log.skip(f"tar:{errors.fatal.split(':')[0]}", last_key, info.name, errors.fatal)


def _paired(source: ShardSource, log: ReadLog, cache_dir) -> Iterator[dict]:
    """Members of a shard merged with those of its companion (same keys, same order).

    When one side ends early its count check reports it and the pair stops there; keys
    out of step mean the two were not built together, which no skip can repair.
    """
    main, extra = read_shard(source, log, cache_dir), read_shard(source.companion, log, cache_dir)
    for members in main:
        features = next(extra, None)
        if features is None:
            break
        if members["__key__"] != features["__key__"]:
            raise ValueError(f"{source.companion.url}: keys out of step with {source.url} (source "
                             f"{members['__key__']!r}, features {features['__key__']!r}); rebuild the feature "
                             f"shards for this source split")
        yield {**{k: v for k, v in features.items() if not k.startswith("__")}, **members}
    for _ in main:  # read both to their ends so that both are checked against their manifests
        pass
    for _ in extra:
        pass


# --- stages --------------------------------------------------------------------------------
def shard_list(urls: Sequence[str]):
    """webdataset's ``SimpleShardList`` of ``urls`` (an empty split has no shards to list)."""
    return wds.SimpleShardList(list(urls)) if urls else []


def select_shards(shards: Iterable[dict], order: Sequence[int]) -> Iterator[dict]:
    """Split by node and worker: the entries ``order`` picks (indices into ``shards``), in that order."""
    listed = list(shards)
    for index in order:
        yield listed[index]


class TarSamples:
    """Stage: shard entries (``{"url"}``) → samples; see :func:`read_shard`.

    :meth:`drain` reads what is left of the shards without decoding, so that a reader
    that stops at its quota still checks every shard it was given against the manifest.
    """

    def __init__(self, sources: Mapping[str, ShardSource], log: ReadLog, cache_dir: str | Path | None = None):
        self.sources, self.log, self.cache_dir = sources, log, cache_dir
        self._samples: Iterator[dict] | None = None

    def __call__(self, shards: Iterable[dict]) -> Iterator[dict]:
        self._samples = self._read(shards)
        return self._samples

    def _read(self, shards: Iterable[dict]) -> Iterator[dict]:
        for entry in shards:
            source = self.sources[entry["url"]]
            samples = _paired(source, self.log, self.cache_dir) if source.companion else \
                read_shard(source, self.log, self.cache_dir)
            for sample in samples:
                self.log.report.read += 1
                yield sample

    def drain(self, shards: Iterable[dict] = ()) -> None:
        """Read on to the end (``shards``: what to read if the stage never started)."""
        for _ in self._samples if self._samples is not None else self._read(shards):
            pass


def decode_samples(samples: Iterable[dict], log: ReadLog) -> Iterator[tuple[str, Sample]]:
    """Tar members → (shard name, :class:`Sample`); undecodable samples skipped and counted."""
    for members in samples:
        try:
            yield members.get("__shard__"), decode_sample(members)
        except DECODE_ERRORS as err:
            field = err.field if isinstance(err, SampleError) else type(err).__name__
            log.skip(f"decode:{field}", members.get("__key__"), members.get("__shard__"), str(err))


def map_samples(samples: Iterable[tuple[str, Sample]], map_fn: MapFn, epoch: int, log: ReadLog) -> Iterator[dict]:
    """``map_fn(sample, epoch)``; a sample it fails on is skipped, counted and reported.

    A :class:`SampleError` names the field at fault. Any other exception is counted under its
    type, and its first occurrence is logged with the traceback: a sample the schema let
    through but the pipeline cannot use must not end an epoch, and a pipeline bug that fails
    on every sample still stops the run, because a pass with no usable sample raises.
    """
    for shard, sample in samples:
        try:
            out = map_fn(sample, epoch)
        except SampleError as err:
            log.skip(f"map:{err.field}", sample.key, shard, str(err))
            continue
        except Exception as err:  # noqa: BLE001 — per-sample failures are skipped and reported, see above
            reason = f"map:{type(err).__name__}"
            if not log.seen[reason]:
                logging.getLogger(__name__).warning("%s: map function failed on sample %s of shard %s", log.context, sample.key,
                                   shard, exc_info=True)
            log.skip(reason, sample.key, shard, f"{type(err).__name__}: {err}")
            continue
        log.report.used += 1
        yield out
