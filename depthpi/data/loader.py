"""Batches from a split's shards: equal batches per rank, no sample twice, bad samples skipped.

Per DataLoader worker, one flat WebDataset stage list (STYLE habit 5)::

    shard plan(seed, epoch)  = deterministic shuffle → split by node → split by worker
    → tar → samples          (nothrow: tar errors counted and logged, rate-limited)
    → shuffle buffer         (seeded by seed, epoch, rank, worker, pass)
    → decode_sample → map_fn(sample, epoch)   (SampleError: skipped, counted, remembered)
    → exactly quota·B samples (refill passes when bad samples ate the reserve)
    → batch (torch default_collate)

Equal batches per rank. The shard → (rank, worker) assignment is a pure function of the
manifest counts and (seed, epoch, world_size, num_workers), so every worker computes
every other worker's sample count. Shards are dealt to ranks, then to each rank's
workers, largest first to the least-loaded bin (LPT, on a canonical order) — a template
whose per-rank loads do not depend on the epoch. Each epoch then (a) permutes shards of
equal count among their template positions, (b) permutes which rank takes which rank
bin and which worker which worker bin, (c) shuffles each worker's read order. Worker w
of rank r may yield at most ``cap = floor(T_rw / B)`` full batches; every rank yields
``L = min_r Σ_w cap_rw`` (so ``len()`` is the same on all ranks and in all epochs), split
over its workers to keep their spare samples even. The excess samples are dropped; they
differ every epoch because the assignment and read order do.

Bad samples. A worker reads its shards once and stops as soon as it has ``quota · B``
good samples; its spare samples (``T_rw − quota · B``) are the reserve that bad samples
use up. Only if bad samples exceed the reserve does the worker rewind over its own
shards (another pass, reshuffled) to fill the missing samples; those are repeats within
the epoch, recorded in ``stats()["refills"]`` and logged. The batch count never changes.
A pass that yields no usable sample at all raises (it would otherwise loop forever).

Evaluation (``shuffle=False, drop_last=False``): shards in stored order, every sample
exactly once across ranks, last batches partial; ranks may then get different numbers
of batches — fine because evaluation runs no collective per batch, only one reduction
at the end. ``infinite=True`` (the unlabelled stream) cycles through freshly planned
passes forever, so it never runs out before the labelled stream.

The epoch reaches workers (persistent ones included) through a shared
``multiprocessing.Value``; ``set_epoch`` writes it before ``iter``.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import multiprocessing
import os
import random
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from depthpi.data.schema import Sample, SampleError, decode_sample
from depthpi.data.shards import read_manifest

STATS_KEY = "__loader_stats__"
log = logging.getLogger(__name__)

MapFn = Callable[[Sample, int], dict]
# Data-dependent failures of decoding (not bugs of the pipeline): skipped like SampleError.
DECODE_ERRORS = (SampleError, ValueError, TypeError, KeyError, IndexError, AttributeError, cv2.error)


# --- planning: which worker reads which shards, and how many batches ----------------
def _lpt(items: list[int], counts: list[int], bins: int) -> list[list[int]]:
    """Deal ``items`` (largest first) to the least-loaded of ``bins``; ties to the lowest bin."""
    heap, out = [(0, b) for b in range(bins)], [[] for _ in range(bins)]
    for item in items:
        load, b = heapq.heappop(heap)
        out[b].append(item)
        heapq.heappush(heap, (load + counts[item], b))
    return out


def _split_quota(totals: list[int], target: int, batch_size: int) -> list[int]:
    """Give ``target`` batches to workers with ``totals`` samples, largest spare first."""
    quota, heap = [0] * len(totals), [(-total, w) for w, total in enumerate(totals)]
    for _ in range(target):
        spare, w = heapq.heappop(heap)
        assert -spare >= batch_size, "target exceeds the rank's capacity"
        quota[w] += 1
        heapq.heappush(heap, (spare + batch_size, w))
    return quota


@dataclass(frozen=True)
class EpochPlan:
    """What every (rank, worker) reads in one pass.

    Attributes:
        shards: ``shards[rank][worker]`` shard indices in read order.
        quotas: ``quotas[rank][worker]`` full batches to yield, or None (read everything).
    """

    shards: tuple[tuple[tuple[int, ...], ...], ...]
    quotas: tuple[tuple[int, ...], ...] | None


class ShardPlanner:
    """Deterministic shard assignment and batch quotas from the manifest counts.

    Args:
        counts: samples per shard, in manifest order.
        world_size: ranks. num_workers: loader workers per rank (0 counts as 1).
        batch_size: samples per batch.
    """

    def __init__(self, counts: list[int], world_size: int, num_workers: int, batch_size: int):
        self.counts, self.batch_size = list(counts), batch_size
        canonical = sorted(range(len(counts)), key=lambda s: (-counts[s], s))
        self.template = [_lpt(shards, counts, max(1, num_workers)) for shards in _lpt(canonical, counts, world_size)]
        totals = [[sum(counts[s] for s in shards) for shards in rank] for rank in self.template]
        self.batches_per_rank = min(sum(t // batch_size for t in rank) for rank in totals)
        self.quotas = [_split_quota(rank, self.batches_per_rank, batch_size) for rank in totals]

    def plan(self, seed: int, epoch: int, *, shuffle: bool, capped: bool, cycle: int = 0) -> EpochPlan:
        """The plan of (seed, epoch, cycle); ``capped`` adds the equal-batches quotas."""
        slots = [[list(shards) for shards in rank] for rank in self.template]
        quotas = [list(q) for q in self.quotas]
        if shuffle:
            rng = np.random.default_rng([seed, epoch, cycle])
            relabel = self._relabel_equal_counts(rng)
            order = rng.permutation(len(slots))
            slots, quotas = [slots[i] for i in order], [quotas[i] for i in order]
            for r in range(len(slots)):
                order = rng.permutation(len(slots[r]))
                slots[r], quotas[r] = [slots[r][i] for i in order], [quotas[r][i] for i in order]
                slots[r] = [[int(relabel[s]) for s in rng.permutation(shards)] for shards in slots[r]]
        else:
            slots = [[sorted(shards) for shards in rank] for rank in slots]
        return EpochPlan(tuple(tuple(tuple(s) for s in rank) for rank in slots),
                         tuple(tuple(q) for q in quotas) if capped else None)

    def _relabel_equal_counts(self, rng: np.random.Generator) -> np.ndarray:
        """Permutation mapping each shard to another of the same count (loads unchanged)."""
        counts = np.asarray(self.counts)
        relabel = np.arange(len(counts))
        for value in np.unique(counts):
            same = np.flatnonzero(counts == value)
            relabel[same] = rng.permutation(same)
        return relabel

    def samples(self, plan: EpochPlan, rank: int) -> list[int]:
        """Samples per worker of ``rank`` under ``plan``."""
        return [sum(self.counts[s] for s in shards) for shards in plan.shards[rank]]


# --- statistics ----------------------------------------------------------------------
class LoaderStats:
    """Samples read and used, skips by reason with one example each, refill passes."""

    def __init__(self):
        self.read, self.used = 0, 0
        self.skipped: Counter = Counter()
        self.examples: dict[str, dict] = {}
        self.refills: list[dict] = []

    def skip(self, reason: str, key: str | None, shard: str | None, message: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, {"key": key, "shard": shard, "message": message})

    def merge(self, other: dict) -> None:
        self.read += other["samples_read"]
        self.used += other["samples_used"]
        self.skipped.update(other["skipped"])
        for reason, example in other["examples"].items():
            self.examples.setdefault(reason, example)
        self.refills.extend(other["refills"])

    def as_dict(self) -> dict:
        return {"samples_read": self.read, "samples_used": self.used, "skipped": dict(self.skipped),
                "skipped_total": sum(self.skipped.values()), "examples": dict(self.examples),
                "refills": list(self.refills)}

    def __bool__(self) -> bool:
        return bool(self.read or self.skipped or self.refills)


def skip_summary(reports: list[dict]) -> dict:
    """Merged ``stats()`` reports (of several loaders or ranks) → what a run reports of its skips:
    ``{"total": n, "by_reason": {reason: n}, "examples": {reason: {key, shard, message}}}``."""
    merged = LoaderStats()
    for report in reports:
        merged.merge(report)
    return {"total": sum(merged.skipped.values()), "by_reason": dict(merged.skipped),
            "examples": dict(merged.examples)}


class _WorkerContext:
    """One worker's identity for an epoch, its stats since the last report, its log limiter."""

    def __init__(self, rank: int, worker: int, epoch: int):
        self.rank, self.worker, self.epoch = rank, worker, epoch
        self.stats, self.seen = LoaderStats(), Counter()

    def skip(self, reason: str, key: str | None, shard: str | None, message: str) -> None:
        self.stats.skip(reason, key, shard, message)
        self.seen[reason] += 1
        n = self.seen[reason]
        if n == 1 or float(np.log10(n)).is_integer():  # 1st, 10th, 100th, ...: never silent, never a flood
            log.warning("rank %d worker %d epoch %d: skipped sample %s of shard %s (%s; occurrence %d of %s)",
                        self.rank, self.worker, self.epoch, key, shard, message, n, reason)

    def on_tar_error(self, exn: BaseException, urls: list[str]) -> bool:
        """webdataset handler: count and log a tar-level error, then continue."""
        text = " ".join(str(a) for a in exn.args)
        shard = next((os.path.basename(u) for u in urls if u in text), None)
        self.skip(f"tar:{type(exn).__name__}", None, shard, f"{type(exn).__name__}: {exn.args[0] if exn.args else ''}")
        return True

    def take_report(self) -> dict | None:
        report, self.stats = self.stats, LoaderStats()
        return report.as_dict() if report else None


