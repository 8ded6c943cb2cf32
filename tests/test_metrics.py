"""Tests of depthpi.metrics: MPJPE / PCK / AUC (eq. 5.7-5.9), accumulation over batches and ranks."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from depthpi.metrics import DEFAULT_THRESHOLDS, HIST_BIN_MM, PoseMetrics

ACTIONS = ["walk", "sit", "wave"]


def _data(n=60, j=4, seed=0):
    """Random predictions with errors spread over 0..~150 mm, some masked joints, groups."""
    rng = np.random.default_rng(seed)
    target = rng.normal(0, 300, (n, j, 3))
    pred = target + rng.normal(0, 40, (n, j, 3))
    valid = rng.random((n, j)) > 0.2
    target[~valid] = np.nan  # masked targets may be garbage
    groups = {
        "action": [ACTIONS[i % 3] for i in range(n)],
        "subject": [int(i % 5) for i in range(n)],
        "camera": [f"c{i % 2}" for i in range(n)],
    }
    return pred, target, valid, groups


def _update_in_chunks(m, pred, target, valid, groups, bounds):
    for a, b in zip(bounds[:-1], bounds[1:]):
        m.update(pred[a:b], target[a:b], valid[a:b], {k: v[a:b] for k, v in groups.items()})


def _assert_results_equal(a, b):
    assert a["count"] == b["count"]
    for k in ("mpjpe", "pck", "auc"):
        assert a[k] == pytest.approx(b[k], rel=1e-12, abs=0)
    assert a["per_joint"].keys() == b["per_joint"].keys()
    for name in a["per_joint"]:
        for k, v in a["per_joint"][name].items():
            assert v == pytest.approx(b["per_joint"][name][k], rel=1e-12)
    assert a["per_group"].keys() == b["per_group"].keys()
    for key in a["per_group"]:
        assert a["per_group"][key].keys() == b["per_group"][key].keys()
        for value, stats in a["per_group"][key].items():
            for k, v in stats.items():
                assert v == pytest.approx(b["per_group"][key][value][k], rel=1e-12)


def test_hand_computed_small_case():
    # One joint per sample along x: errors 10, 30, 60 mm; a fourth, masked joint is ignored.
    target = torch.zeros(3, 2, 3)
    pred = torch.zeros(3, 2, 3)
    pred[:, 0, 0] = torch.tensor([10.0, 30.0, 60.0])
    pred[:, 1, 0] = 1e6
    valid = torch.tensor([[True, False]] * 3)
    m = PoseMetrics(threshold_mm=50.0, num_joints=2, joint_names=["a", "b"])
    m.update(pred, target, valid, {"action": ["x", "y", "x"]})
    r = m.compute()
    assert r["count"] == 3
    assert r["mpjpe"] == pytest.approx(100.0 / 3)
    assert r["pck"] == pytest.approx(2 / 3)
    assert r["auc"] == pytest.approx(np.mean([0.8, 0.4, 0.0]))
    assert r["per_joint"]["a"] == pytest.approx({"mpjpe": 100 / 3, "pck": 2 / 3, "auc": 0.4})
    assert np.isnan(r["per_joint"]["b"]["mpjpe"])
    assert r["per_group"]["action"]["x"] == pytest.approx({"mpjpe": 35.0, "pck": 0.5, "auc": 0.4, "count": 2})
    assert r["per_group"]["action"]["y"] == pytest.approx({"mpjpe": 30.0, "pck": 1.0, "auc": 0.4, "count": 1})
    assert r["per_group"]["subject"] == {}


def test_pck_threshold_is_inclusive_and_euclidean():
    pred = np.array([[[30.0, 40.0, 0.0]]])  # error exactly 50 mm = T
    m = PoseMetrics(threshold_mm=50.0, num_joints=1)
    m.update(pred, np.zeros_like(pred), np.ones((1, 1), bool))
    r = m.compute()
    assert r["mpjpe"] == pytest.approx(50.0)
    assert r["pck"] == 1.0
    assert r["auc"] == pytest.approx(0.0)


def test_per_joint_and_per_group_match_direct_computation():
    pred, target, valid, groups = _data()
    m = PoseMetrics(threshold_mm=50.0, num_joints=4)
    m.update(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(valid), groups)
    r = m.compute()
    err = np.linalg.norm(np.nan_to_num(pred - target), axis=-1)
    for j in range(4):
        e = err[valid[:, j], j]
        assert r["per_joint"][f"joint_{j}"]["mpjpe"] == pytest.approx(e.mean())
        assert r["per_joint"][f"joint_{j}"]["pck"] == pytest.approx((e <= 50).mean())
        assert r["per_joint"][f"joint_{j}"]["auc"] == pytest.approx(np.clip(1 - e / 50, 0, 1).mean())
    sub = np.array(groups["subject"]) == 3
    e = err[valid & sub[:, None]]
    got = r["per_group"]["subject"][3]
    assert got["count"] == e.size
    assert got["mpjpe"] == pytest.approx(e.mean())
    assert got["pck"] == pytest.approx((e <= 50).mean())
    assert r["mpjpe"] == pytest.approx(err[valid].mean())
    assert set(r["per_group"]["action"]) == set(ACTIONS)


@pytest.mark.parametrize("bounds", [[0, 60], [0, 1, 2, 60], [0, 7, 19, 33, 34, 60], list(range(0, 61, 5))])
def test_one_batch_equals_many(bounds):
    pred, target, valid, groups = _data()
    whole = PoseMetrics(num_joints=4)
    whole.update(pred, target, valid, groups)
    split = PoseMetrics(num_joints=4)
    _update_in_chunks(split, pred, target, valid, groups, bounds)
    _assert_results_equal(split.compute(), whole.compute())
    assert torch.equal(split.hist, whole.hist)
    np.testing.assert_array_equal(split.pck_curve([10, 50, 120]), whole.pck_curve([10, 50, 120]))


def test_merge_and_state_dict_roundtrip(tmp_path):
    pred, target, valid, groups = _data()
    whole = PoseMetrics(num_joints=4)
    whole.update(pred, target, valid, groups)
    a, b = PoseMetrics(num_joints=4), PoseMetrics(num_joints=4)
    _update_in_chunks(a, pred, target, valid, groups, [0, 25])
    _update_in_chunks(b, pred, target, valid, groups, [25, 60])
    torch.save(b.state_dict(), tmp_path / "m.pt")
    c = PoseMetrics(num_joints=4)
    c.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    a.merge(c)
    _assert_results_equal(a.compute(), whole.compute())
    with pytest.raises(ValueError, match="threshold_mm"):
        a.merge(PoseMetrics(threshold_mm=150.0, num_joints=4))


def test_pck_curve_monotone_and_matches_pck():
    pred, target, valid, groups = _data(n=200)
    for t in (DEFAULT_THRESHOLDS["ntu"], DEFAULT_THRESHOLDS["h36m"], 37.3):
        m = PoseMetrics(threshold_mm=t, num_joints=4)
        m.update(pred, target, valid, groups)
        r = m.compute()
        curve = m.pck_curve(np.linspace(0, 300, 601))
        assert np.all(np.diff(curve) >= 0)
        assert curve[0] >= 0 and curve[-1] <= 1
        at_t = m.pck_curve([t])[0]
        # Exact at bin edges (50, 150); otherwise off by at most one bin's share.
        bin_share = m.hist.sum(0)[int(np.ceil(t / HIST_BIN_MM)) - 1].item() / r["count"]
        assert abs(at_t - r["pck"]) <= bin_share + 1e-12
        if t in (50.0, 150.0):
            assert at_t == pytest.approx(r["pck"], abs=1e-15)
        j1 = m.pck_curve([t], joint=1)[0]
        j1_share = m.hist[1, int(np.ceil(t / HIST_BIN_MM)) - 1].item() / m.count[1].item()
        assert abs(j1 - r["per_joint"]["joint_1"]["pck"]) <= j1_share + 1e-12


def test_update_rejects_bad_shapes():
    m = PoseMetrics(num_joints=17)
    with pytest.raises(ValueError, match="pred/target"):
        m.update(torch.zeros(2, 16, 3), torch.zeros(2, 16, 3), torch.ones(2, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="groups"):
        m.update(torch.zeros(2, 17, 3), torch.zeros(2, 17, 3), torch.ones(2, 17, dtype=torch.bool),
                 {"action": ["a"]})


# ---------------------------------------------------------------- two real gloo ranks
def _rank_worker(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        pred, target, valid, groups = _data()
        half = len(pred) // world_size
        lo, hi = rank * half, (rank + 1) * half
        m = PoseMetrics(num_joints=4)
        _update_in_chunks(m, pred, target, valid, groups, [lo, lo + 3, hi])
        m.all_reduce()
        torch.save({"result": m.compute(), "hist": m.hist}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_process(tmp_path):
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    pred, target, valid, groups = _data()
    single = PoseMetrics(num_joints=4)
    single.update(pred, target, valid, groups)
    expected = single.compute()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        _assert_results_equal(got["result"], expected)
        assert torch.equal(got["hist"], single.hist)
