"""The shard planner's guarantees, for any counts, world size, workers and batch size."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from depthpi.data.shard_plan import ShardPlanner

CASES = settings(max_examples=150, deadline=None, database=None)


@st.composite
def layouts(draw, min_shards: int = 1):
    """(counts, world size, workers, batch size) with at least one shard per reader."""
    world, workers = draw(st.integers(1, 4)), draw(st.integers(0, 3))
    readers = world * max(1, workers)
    counts = draw(st.lists(st.integers(0, 40), min_size=max(readers, min_shards), max_size=readers + 12))
    return counts, world, workers, draw(st.integers(1, 9))


def shards_used(plan) -> list[int]:
    return sorted(s for rank in plan.shards for worker in rank for s in worker)


@CASES
@given(layouts(), st.integers(0, 2**31), st.integers(0, 50))
def test_every_rank_gets_the_same_batches_within_what_its_workers_hold(layout, seed, epoch):
    counts, world, workers, batch = layout
    planner = ShardPlanner(counts, world, workers, batch)
    plan = planner.plan(seed, epoch, shuffle=True, capped=True)
    assert len(plan.shards) == len(plan.quotas) == world
    for rank in range(world):
        assert len(plan.shards[rank]) == max(1, workers)
        assert sum(plan.quotas[rank]) == planner.batches_per_rank
        for quota, samples in zip(plan.quotas[rank], planner.samples(plan, rank), strict=True):
            assert 0 <= quota * batch <= samples
    # as many batches as the poorest rank can fill: one more would overdraw one of its workers
    totals = [planner.samples(plan, rank) for rank in range(world)]
    assert planner.batches_per_rank == min(sum(n // batch for n in rank) for rank in totals)


@CASES
@given(layouts(), st.integers(0, 2**31), st.integers(0, 50), st.booleans(), st.integers(0, 3))
def test_every_shard_is_assigned_exactly_once(layout, seed, epoch, shuffle, cycle):
    counts, world, workers, batch = layout
    plan = ShardPlanner(counts, world, workers, batch).plan(seed, epoch, shuffle=shuffle, capped=False, cycle=cycle)
    assert shards_used(plan) == list(range(len(counts)))
    assert plan.quotas is None


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
