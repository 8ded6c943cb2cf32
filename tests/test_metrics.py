"""Tests of depthpi.metrics: MPJPE, PA-MPJPE, N-MPJPE, PCK, AUC (eq. 5.7-5.9), accumulation over batches and ranks."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from depthpi.metrics import (
    DEFAULT_THRESHOLDS,
    HIST_BIN_MM,
    PoseMetrics,
    procrustes_align,
    scale_align,
)

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
    for k in ("mpjpe", "pa_mpjpe", "n_mpjpe", "pck", "auc"):
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
    # One valid joint per pose: both alignments put it onto its ground truth.
    assert r["pa_mpjpe"] == 0.0 and r["n_mpjpe"] == 0.0
    assert r["per_joint"]["a"] == pytest.approx({"mpjpe": 100 / 3, "pa_mpjpe": 0, "n_mpjpe": 0, "pck": 2 / 3,
                                                 "auc": 0.4})
    assert np.isnan(r["per_joint"]["b"]["mpjpe"]) and np.isnan(r["per_joint"]["b"]["pa_mpjpe"])
    assert r["per_group"]["action"]["x"] == pytest.approx({"mpjpe": 35.0, "pa_mpjpe": 0, "n_mpjpe": 0, "pck": 0.5,
                                                           "auc": 0.4, "count": 2})
    assert r["per_group"]["action"]["y"] == pytest.approx({"mpjpe": 30.0, "pa_mpjpe": 0, "n_mpjpe": 0, "pck": 1.0,
                                                           "auc": 0.4, "count": 1})
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
        bin_share = m.hist.sum(0)[int(np.ceil(t / HIST_BIN_MM))].item() / r["count"]
        assert abs(at_t - r["pck"]) <= bin_share + 1e-12
        if t in (50.0, 150.0):
            assert at_t == pytest.approx(r["pck"], abs=1e-15)
        j1 = m.pck_curve([t], exclude=[0, 2, 3])[0]
        j1_share = m.hist[1, int(np.ceil(t / HIST_BIN_MM))].item() / m.count[1].item()
        assert abs(j1 - r["per_joint"]["joint_1"]["pck"]) <= j1_share + 1e-12


def test_update_rejects_bad_shapes():
    m = PoseMetrics(num_joints=17)
    with pytest.raises(ValueError, match="pred/target"):
        m.update(torch.zeros(2, 16, 3), torch.zeros(2, 16, 3), torch.ones(2, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="groups"):
        m.update(torch.zeros(2, 17, 3), torch.zeros(2, 17, 3), torch.ones(2, 17, dtype=torch.bool),
                 {"action": ["a"]})


def test_pck_curve_counts_zero_errors_at_threshold_zero_and_is_inclusive_at_an_error():
    # Errors 0 (the root), 12.5 and 30 mm, all on the histogram grid, plus 7.3 mm between two bin edges.
    pred = np.zeros((1, 4, 3))
    pred[0, 1:, 0] = [12.5, 30.0, 7.3]
    m = PoseMetrics(threshold_mm=50.0, num_joints=4)
    m.update(pred, np.zeros_like(pred), np.ones((1, 4), bool))
    np.testing.assert_array_equal(m.pck_curve([0.0, 12.5, 30.0, 1000.0]), [0.25, 0.75, 1.0, 1.0])
    np.testing.assert_array_equal(m.pck_curve([0.0, 12.5], exclude=[0, 2, 3]), [0.0, 1.0])
    np.testing.assert_array_equal(m.pck_curve([0.0], exclude=[1, 2, 3]), [1.0])
    # Between edges the curve is interpolated, within the exact values at the edges around it.
    assert 0.25 <= m.pck_curve([7.3])[0] <= 0.5
    assert m.pck_curve([7.0])[0] == 0.25 and m.pck_curve([7.5])[0] == 0.5


def test_the_root_joint_can_be_left_out_of_the_curve_and_the_figures():
    """Root-relative joints: the root's error is 0, so PCK(0) = 1/J over all joints and 0 without it."""
    rng = np.random.default_rng(3)
    target = rng.normal(0, 300, (8, 17, 3))
    pred = target + rng.normal(0, 40, (8, 17, 3))
    target[:, 0], pred[:, 0] = 0.0, 0.0
    valid = np.ones((8, 17), bool)
    m = PoseMetrics(threshold_mm=50.0)
    m.update(pred, target, valid)
    assert m.pck_curve([0.0])[0] == pytest.approx(1 / 17)
    assert m.pck_curve([0.0], exclude=[0])[0] == 0.0
    errors = np.linalg.norm(pred - target, axis=-1)[:, 1:]
    without = m.compute_without([0])
    assert without["mpjpe"] == pytest.approx(errors.mean()) and without["count"] == 8 * 16
    assert without["pck"] == pytest.approx((errors <= 50).mean())
    assert m.pck_curve([50.0], exclude=[0])[0] == pytest.approx(without["pck"])


