"""Nested dicts as dotted keys."""
from depthpi.dotted import flatten


def test_flatten_gives_every_leaf_its_dotted_key_and_keeps_empty_dicts_and_lists_as_values():
    tree = {"optim": {"lr": 1e-4, "betas": [0.9, 0.999], "schedule": {"steps": [10, 20]}}, "tags": {}, "seed": 0}
    assert flatten(tree) == {"optim.lr": 1e-4, "optim.betas": [0.9, 0.999], "optim.schedule.steps": [10, 20],
                             "tags": {}, "seed": 0}
    assert flatten({}) == {}
