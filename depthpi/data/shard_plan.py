"""Which (rank, worker) reads which shards, how many samples each yields, and which
companion set each shard is read with.

A pure function of the manifest's per-shard sample counts and (seed, epoch, world size,
workers, batch size): no torch, no I/O, so every worker of every rank computes the same
plan. Shards are dealt to ranks by LPT and swaps that raise the poorest rank, then to
workers by LPT; each epoch permutes that template. Every rank yields L = ⌊min_r T_r / B⌋
batches, each worker keeps a reserve for bad samples, and a worker's loose last samples are
pooled by :mod:`depthpi.data.loader`.

docs/shards.md ("The plan") has the details; docs/design.md ("Full epochs") the why.
"""
from __future__ import annotations

import bisect
import heapq
import zlib
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


def _best_swap(rich: list[int], poor: list[int], counts: list[int], gap: int) -> tuple[int, int] | None:
    """(index in ``rich``, index in ``poor``) of the swap moving δ = count(a) − count(b) from the
    rich bin to the poor one with 0 < δ < gap, δ closest to gap / 2; None if there is none."""
    ranked = sorted(range(len(poor)), key=lambda i: (counts[poor[i]], poor[i]))
    values = [counts[poor[i]] for i in ranked]
    best, best_error = None, None
    for i, shard in enumerate(rich):
        target = counts[shard] - gap / 2  # the count of b that halves the gap
        at = bisect.bisect_left(values, target)
        for j in (at - 1, at):
            if 0 <= j < len(values) and 0 < counts[shard] - values[j] < gap:
                error = abs(counts[shard] - values[j] - gap / 2)
                if best_error is None or error < best_error:
                    best, best_error = (i, ranked[j]), error
    return best


def _raise_poorest(bins: list[list[int]], counts: list[int]) -> list[list[int]]:
    """Swap shards between the poorest bin and richer ones (richest first) while a swap raises it.

    Each swap leaves both loads strictly between the two old ones, so the sum of squared
    loads falls and the loop ends; the shards per bin stay as LPT dealt them.
    """
    bins = [list(b) for b in bins]
    loads = [sum(counts[s] for s in b) for b in bins]
    for _ in range(8 * len(counts) + 8):
        poor = min(range(len(bins)), key=lambda b: (loads[b], b))
        for rich in sorted(range(len(bins)), key=lambda b: (-loads[b], b)):
            gap = loads[rich] - loads[poor]
            if gap <= 1:
                return bins
            swap = _best_swap(bins[rich], bins[poor], counts, gap)
            if swap is not None:
                i, j = swap
                delta = counts[bins[rich][i]] - counts[bins[poor][j]]
                bins[rich][i], bins[poor][j] = bins[poor][j], bins[rich][i]
                loads[rich], loads[poor] = loads[rich] - delta, loads[poor] + delta
                break
        else:
            return bins
    return bins


def _spread_spare(totals: list[int], spare: int) -> list[int]:
    """``spare`` samples over workers holding ``totals``: as even as their totals allow."""
    out, left = [0] * len(totals), spare
    order = sorted(range(len(totals)), key=lambda w: (totals[w], w))
    for i, w in enumerate(order):
        out[w] = min(totals[w], left // (len(order) - i))
        left -= out[w]
    assert left == 0, "the spare exceeds what the workers hold"
    return out


def companion_set(seed: int, epoch: int, cycle: int, shard: int, sets: int) -> int:
    """Which of ``sets`` companion sets shard ``shard`` is read with in (epoch, cycle).

    A fixed offset per (seed, shard) plus the epoch: over any ``sets`` consecutive epochs a
    shard meets every set once, and neighbouring shards start from different sets.
    """
    offset = zlib.crc32(f"{seed}:{shard}".encode())
    return (offset + epoch + cycle) % sets


@dataclass(frozen=True)
class EpochPlan:
    """What every (rank, worker) reads in one pass.

    Attributes:
        shards: ``shards[rank][worker]`` shard indices (manifest order) in read order.
        takes: ``takes[rank][worker]`` samples to yield (full batches, then the loose rest
            for the rank's pooled last batches), or None (read everything).
    """

    shards: tuple[tuple[tuple[int, ...], ...], ...]
    takes: tuple[tuple[int, ...], ...] | None


class ShardPlanner:
    """Deterministic shard assignment and per-worker sample counts from the manifest counts.

    Args:
        counts: samples per shard, in manifest order.
        world_size: ranks. num_workers: loader workers per rank (0 counts as 1).
        batch_size: samples per batch.
    """

    def __init__(self, counts: list[int], world_size: int, num_workers: int, batch_size: int):
        # make_loader and the manifest reader refuse a user's values; these are the planner's invariants
        assert world_size >= 1 and num_workers >= 0 and batch_size >= 1 and min(counts, default=0) >= 0, \
            (world_size, num_workers, batch_size, min(counts, default=0))
        self.counts, self.batch_size = [int(c) for c in counts], batch_size
        self.world_size, self.num_workers = world_size, max(1, num_workers)
        canonical = sorted(range(len(counts)), key=lambda s: (-self.counts[s], s))
        ranks = _raise_poorest(_lpt(canonical, self.counts, world_size), self.counts)
        self.template = [_lpt(shards, self.counts, self.num_workers) for shards in ranks]
        totals = [[sum(self.counts[s] for s in shards) for shards in rank] for rank in self.template]
        self.batches_per_rank = min(sum(rank) for rank in totals) // batch_size
        used = self.batches_per_rank * batch_size
        self.takes = [[t - s for t, s in zip(rank, _spread_spare(rank, sum(rank) - used))] for rank in totals]

    def plan(self, seed: int, epoch: int, *, shuffle: bool, capped: bool, cycle: int = 0) -> EpochPlan:
        """The plan of (seed, epoch, cycle); ``capped`` adds the equal-batches sample counts.

        ``shuffle=False`` keeps the template's bins and reads each worker's shards in
        manifest order (evaluation).
        """
        slots = [[list(shards) for shards in rank] for rank in self.template]
        takes = [list(t) for t in self.takes]
        if shuffle:
            rng = np.random.default_rng([seed, epoch, cycle])
            relabel = self._relabel_equal_counts(rng)
            order = rng.permutation(len(slots))
            slots, takes = [slots[i] for i in order], [takes[i] for i in order]
            for r in range(len(slots)):
                order = rng.permutation(len(slots[r]))
                slots[r], takes[r] = [slots[r][i] for i in order], [takes[r][i] for i in order]
                slots[r] = [[int(relabel[s]) for s in rng.permutation(shards)] for shards in slots[r]]
        else:
            slots = [[sorted(shards) for shards in rank] for rank in slots]
        return EpochPlan(tuple(tuple(tuple(s) for s in rank) for rank in slots),
                         tuple(tuple(t) for t in takes) if capped else None)

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
