"""The shard planner's guarantees, for any counts, world size, workers and batch size."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from depthpi.data.shard_plan import ShardPlanner, _lpt, companion_set

CASES = settings(max_examples=150, deadline=None, database=None)


@st.composite
def layouts(draw, min_shards: int = 1):
    """(counts, world size, workers, batch size) with at least one shard per reader: small
    ones, and wider ones (up to 16 ranks × 8 workers) with shards of up to 300 samples."""
    if draw(st.booleans()):
        world, workers, most, batch = draw(st.integers(1, 4)), draw(st.integers(0, 3)), 40, draw(st.integers(1, 9))
    else:
        world, workers, most, batch = draw(st.integers(1, 16)), draw(st.integers(0, 8)), 300, draw(st.integers(1, 128))
    readers = world * max(1, workers)
    counts = draw(st.lists(st.integers(0, most), min_size=max(readers, min_shards), max_size=2 * readers + 12))
    return counts, world, workers, batch


def shards_used(plan) -> list[int]:
    return sorted(s for rank in plan.shards for worker in rank for s in worker)


def training_plan(layout, seed: int, epoch: int):
    """(planner, its shuffled, capped plan of one training epoch) for a drawn layout."""
    counts, world, workers, batch = layout
    planner = ShardPlanner(counts, world, workers, batch)
    return planner, planner.plan(seed, epoch, shuffle=True, capped=True)


@CASES
@given(layouts(), st.integers(0, 2**31), st.integers(0, 50))
def test_every_rank_gets_the_same_batches_all_but_less_than_one_of_its_poorest(layout, seed, epoch):
    _, world, workers, batch = layout
    planner, plan = training_plan(layout, seed, epoch)
    assert len(plan.shards) == len(plan.takes) == world
    totals = [planner.samples(plan, rank) for rank in range(world)]
    for rank in range(world):
        assert len(plan.shards[rank]) == max(1, workers)
        assert sum(plan.takes[rank]) == planner.batches_per_rank * batch  # full batches and pooled loose samples
        assert all(0 <= take <= held for take, held in zip(plan.takes[rank], totals[rank], strict=True))
    # as many batches as the poorest rank can fill: one more would overdraw it
    assert planner.batches_per_rank == min(sum(rank) for rank in totals) // batch


@CASES
@given(layouts(), st.integers(0, 2**31), st.integers(0, 50))
def test_each_worker_keeps_an_even_share_of_its_ranks_spare_samples(layout, seed, epoch):
    world = layout[1]
    planner, plan = training_plan(layout, seed, epoch)
    for rank in range(world):
        held = planner.samples(plan, rank)
        spare = [h - t for h, t in zip(held, plan.takes[rank], strict=True)]
        for a in range(len(spare)):  # a worker with less spare than another has nothing more to give
            assert all(spare[a] >= spare[b] - 1 or spare[a] == held[a] for b in range(len(spare)))


@CASES
@given(layouts(), st.integers(0, 2**31), st.integers(0, 50))
def test_an_epoch_reads_no_sample_twice_and_uses_the_planned_samples(layout, seed, epoch):
    # Replays the plan as the workers do: each reads its shards in order and takes its first
    # ``takes`` samples; a sample is (shard, position).
    counts, world, _, batch = layout
    planner, plan = training_plan(layout, seed, epoch)
    used = []
    for rank in range(world):
        for shards, take in zip(plan.shards[rank], plan.takes[rank], strict=True):
            read = [(s, i) for s in shards for i in range(counts[s])]
            used += read[:take]
    assert len(used) == len(set(used)) == world * planner.batches_per_rank * batch


@CASES
@given(layouts(), st.integers(0, 2**31))
def test_swapping_shards_never_leaves_the_poorest_rank_poorer_than_plain_lpt(layout, seed):
    counts, world, workers, batch = layout
    planner = ShardPlanner(counts, world, workers, batch)
    canonical = sorted(range(len(counts)), key=lambda s: (-counts[s], s))
    lpt = min(sum(counts[s] for s in rank) for rank in _lpt(canonical, counts, world))
    assert min(sum(planner.samples(planner.plan(seed, 0, shuffle=True, capped=True), r)) for r in range(world)) >= lpt


@pytest.mark.parametrize("world, workers", [(64, 8), (8, 8), (1, 8)])
def test_an_ntu_sized_split_uses_at_least_98_percent_per_epoch(world, workers):
    # 1,320 shards of 200-260 samples (~304k, NTU RGB+D's thesis split at every 5th frame), batch 96
    counts = np.random.default_rng(0).integers(200, 261, 1320).tolist()
    planner = ShardPlanner(counts, world, workers, 96)
    used = world * planner.batches_per_rank * 96
    assert used >= 0.98 * sum(counts)
    plan = planner.plan(3, 7, shuffle=True, capped=True)
    assert all(sum(takes) == planner.batches_per_rank * 96 for takes in plan.takes)


@CASES
@given(layouts(), st.integers(0, 2**31), st.integers(0, 50), st.booleans(), st.integers(0, 3))
def test_every_shard_is_assigned_exactly_once(layout, seed, epoch, shuffle, cycle):
    counts, world, workers, batch = layout
    plan = ShardPlanner(counts, world, workers, batch).plan(seed, epoch, shuffle=shuffle, capped=False, cycle=cycle)
    assert shards_used(plan) == list(range(len(counts)))
    assert plan.takes is None


@CASES
@given(layouts(), st.integers(0, 2**31), st.integers(0, 50))
def test_the_plan_is_a_function_of_its_inputs(layout, seed, epoch):
    counts, world, workers, batch = layout
    a = ShardPlanner(counts, world, workers, batch).plan(seed, epoch, shuffle=True, capped=True)
    b = ShardPlanner(list(counts), world, workers, batch).plan(seed, epoch, shuffle=True, capped=True)
    assert a == b


@CASES
@given(layouts(min_shards=2), st.integers(0, 2**31))
def test_epochs_read_in_different_orders(layout, seed):
    # With two shards or more there is always something to vary: the read order of a worker
    # holding two, or which reader takes which. 32 epochs alike by chance: p <= 2**-31.
    counts, world, workers, batch = layout
    planner = ShardPlanner(counts, world, workers, batch)
    plans = {planner.plan(seed, epoch, shuffle=True, capped=True).shards for epoch in range(32)}
    assert len(plans) > 1


@CASES
@given(layouts(), st.integers(0, 50))
def test_evaluation_reads_in_stored_order_with_partial_last_batches(layout, epoch):
    counts, world, workers, batch = layout
    planner = ShardPlanner(counts, world, workers, batch)
    plan = planner.plan(0, epoch, shuffle=False, capped=False)
    assert plan == planner.plan(0, epoch + 1, shuffle=False, capped=False)
    for rank in range(world):
        assert all(list(worker) == sorted(worker) for worker in plan.shards[rank])
        assert planner.eval_batches(plan, rank) == sum(-(-n // batch) for n in planner.samples(plan, rank))


@CASES
@given(st.integers(0, 2**31), st.integers(0, 500), st.integers(0, 100), st.integers(1, 8), st.integers(0, 50))
def test_every_shard_meets_every_companion_set_over_as_many_epochs(seed, shard, start, sets, cycle):
    met = [companion_set(seed, epoch, cycle, shard, sets) for epoch in range(start, start + sets)]
    assert sorted(met) == list(range(sets))
