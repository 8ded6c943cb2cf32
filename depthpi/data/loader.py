"""Batches from a split's shards: equal batches per rank, no sample twice, nothing lost silently.

Per DataLoader worker, :class:`ShardDataset` runs the planner's shards
(:mod:`depthpi.data.shard_plan`) through one WebDataset stage list
(:mod:`depthpi.data.shard_stream`) and yields exactly n samples: full batches, then its
loose last samples; it rereads its shards only when bad samples exceed its reserve.
:class:`ShardLoader` (the main process) pools the loose samples of all workers, in the
DataLoader's fixed delivery order, into the rank's last batches, so a replayed epoch gives
the same batches. Each :class:`Delivery` carries the report of what its worker read beside
the batch; evaluation mode reads every sample once, ``infinite=True`` cycles forever, and
``set_epoch`` reaches persistent workers through a shared value.

docs/shards.md ("The loader") is the full account.
"""
from __future__ import annotations

import itertools
import logging
import multiprocessing
import random
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from depthpi.data.remote import RemoteConfig, ServerUnreachable
from depthpi.data.remote import configure as configure_remote, settings as remote_settings
from depthpi.data.shard_plan import ShardPlanner, companion_set
from depthpi.data.shard_stream import (DECODE_ERRORS, MapFn, ReadLog, ReadReport, ShardSource, TarSamples,
                                       decode_samples, map_samples, select_shards, shard_list, skip_summary,
                                       split_sources)
from depthpi.data.shards import ManifestError, SplitLocation, read_manifest
from depthpi.dist import world_info

__all__ = ["DECODE_ERRORS", "Delivery", "ShardDataset", "ShardLoader", "collate", "make_loader", "skip_summary"]
log = logging.getLogger(__name__)


class Delivery(NamedTuple):
    """What a worker hands the main process: a batch (None at the end), its read report, and
    at the end of a training pass the worker's loose samples (uncollated) for the rank's pool;
    ``fatal``: the one line of a server outage that ends the stream (see :func:`deliver`)."""

    batch: dict | None
    report: dict | None
    loose: list[dict] | None = None
    fatal: str | None = None


def collate(samples: list[dict]) -> dict:
    """Samples → batch: arrays → stacked tensors, numbers/bools → tensors, str → lists, dicts recursively."""
    try:
        return default_collate(samples)
    except (TypeError, RuntimeError) as err:
        keys = [s.get("key") for s in samples]
        raise TypeError(f"cannot collate samples {keys}: {err}; map_fn must return the same fields, "
                        f"shapes and types for every sample") from err


def deliver(samples: Iterator[dict], batch_size: int, log: ReadLog, rest: str) -> Iterator[Delivery]:
    """Full batches, each with the report of what was read for it; then the rest of the
    samples as ``rest`` says (``"batch"``: a partial batch, ``"loose"``: uncollated in the
    last delivery, for the rank's pool) and a last report.

    A server outage ends the stream with a last delivery carrying its one line (raised again
    in the main process): a DataLoader would wrap it in a worker traceback.
    """
    batch = []
    try:
        for sample in samples:
            batch.append(sample)
            if len(batch) == batch_size:
                yield Delivery(collate(batch), log.take())
                batch = []
    except ServerUnreachable as err:
        yield Delivery(None, log.take(), fatal=str(err))
        return
    if batch and rest == "batch":
        yield Delivery(collate(batch), log.take())
        batch = []
    tail, loose = log.take(), batch if rest == "loose" and batch else None
    if tail or loose:
        yield Delivery(None, tail, loose)


def _as_delivered(item):
    return item  # the DataLoader's collate_fn: workers already collated