# --- stages ----------------------------------------------------------------------------
def _decode_and_map(samples: Iterator[dict], *, map_fn: MapFn, ctx: _WorkerContext) -> Iterator[dict]:
    """Tar members → ``map_fn(decode_sample(members), epoch)``; bad samples skipped and counted."""
    for members in samples:
        ctx.stats.read += 1
        key, shard = members.get("__key__"), os.path.basename(members.get("__url__", "?"))
        try:
            sample = decode_sample(members)
        except DECODE_ERRORS as err:
            field = err.field if isinstance(err, SampleError) else type(err).__name__
            ctx.skip(f"decode:{field}", key, shard, str(err))
            continue
        try:
            out = map_fn(sample, ctx.epoch)
        except SampleError as err:
            ctx.skip(f"map:{err.field}", key, shard, str(err))
            continue
        except Exception as err:  # a pipeline bug, not a bad sample: crash, but say where
            err.add_note(f"while mapping sample {key!r} of shard {shard}")
            raise
        ctx.stats.used += 1
        yield out


def collate(samples: list[dict]) -> dict:
    """Samples → batch: arrays → stacked tensors, numbers/bools → tensors, str → lists, dicts recursively."""
    try:
        return default_collate(samples)
    except (TypeError, RuntimeError) as err:
        keys = [s.get("key") for s in samples]
        raise TypeError(f"cannot collate samples {keys}: {err}; map_fn must return the same fields, "
                        f"shapes and types for every sample") from err