def test_pck_curve_equals_direct_count_at_every_half_millimetre():
    pred, target, valid, groups = _data(n=200)
    pred = np.where(np.arange(4)[None, :, None] == 0, np.nan_to_num(target), pred)  # joint 0 exact: e = 0
    m = PoseMetrics(num_joints=4)
    m.update(pred, target, valid, groups)
    err = np.linalg.norm(np.nan_to_num(pred - target), axis=-1)[valid]
    thresholds = np.arange(0, 1200.5, HIST_BIN_MM)
    direct = (err[None, :] <= thresholds[:, None]).mean(1)
    np.testing.assert_allclose(m.pck_curve(thresholds), direct, rtol=0, atol=1e-15)
    assert direct[0] > 0


# ---------------------------------------------------------------- PA-MPJPE and N-MPJPE
def _rotation(rng):
    """A random proper rotation (3, 3)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _horn_aligned(pred, target):
    """``pred`` (J, 3) similarity-aligned to ``target`` by Horn's quaternion method: an
    algorithm independent of the SVD one under test, proper rotations by construction."""
    mu_p, mu_t = pred.mean(0), target.mean(0)
    x, y = pred - mu_p, target - mu_t
    s = x.T @ y
    n = np.array([
        [s[0, 0] + s[1, 1] + s[2, 2], s[1, 2] - s[2, 1], s[2, 0] - s[0, 2], s[0, 1] - s[1, 0]],
        [s[1, 2] - s[2, 1], s[0, 0] - s[1, 1] - s[2, 2], s[0, 1] + s[1, 0], s[2, 0] + s[0, 2]],
        [s[2, 0] - s[0, 2], s[0, 1] + s[1, 0], -s[0, 0] + s[1, 1] - s[2, 2], s[1, 2] + s[2, 1]],
        [s[0, 1] - s[1, 0], s[2, 0] + s[0, 2], s[1, 2] + s[2, 1], -s[0, 0] - s[1, 1] + s[2, 2]],
    ])
    eigenvalues, eigenvectors = np.linalg.eigh(n)
    w, a, b, c = eigenvectors[:, -1]
    rotation = np.array([
        [w * w + a * a - b * b - c * c, 2 * (a * b - w * c), 2 * (a * c + w * b)],
        [2 * (a * b + w * c), w * w - a * a + b * b - c * c, 2 * (b * c - w * a)],
        [2 * (a * c - w * b), 2 * (b * c + w * a), w * w - a * a - b * b + c * c],
    ])
    scale = eigenvalues[-1] / (x * x).sum()
    return scale * x @ rotation.T + mu_t


def _poses(n=40, j=17, seed=1):
    """Root-relative ground truth and noisy, rotated, rescaled, sometimes mirrored predictions."""
    rng = np.random.default_rng(seed)
    target = rng.normal(0, 300, (n, j, 3))
    target -= target[:, :1]
    pred = np.stack([1.1 * t @ _rotation(rng).T for t in target]) + rng.normal(0, 30, (n, j, 3))
    pred[: n // 4, :, 0] *= -1  # mirrored: the best orthogonal fit would be a reflection
    pred -= pred[:, :1]
    return pred, target


def test_pa_mpjpe_matches_an_independent_horn_alignment_with_masks_and_reflections():
    pred, target = _poses()
    valid = np.random.default_rng(2).random(target.shape[:2]) > 0.25
    valid[:, :3] = True
    target_nan = np.where(valid[..., None], target, np.nan)
    m = PoseMetrics(num_joints=17, group_keys=("subject",))
    m.update(pred, target_nan, valid, {"subject": [i % 2 for i in range(len(pred))]})
    r = m.compute()
    # Reference: each pose reduced to its valid joints, aligned by Horn's method.
    err = np.zeros(valid.shape)
    for i in range(len(pred)):
        v = valid[i]
        err[i, v] = np.linalg.norm(_horn_aligned(pred[i, v], target[i, v]) - target[i, v], axis=-1)
    assert r["pa_mpjpe"] == pytest.approx(err[valid].mean(), rel=1e-10)
    for j in range(17):
        assert r["per_joint"][f"joint_{j}"]["pa_mpjpe"] == pytest.approx(err[valid[:, j], j].mean(), rel=1e-10)
    odd = (np.arange(len(pred)) % 2 == 1)[:, None] & valid
    assert r["per_group"]["subject"][1]["pa_mpjpe"] == pytest.approx(err[odd].mean(), rel=1e-10)
    # Mirrored poses cannot be undone by a rotation: their error stays large.
    assert err[:10][valid[:10]].mean() > 5 * err[10:][valid[10:]].mean()


def test_procrustes_alignment_is_proper_least_squares_and_undoes_a_similarity():
    pred, target = _poses(n=12, seed=3)
    valid = torch.ones(target.shape[:2], dtype=torch.bool)
    aligned = procrustes_align(torch.from_numpy(pred), torch.from_numpy(target), valid).numpy()
    for i in range(len(pred)):  # the map pred -> aligned is s·R with det(R) = +1
        x, y = pred[i] - pred[i].mean(0), aligned[i] - aligned[i].mean(0)
        sr = np.linalg.lstsq(x, y, rcond=None)[0].T
        assert np.linalg.det(sr) > 0
        np.testing.assert_allclose(sr @ sr.T, np.eye(3) * (sr @ sr.T)[0, 0], atol=1e-8 * np.abs(sr).max() ** 2)
    rng = np.random.default_rng(4)
    moved = np.stack([0.7 * t @ _rotation(rng).T + rng.normal(0, 500, 3) for t in target])
    back = procrustes_align(torch.from_numpy(moved), torch.from_numpy(target), valid).numpy()
    np.testing.assert_allclose(back, target, atol=1e-8)


def test_alignments_leave_masked_joints_out_entirely():
    pred, target = _poses(n=8, seed=5)
    valid = np.ones(target.shape[:2], bool)
    valid[:, 5] = False
    results = []
    for garbage in (0.0, 1e6):
        p, t = pred.copy(), target.copy()
        p[:, 5], t[:, 5] = garbage, np.nan
        m = PoseMetrics(num_joints=17)
        m.update(p, t, valid)
        results.append(m.compute())
    dropped = PoseMetrics(num_joints=16)
    keep = [j for j in range(17) if j != 5]
    dropped.update(pred[:, keep], target[:, keep], valid[:, keep])
    expected = dropped.compute()
    for r in results:
        for k in ("mpjpe", "pa_mpjpe", "n_mpjpe"):
            assert r[k] == pytest.approx(expected[k], rel=1e-12)


def test_n_mpjpe_is_the_least_squares_scale_about_the_root():
    pred, target = _poses(n=10, seed=6)
    valid = np.ones(target.shape[:2], bool)
    m = PoseMetrics(num_joints=17)
    m.update(pred, target, valid)
    r = m.compute()
    scale = (pred * target).sum((1, 2)) / (pred * pred).sum((1, 2))
    expected = np.linalg.norm(scale[:, None, None] * pred - target, axis=-1).mean()
    assert r["n_mpjpe"] == pytest.approx(expected, rel=1e-12)
    # The scale is optimal: any other factor gives a larger summed squared error.
    aligned = scale_align(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(valid)).numpy()
    best = ((aligned - target) ** 2).sum()
    for factor in (0.99, 1.01):
        assert ((factor * aligned - target) ** 2).sum() > best
    # Rescaling the prediction changes MPJPE, not N-MPJPE or PA-MPJPE.
    m2 = PoseMetrics(num_joints=17)
    m2.update(3.0 * pred, target, valid)
    r2 = m2.compute()
    assert r2["mpjpe"] > 2 * r["mpjpe"]
    assert r2["n_mpjpe"] == pytest.approx(r["n_mpjpe"], rel=1e-12)
    assert r2["pa_mpjpe"] == pytest.approx(r["pa_mpjpe"], rel=1e-12)


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