class ShardDataset(IterableDataset):
    """The per-worker stream of deliveries (see the module docstring).

    Args:
        sources: every shard of the split (manifest order), see :class:`ShardSource`.
        planner: the split's :class:`ShardPlanner` for this world, workers and batch size.
        map_fn: picklable ``(Sample, epoch) -> dict``.
        companion_sets: ``companion_sets[j][i]``: shard i of companion set j (see
            :func:`make_loader`); each pass reads shard i with set
            :func:`~depthpi.data.shard_plan.companion_set` of (seed, epoch, cycle, i).
        rank, seed, shuffle, shuffle_buffer, drop_last, infinite, cache_dir, remote: see :func:`make_loader`.
    """

    def __init__(self, sources: list[ShardSource], planner: ShardPlanner, map_fn: MapFn, *, rank: int, seed: int,
                 shuffle: bool, shuffle_buffer: int, drop_last: bool, infinite: bool, cache_dir: str | None = None,
                 companion_sets: list[list[ShardSource]] | None = None, remote: RemoteConfig | None = None):
        super().__init__()
        self.sources, self.planner, self.map_fn = sources, planner, map_fn
        self.companion_sets = companion_sets or []
        self.batch_size = planner.batch_size
        self.rank, self.seed, self.shuffle, self.shuffle_buffer = rank, seed, shuffle, shuffle_buffer
        self.drop_last, self.infinite, self.cache_dir, self.remote = drop_last, infinite, cache_dir, remote
        self.epoch = multiprocessing.Value("q", 0, lock=False)  # shared with (persistent) workers

    def __iter__(self) -> Iterator[Delivery]:
        configure_remote(self.remote)  # a spawned worker starts with the defaults
        info = get_worker_info()
        worker, epoch = info.id if info else 0, int(self.epoch.value)
        reads = ReadLog(f"rank {self.rank} worker {worker} epoch {epoch}")
        samples = self._cycles if self.infinite else self._epoch
        rest = "batch" if not (self.drop_last or self.infinite) else "loose"
        return iter(wds.DataPipeline(
            partial(samples, worker, epoch, reads),     # passes over this worker's shards (see _pass)
            partial(deliver, batch_size=self.batch_size, log=reads, rest=rest),  # (batch, what reading it cost)
        ))

    def _pass(self, worker: int, epoch: int, reads: ReadLog, shard_ids: tuple[int, ...], cycle: int,
              pass_index: int) -> tuple[wds.DataPipeline, TarSamples]:
        """One read of ``shard_ids``: the path of a sample, top to bottom."""
        tars = TarSamples(self._paired_sources(epoch, cycle), reads, self.cache_dir)
        seed = np.random.SeedSequence([self.seed, epoch, cycle, pass_index, self.rank, worker])
        pipeline = wds.DataPipeline(
            shard_list([source.url for source in self.sources]),  # the split's shards, manifest order
            partial(select_shards, order=shard_ids),              # split by node & worker (the planner's share)
            tars,                                                 # tar → samples, counted against the manifest
            wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer,
                        rng=random.Random(int(seed.generate_state(1)[0]))) if self.shuffle else None,
            partial(decode_samples, log=reads),                   # undecodable samples skipped and counted
            partial(map_samples, map_fn=self.map_fn, epoch=epoch, log=reads),
        )
        return pipeline, tars

    def _paired_sources(self, epoch: int, cycle: int) -> dict[str, ShardSource]:
        """url → source, each with the companion shard of the set it is read with in this pass."""
        sets = self.companion_sets
        if not sets:
            return {source.url: source for source in self.sources}
        return {source.url: replace(source, companion=sets[companion_set(self.seed, epoch, cycle, i, len(sets))][i])
                for i, source in enumerate(self.sources)}

    def _epoch(self, worker: int, epoch: int, reads: ReadLog) -> Iterator[dict]:
        """One epoch: everything once (evaluation), or exactly the plan's samples (training)."""
        plan = self.planner.plan(self.seed, epoch, shuffle=self.shuffle, capped=self.drop_last)
        shard_ids = plan.shards[self.rank][worker]
        if plan.takes is None:
            yield from self._pass(worker, epoch, reads, shard_ids, 0, 0)[0]
            return
        need, done = plan.takes[self.rank][worker], 0
        for pass_index in itertools.count():
            pipeline, tars = self._pass(worker, epoch, reads, shard_ids, 0, pass_index)
            samples, got = iter(pipeline), 0
            while done < need and (sample := next(samples, None)) is not None:
                yield sample
                done, got = done + 1, got + 1
            # the rest undecoded: every shard of the pass is checked against the manifest
            tars.drain([{"url": self.sources[s].url} for s in shard_ids])
            if done == need:
                return
            self._check_progress(got, shard_ids, reads)
            reads.report.refills.append({"epoch": epoch, "rank": self.rank, "worker": worker,
                                         "pass": pass_index + 1, "missing": need - done})
            log.warning("%s: %d samples short after skipping bad or missing ones; rewinding over its shards "
                        "(pass %d)", reads.context, need - done, pass_index + 1)

    def _cycles(self, worker: int, epoch: int, reads: ReadLog) -> Iterator[dict]:
        """Freshly planned full passes, forever (the unlabelled stream)."""
        for cycle in itertools.count():
            plan = self.planner.plan(self.seed, epoch, shuffle=self.shuffle, capped=False, cycle=cycle)
            shard_ids, got = plan.shards[self.rank][worker], 0
            for sample in self._pass(worker, epoch, reads, shard_ids, cycle, 0)[0]:
                yield sample
                got += 1
            self._check_progress(got, shard_ids, reads)

    def _check_progress(self, got: int, shard_ids: tuple[int, ...], reads: ReadLog) -> None:
        if got == 0:
            names = [self.sources[s].info.name for s in shard_ids]
            report = reads.report
            raise RuntimeError(f"{reads.context}: a whole pass over shards {names} gave no usable sample (skips since "
                               f"the last batch: {dict(report.skipped)}, e.g. {report.examples}; shortfalls: "
                               f"{report.shortfalls}); check them with `depthpi shards verify`")