def _with_reports(batches: Iterator[dict], ctx: _WorkerContext) -> Iterator[dict]:
    """Attach the worker's new stats to each batch; a stats-only item closes the stream."""
    for batch in batches:
        report = ctx.take_report()
        if report:
            batch[STATS_KEY] = report
        yield batch
    report = ctx.take_report()
    if report:
        yield {STATS_KEY: report}


class ShardDataset(IterableDataset):
    """The per-worker stream of batches (see the module docstring for the design).

    Args:
        urls: shard paths, manifest order. counts: samples per shard.
        batch_size: samples per batch. map_fn: picklable ``(Sample, epoch) -> dict``.
        rank, world_size, num_workers, seed, shuffle, shuffle_buffer, drop_last,
        infinite: see :func:`make_loader`.
    """

    def __init__(self, urls: list[str], counts: list[int], batch_size: int, map_fn: MapFn, *, rank: int,
                 world_size: int, num_workers: int, seed: int, shuffle: bool, shuffle_buffer: int,
                 drop_last: bool, infinite: bool, companion_urls: list[str] | None = None):
        super().__init__()
        self.urls, self.batch_size, self.map_fn = urls, batch_size, map_fn
        self.companion_urls = companion_urls
        self.rank, self.seed, self.shuffle, self.shuffle_buffer = rank, seed, shuffle, shuffle_buffer
        self.drop_last, self.infinite = drop_last, infinite
        self.planner = ShardPlanner(counts, world_size, num_workers, batch_size)
        self.epoch = multiprocessing.Value("q", 0, lock=False)  # shared with (persistent) workers

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        ctx = _WorkerContext(self.rank, info.id if info else 0, int(self.epoch.value))
        source = self._cycles if self.infinite else self._epoch
        return iter(wds.DataPipeline(
            partial(source, ctx),
            wds.batched(self.batch_size, collation_fn=collate, partial=not (self.drop_last or self.infinite)),
            partial(_with_reports, ctx=ctx),
        ))

    def _pass(self, ctx: _WorkerContext, shard_ids: tuple[int, ...], cycle: int, pass_index: int):
        """One read of ``shard_ids``: tar → samples → shuffle → decode → map."""
        urls = [self.urls[s] for s in shard_ids]
        seed = np.random.SeedSequence([self.seed, ctx.epoch, cycle, pass_index, ctx.rank, ctx.worker])
        handler = partial(ctx.on_tar_error, urls=urls)
        if self.companion_urls is None:
            samples = iter(wds.DataPipeline(partial(iter, [{"url": url} for url in urls]),
                                            wds.tarfile_to_samples(handler=handler)))
        else:
            samples = _paired_samples(urls, [self.companion_urls[s] for s in shard_ids], handler)
        return iter(wds.DataPipeline(
            lambda: samples,
            wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer,
                        rng=random.Random(int(seed.generate_state(1)[0]))) if self.shuffle else None,
            partial(_decode_and_map, map_fn=self.map_fn, ctx=ctx),
        ))

    def _epoch(self, ctx: _WorkerContext) -> Iterator[dict]:
        plan = self.planner.plan(self.seed, ctx.epoch, shuffle=self.shuffle, capped=self.drop_last)
        shard_ids = plan.shards[ctx.rank][ctx.worker]
        if plan.quotas is None:
            yield from self._pass(ctx, shard_ids, 0, 0)
            return
        need, done = plan.quotas[ctx.rank][ctx.worker] * self.batch_size, 0
        for pass_index in itertools.count():
            if done == need:
                return
            if pass_index:  # bad samples ate the reserve: repeat own samples, say so
                ctx.stats.refills.append({"epoch": ctx.epoch, "rank": ctx.rank, "worker": ctx.worker,
                                          "pass": pass_index, "missing": need - done})
                log.warning("rank %d worker %d epoch %d: %d samples short after skipping bad ones; "
                            "rewinding over its shards (pass %d)", ctx.rank, ctx.worker, ctx.epoch,
                            need - done, pass_index)
            got = 0
            for sample in self._pass(ctx, shard_ids, 0, pass_index):
                yield sample
                done, got = done + 1, got + 1
                if done == need:
                    return
            self._check_progress(got, shard_ids, ctx)

    def _cycles(self, ctx: _WorkerContext) -> Iterator[dict]:
        for cycle in itertools.count():
            plan = self.planner.plan(self.seed, ctx.epoch, shuffle=self.shuffle, capped=False, cycle=cycle)
            shard_ids = plan.shards[ctx.rank][ctx.worker]
            got = 0
            for sample in self._pass(ctx, shard_ids, cycle, 0):
                yield sample
                got += 1
            self._check_progress(got, shard_ids, ctx)

    def _check_progress(self, got: int, shard_ids: tuple[int, ...], ctx: _WorkerContext) -> None:
        if got == 0:
            names = [os.path.basename(self.urls[s]) for s in shard_ids]
            raise RuntimeError(f"rank {ctx.rank} worker {ctx.worker}: no usable sample in shards {names}; "
                               f"skips so far: {dict(ctx.stats.skipped)}, e.g. {ctx.stats.examples}")


