"""Which (rank, worker) reads which shards, and how many batches each yields: a pure
function of the manifest's per-shard sample counts and (seed, epoch, world size, workers,
batch size). No torch, no I/O: every worker of every rank computes the same plan.

Equal batches per rank. Shards are dealt to ranks, then to each rank's workers, largest
first to the least-loaded bin (LPT, on a canonical order): a template whose per-rank loads
do not depend on the epoch. Each epoch then (a) permutes shards of equal count among their
template positions, (b) permutes which rank takes which rank bin and which worker which
worker bin, (c) shuffles each worker's read order. Worker w of rank r holds ``T_rw``
samples and may yield at most ``floor(T_rw / B)`` full batches; every rank yields
``L = min_r Σ_w floor(T_rw / B)`` (so ``len()`` is the same on all ranks and in all epochs),
split over its workers largest spare first. The excess samples (``T_rw − quota·B``) are a
worker's reserve for bad samples; they differ every epoch because the assignment and the
read order do.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np


def _lpt(items: list[int], counts: list[int], bins: int) -> list[list[int]]:
    """Deal ``items`` (largest first) to the least-loaded of ``bins``; ties to the lowest bin."""
    heap, out = [(0, b) for b in range(bins)], [[] for _ in range(bins)]
    for item in items:
        load, b = heapq.heappop(heap)
        out[b].append(item)
        heapq.heappush(heap, (load + counts[item], b))
    return out


def _split_quota(totals: list[int], target: int, batch_size: int) -> list[int]:
    """Give ``target`` batches to workers holding ``totals`` samples, largest spare first."""
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
        shards: ``shards[rank][worker]`` shard indices (manifest order) in read order.
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
        if world_size < 1 or num_workers < 0 or batch_size < 1 or min(counts, default=0) < 0:
            raise ValueError(f"ShardPlanner: need world_size >= 1, num_workers >= 0, batch_size >= 1 and counts "
                             f">= 0; got {world_size}, {num_workers}, {batch_size}, min count {min(counts, default=0)}")
        self.counts, self.batch_size = [int(c) for c in counts], batch_size
        self.world_size, self.num_workers = world_size, max(1, num_workers)
        canonical = sorted(range(len(counts)), key=lambda s: (-self.counts[s], s))
        self.template = [_lpt(shards, self.counts, self.num_workers)
                         for shards in _lpt(canonical, self.counts, world_size)]
        totals = [[sum(self.counts[s] for s in shards) for shards in rank] for rank in self.template]
        self.batches_per_rank = min(sum(t // batch_size for t in rank) for rank in totals)
        self.quotas = [_split_quota(rank, self.batches_per_rank, batch_size) for rank in totals]

    def plan(self, seed: int, epoch: int, *, shuffle: bool, capped: bool, cycle: int = 0) -> EpochPlan:
        """The plan of (seed, epoch, cycle); ``capped`` adds the equal-batches quotas.

        ``shuffle=False`` keeps the template's bins and reads each worker's shards in
        manifest order (evaluation).
        """
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
        counts = np.asarray(self.counts, dtype=np.int64)
        relabel = np.arange(len(counts))
        for value in np.unique(counts):
            same = np.flatnonzero(counts == value)
            relabel[same] = rng.permutation(same)
        return relabel

    def samples(self, plan: EpochPlan, rank: int) -> list[int]:
        """Samples per worker of ``rank`` under ``plan``."""
        return [sum(self.counts[s] for s in shards) for shards in plan.shards[rank]]

    def eval_batches(self, plan: EpochPlan, rank: int) -> int:
        """Batches of ``rank`` when every sample is read once and last batches are partial."""
        return sum(-(-n // self.batch_size) for n in self.samples(plan, rank))