class ShardLoader:
    """Iterable of batches for one rank, with ``len``, ``set_epoch``, read reports and resume state.

    Batches are dicts of tensors (and lists of strings) as produced by :func:`collate`.
    """

    def __init__(self, dataset: ShardDataset, loader: DataLoader, split: str):
        self.dataset, self.loader, self.split = dataset, loader, split
        self.epoch, self._consumed, self._skip = 0, 0, 0
        self._pass = ReadReport()

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
        return ds.planner.eval_batches(plan, ds.rank)

    def __iter__(self) -> Iterator[dict]:
        skip, self._skip, self._consumed = self._skip, 0, 0
        self._pass, pool, size = ReadReport(), [], self.dataset.batch_size
        for delivery in self.loader:
            if delivery.report:
                self._pass.merge(delivery.report)
            if delivery.fatal:
                raise ServerUnreachable(delivery.fatal)
            pool.extend(delivery.loose or ())
            batches = [delivery.batch] if delivery.batch is not None else []
            while len(pool) >= size:  # the workers' loose samples: this rank's last batches
                batches.append(pool[:size])
                del pool[:size]
            for batch in batches:
                self._consumed += 1
                if self._consumed <= skip:  # resuming mid-epoch: re-read and discard
                    continue
                yield collate(batch) if isinstance(batch, list) else batch
        if pool:
            raise RuntimeError(f"{self.split}: {len(pool)} loose samples left over at the end of epoch {self.epoch}, "
                               f"less than a batch; the shard plan must make them whole batches")

    def pass_stats(self) -> dict:
        """What the current (or last) pass over the data read: one epoch, one evaluation (see
        :meth:`depthpi.data.shard_stream.ReadReport.as_dict`)."""
        return self._pass.as_dict()

    def state_dict(self) -> dict:
        """Data position: the epoch and the batches of it handed out so far."""
        ds = self.dataset
        return {"epoch": self.epoch, "batches": self._consumed, "seed": ds.seed,
                "world_size": ds.planner.world_size, "num_workers": ds.planner.num_workers,
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
                        "batches are not the ones consumed before", self.split, changed)
        self.set_epoch(state["epoch"])
        self._skip = int(state["batches"])


def _mirrored(location: SplitLocation, manifest, companion: str | Path) -> list[ShardSource]:
    """The companion split's shards, checked to mirror ``manifest`` shard for shard.

    A source shard found short while precomputing (listed in the companion's
    ``skipped.shortfalls``) is mirrored by the samples that could be read from it.
    """
    theirs_location = SplitLocation.parse(companion)
    theirs = read_manifest(companion)
    short = {record["shard"]: record["read"] for record in theirs.skipped.get("shortfalls", [])}

    def expected(shard):
        if shard.name in short:  # read short: as far as it goes
            return shard.name, short[shard.name], shard.first_key if short[shard.name] else None
        return shard.name, shard.count, shard.first_key, shard.last_key

    def found(shard):
        if shard.name in short:
            return shard.name, shard.count, shard.first_key
        return shard.name, shard.count, shard.first_key, shard.last_key

    ours, mirror = [expected(s) for s in manifest.shards], [found(s) for s in theirs.shards]
    if ours != mirror:
        diff = next((a, b) for a, b in itertools.zip_longest(ours, mirror) if a != b)
        raise ManifestError(f"{theirs_location.url('manifest.json')}: shards do not mirror the source split "
                            f"{location} (first difference, as (name, count, first key, last key): source "
                            f"{diff[0]}, companion {diff[1]})")
    return split_sources(theirs_location, theirs, role="features")


def _world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    here = world_info()
    return here.rank if rank is None else rank, here.size if world_size is None else world_size