def _shard_samples(url: str, handler) -> Iterator[dict]:
    return iter(wds.DataPipeline(partial(iter, [{"url": url}]), wds.tarfile_to_samples(handler=handler)))


def _paired_samples(urls: list[str], companions: list[str], handler) -> Iterator[dict]:
    """Members of each shard merged with those of its companion shard (same keys, same order).

    The companion (precomputed teacher features) mirrors its source shard one to one; a
    key mismatch means the two were not built together, which no skip can repair.
    """
    for url, companion in zip(urls, companions):
        for members, extra in itertools.zip_longest(_shard_samples(url, handler), _shard_samples(companion, handler)):
            if members is None or extra is None or members["__key__"] != extra["__key__"]:
                got = [m.get("__key__") if m else "<end of shard>" for m in (members, extra)]
                raise ValueError(f"{companion}: keys out of step with {url} (source {got[0]!r}, features {got[1]!r}); "
                                 f"rebuild the feature shards for this source split")
            yield {**{k: v for k, v in extra.items() if not k.startswith("__")}, **members}


# --- the loader object -------------------------------------------------------------------
class ShardLoader:
    """Iterable of batches for one rank, with ``len``, ``set_epoch``, ``stats`` and resume state.

    Batches are dicts of tensors (and lists of strings) as produced by :func:`collate`.
    """

    def __init__(self, dataset: ShardDataset, loader: DataLoader, split_dir: Path):
        self.dataset, self.loader, self.split_dir = dataset, loader, split_dir
        self.epoch, self._consumed, self._skip = 0, 0, 0
        self._stats, self._pass = LoaderStats(), LoaderStats()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the next ``iter()`` (shard plan, shuffles, map_fn's epoch)."""
        self.epoch = int(epoch)
        self.dataset.epoch.value = self.epoch

    def __len__(self) -> int:
        """Batches per epoch on this rank: equal on all ranks when ``drop_last``.

        Without ``drop_last`` (evaluation) it assumes no bad samples; ``infinite`` loaders
        give the nominal epoch length of their split.
        """
        ds = self.dataset
        if ds.drop_last or ds.infinite:
            return ds.planner.batches_per_rank
        plan = ds.planner.plan(ds.seed, self.epoch, shuffle=ds.shuffle, capped=False)
        return sum(-(-n // ds.batch_size) for n in ds.planner.samples(plan, ds.rank))

    def __iter__(self) -> Iterator[dict]:
        skip, self._skip, self._consumed = self._skip, 0, 0
        self._pass = LoaderStats()
        for item in self.loader:
            report = item.pop(STATS_KEY, None)
            if report:
                self._stats.merge(report)
                self._pass.merge(report)
            if not item:
                continue
            self._consumed += 1
            if self._consumed <= skip:  # resuming mid-epoch: re-read and discard
                continue
            yield item

    def stats(self) -> dict:
        """Since creation: ``samples_read``, ``samples_used``, ``skipped`` {reason: count},
        ``examples`` {reason: {key, shard, message}}, ``refills`` [{epoch, rank, worker, pass, missing}]."""
        return self._stats.as_dict()

    def pass_stats(self) -> dict:
        """``stats()`` of the current (or last) pass over the data only: one epoch, one evaluation."""
        return self._pass.as_dict()

    def state_dict(self) -> dict:
        """Data position: the epoch and the batches of it handed out so far."""
        ds = self.dataset
        return {"epoch": self.epoch, "batches": self._consumed, "seed": ds.seed,
                "world_size": len(ds.planner.template), "num_workers": len(ds.planner.template[0]),
                "batch_size": ds.batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next ``iter()`` replays ``state["epoch"]`` and discards its first batches.

        Skipping re-reads and re-decodes the skipped batches (exact, including which
        samples were bad); it costs their read time once.
        """
        mine = self.state_dict()
        changed = [k for k in ("seed", "world_size", "num_workers", "batch_size") if k in state and state[k] != mine[k]]
        if changed:
            log.warning("%s: resuming with different %s than the saved data position; the skipped "
                        "batches are not the ones consumed before", self.split_dir, changed)
        self.set_epoch(state["epoch"])
        self._skip = int(state["batches"])


def _mirror_manifest(manifest, companion_dir: Path):
    """The companion split's manifest, checked to mirror ``manifest`` shard for shard."""
    mirror = read_manifest(companion_dir)
    ours = [(s.name, s.count, s.first_key, s.last_key) for s in manifest.shards]
    theirs = [(s.name, s.count, s.first_key, s.last_key) for s in mirror.shards]
    if ours != theirs:
        diff = next((a, b) for a, b in itertools.zip_longest(ours, theirs) if a != b)
        raise ValueError(f"{companion_dir / 'manifest.json'}: shards do not mirror the source split "
                         f"(first difference, as (name, count, first key, last key): source {diff[0]}, "
                         f"companion {diff[1]})")
    return mirror


def _world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() if rank is None else rank, dist.get_world_size() if world_size is None else world_size
    return rank or 0, world_size or 1


def make_loader(split_dir: str | Path, batch_size: int, map_fn: MapFn, *, rank: int | None = None,
                world_size: int | None = None, num_workers: int = 0, seed: int = 0, shuffle: bool = True,
                shuffle_buffer: int = 500, drop_last: bool = True, infinite: bool = False,
                persistent_workers: bool = True, pin_memory: bool = False, prefetch_factor: int = 2,
                multiprocessing_context: str | None = None, check_sha256: bool = False,
                companion_dir: str | Path | None = None) -> ShardLoader:
    """A loader of one rank over a split directory.

    Args:
        split_dir: directory with ``manifest.json`` and shards (checked at once).
        batch_size: samples per batch on this rank.
        map_fn: picklable ``(Sample, epoch) -> dict`` (the pose pipeline); may raise
            :class:`SampleError` to skip a sample.
        rank, world_size: this process's rank; default from ``torch.distributed`` (else 0, 1).
        num_workers: DataLoader worker processes (0: in this process).
        seed: run seed; the shard plan and shuffles depend on (seed, epoch).
        shuffle: shuffle shards and samples (training); False reads in stored order.
        shuffle_buffer: samples held for shuffling in each worker.
        drop_last: training semantics — equal full batches on every rank. False
            (evaluation): every sample once, partial last batches, uneven ranks allowed.
        infinite: never stop (the unlabelled stream); ``len`` is then nominal.
        persistent_workers, pin_memory, prefetch_factor, multiprocessing_context: as in
            :class:`torch.utils.data.DataLoader`.
        check_sha256: hash every shard against the manifest before starting.
        companion_dir: a split of shards mirroring this one (same names, keys, order),
            e.g. precomputed teacher features; their members are merged into each sample
            and reach ``map_fn`` as ``Sample.extras``.
    Raises:
        ManifestError: the split directory or its manifest is missing or inconsistent.
        ValueError: bad arguments, or fewer shards than ``world_size * num_workers`` in
            training mode (workers without shards would make ranks unequal).
    """
    rank, world_size = _world(rank, world_size)
    if batch_size < 1 or not 0 <= rank < world_size or num_workers < 0 or seed < 0 or shuffle_buffer < 1:
        raise ValueError(f"make_loader({split_dir}): need batch_size >= 1, 0 <= rank < world_size, num_workers "
                         f">= 0, seed >= 0, shuffle_buffer >= 1; got {batch_size}, {rank}, {world_size}, "
                         f"{num_workers}, {seed}, {shuffle_buffer}")
    split_dir = Path(split_dir)
    manifest = read_manifest(split_dir, check_sha256=check_sha256)
    slots = world_size * max(1, num_workers)
    if len(manifest.shards) < slots:
        message = (f"{split_dir}: {len(manifest.shards)} shards for {world_size} rank(s) x {max(1, num_workers)} "
                   f"worker(s) = {slots} readers; rebuild with smaller shards or lower data.num_workers")
        if drop_last or infinite:
            raise ValueError(message)
        log.warning("%s (some evaluation workers will idle)", message)
    companions = None
    if companion_dir is not None:
        companions = [str(Path(companion_dir) / s.name) for s in _mirror_manifest(manifest, Path(companion_dir)).shards]
    dataset = ShardDataset([str(split_dir / s.name) for s in manifest.shards], manifest.counts, batch_size, map_fn,
                           rank=rank, world_size=world_size, num_workers=num_workers, seed=seed, shuffle=shuffle,
                           shuffle_buffer=shuffle_buffer, drop_last=drop_last, infinite=infinite,
                           companion_urls=companions)
    extra = {}
    if num_workers > 0:
        extra = dict(persistent_workers=persistent_workers, prefetch_factor=prefetch_factor,
                     multiprocessing_context=multiprocessing_context)
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **extra)
    return ShardLoader(dataset, loader, split_dir)