def make_loader(split_dir: str | Path, batch_size: int, map_fn: MapFn, *, rank: int | None = None,
                world_size: int | None = None, num_workers: int = 0, seed: int = 0, shuffle: bool = True,
                shuffle_buffer: int = 500, drop_last: bool = True, infinite: bool = False,
                pin_memory: bool = False, companion_dir: str | Path | Sequence[str | Path] | None = None,
                cache_dir: str | Path | None = None, remote: RemoteConfig | None = None) -> ShardLoader:
    """A loader of one rank over a split.

    Args:
        split_dir: the split's directory, or a URL of it (``https://host/shards/train``,
            ``pipe:curl -s https://host/shards/train``, or a brace pattern of its shards,
            see :mod:`depthpi.data.shards`); its ``manifest.json`` is read at once.
        batch_size: samples per batch on this rank.
        map_fn: picklable ``(Sample, epoch) -> dict`` (the pose pipeline); may raise
            :class:`SampleError` to skip a sample.
        rank, world_size: this process's rank; default :func:`depthpi.dist.world_info`.
        num_workers: DataLoader worker processes (0: in this process).
        seed: run seed; the shard plan and shuffles depend on (seed, epoch).
        shuffle: shuffle shards and samples (training); False reads in stored order.
        shuffle_buffer: samples held for shuffling in each worker.
        drop_last: training semantics — equal full batches on every rank. False
            (evaluation): every sample once, partial last batches, uneven ranks allowed.
        infinite: never stop (the unlabelled stream); ``len`` is then nominal.
        pin_memory: as in :class:`torch.utils.data.DataLoader` (workers persist across epochs).
        companion_dir: a split of shards mirroring this one (same names, keys, order),
            e.g. precomputed teacher features, or a list of such splits (sets: each pass
            reads a shard with one of them, see :func:`~depthpi.data.shard_plan.companion_set`,
            so every set is met over as many epochs); their members are merged into each
            sample and reach ``map_fn`` as ``Sample.extras``. Their bytes are counted as
            ``features``, the split's own as ``images``.
        cache_dir: keep a local copy of each remote shard there (admitted with the manifest's
            sha256 and count, hashed again before each use); None fetches remote shards
            every pass (:mod:`depthpi.data.shard_cache`). Local splits ignore it.
        remote: timeouts and retries of remote reads (default: this process's settings,
            :mod:`depthpi.data.remote`).
    Raises:
        ServerUnreachable: while iterating, when a split's server cannot be reached at all.
        ManifestError: the split or its manifest is missing or inconsistent.
        ValueError: bad arguments, or fewer shards than ``world_size * num_workers`` in
            training mode (workers without shards would make ranks unequal).
    """
    rank, world_size = _world(rank, world_size)
    if batch_size < 1 or not 0 <= rank < world_size or num_workers < 0 or seed < 0 or shuffle_buffer < 1:
        raise ValueError(f"make_loader({split_dir}): need batch_size >= 1, 0 <= rank < world_size, num_workers "
                         f">= 0, seed >= 0, shuffle_buffer >= 1; got {batch_size}, {rank}, {world_size}, "
                         f"{num_workers}, {seed}, {shuffle_buffer}")
    location = SplitLocation.parse(split_dir)
    manifest = read_manifest(split_dir)
    _check_readers(location, len(manifest.shards), world_size, num_workers, training=drop_last or infinite)
    if companion_dir is None:
        companion_dirs = []
    else:
        companion_dirs = [companion_dir] if isinstance(companion_dir, (str, Path)) else list(companion_dir)
    companion_sets = [_mirrored(location, manifest, companion) for companion in companion_dirs]
    planner = ShardPlanner(manifest.counts, world_size, num_workers, batch_size)
    if drop_last and not infinite and manifest.total_count:
        used = planner.batches_per_rank * batch_size * world_size
        log.info("%s: an epoch uses %d of its %d samples (%.1f %%): %d batches of %d on each of %d rank(s) × %d "
                 "worker(s)", location, used, manifest.total_count, 100 * used / manifest.total_count,
                 planner.batches_per_rank, batch_size, world_size, max(1, num_workers))
    dataset = ShardDataset(split_sources(location, manifest), planner, map_fn, rank=rank, seed=seed,
                           shuffle=shuffle, shuffle_buffer=shuffle_buffer, drop_last=drop_last, infinite=infinite,
                           cache_dir=None if cache_dir is None else str(cache_dir), companion_sets=companion_sets,
                           remote=remote or remote_settings())
    loader = DataLoader(dataset, batch_size=None, collate_fn=_as_delivered, num_workers=num_workers,
                        pin_memory=pin_memory, persistent_workers=num_workers > 0)
    return ShardLoader(dataset, loader, str(location))


def _check_readers(location: SplitLocation, shards: int, world_size: int, num_workers: int, training: bool) -> None:
    """Every reader of a training split needs a shard of its own (else ranks would be unequal)."""
    slots = world_size * max(1, num_workers)
    if shards >= slots:
        return
    message = (f"{location}: {shards} shards for {world_size} rank(s) x {max(1, num_workers)} worker(s) = "
               f"{slots} readers; rebuild with smaller shards or lower data.num_workers")
    if training:
        raise ValueError(message)
    log.warning("%s (some evaluation workers will idle)", message)
