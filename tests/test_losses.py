"""Tests of depthpi.losses: regression (eq. 4.12-4.13), distillation (eq. 4.22-4.27), α schedule."""

import math

import pytest
import torch

from depthpi.losses import (
    DistillationConfig,
    RegressionLossConfig,
    alpha_at,
    distillation_loss,
    regression_loss,
    student_objective,
)

TERMS = ("huber", "l2", "bce")


def _pose(b=4, j=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, j, 3, generator=g) * 200.0


def _feats(b=3, c=4, h=5, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g), torch.randn(b, c, h, w, generator=g)


# ---------------------------------------------------------------- config validation
def test_config_validation_names_field():
    with pytest.raises(ValueError, match=r"config key 'delta': expected > 0, got 0.0"):
        RegressionLossConfig(delta=0.0)
    with pytest.raises(ValueError, match="config key 'unit_mm'"):
        RegressionLossConfig(unit_mm=-1.0)
    with pytest.raises(ValueError, match="config key 'alpha_ramp_epochs'"):
        DistillationConfig(alpha_ramp_epochs=-1)
    assert DistillationConfig(tap="block16.pre_relu").tap == "block16.pre_relu"


# ---------------------------------------------------------------- regression
def test_regression_zero_at_equality():
    p = _pose()
    valid = torch.ones(4, 5, dtype=torch.bool)
    assert torch.equal(regression_loss(p, p.clone(), valid, RegressionLossConfig()), torch.zeros(4))


def test_regression_hand_computed_both_branches():
    cfg = RegressionLossConfig(delta=1.0, unit_mm=100.0)
    target = torch.zeros(1, 2, 3)
    # Joint 0: diffs 50 mm, 0, 0 -> 0.5 units, quadratic: 0.5*0.25 = 0.125.
    # Joint 1: diffs 300 mm, -200 mm, 0 -> 3 and 2 units, linear: 2.5 + 1.5 = 4.0.
    pred = torch.tensor([[[50.0, 0.0, 0.0], [300.0, -200.0, 0.0]]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    loss = regression_loss(pred, target, valid, cfg)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx((0.125 + 4.0) / 6.0)
    # Only joint 0 valid: denominator 3 * 1.
    loss0 = regression_loss(pred, target, torch.tensor([[True, False]]), cfg)
    assert loss0.item() == pytest.approx(0.125 / 3.0)


def test_regression_masked_joint_contributes_nothing():
    cfg = RegressionLossConfig()
    p, t = _pose(seed=1), _pose(seed=2)
    valid = torch.ones(4, 5, dtype=torch.bool)
    valid[:, 2] = False
    valid[1] = False  # a sample with no valid joint at all
    base = regression_loss(p, t, valid, cfg)
    p2 = p.clone()
    p2[:, 2] += 1e4
    t2 = t.clone()
    t2[:, 2] = float("nan")
    torch.testing.assert_close(regression_loss(p2, t2, valid, cfg), base)
    assert base[1].item() == 0.0
    assert torch.all(base[[0, 2, 3]] > 0)


# ---------------------------------------------------------------- distillation
@pytest.mark.parametrize("sigmoid", [True, False])
@pytest.mark.parametrize("term", ["huber", "l2"])
def test_distillation_zero_at_equality(term, sigmoid):
    s, _ = _feats()
    cfg = DistillationConfig(term=term, sigmoid=sigmoid)
    assert torch.equal(distillation_loss(s, s.clone(), cfg), torch.zeros(3))


def test_bce_gradient_zero_at_equality_and_positive_value():
    s, _ = _feats()
    s = s.requires_grad_()
    loss = distillation_loss(s, s.detach().clone(), DistillationConfig(term="bce"))
    loss.sum().backward()
    assert torch.all(loss > 0)  # the entropy of sigmoid(teacher)
    torch.testing.assert_close(s.grad, torch.zeros_like(s), atol=1e-7, rtol=0)


def test_distillation_hand_computed():
    s = torch.tensor([0.0, 0.0, 3.0, 0.0]).view(1, 1, 2, 2)
    t = torch.tensor([0.0, 0.5, 0.0, -2.0]).view(1, 1, 2, 2)
    # No sigmoid: diffs 0, -0.5, 3, 2 -> huber 0, 0.125, 2.5, 1.5 ; l2 0, 0.25, 9, 4; mean over 4.
    huber = distillation_loss(s, t, DistillationConfig(term="huber", sigmoid=False))
    l2 = distillation_loss(s, t, DistillationConfig(term="l2", sigmoid=False))
    assert huber.item() == pytest.approx((0.125 + 2.5 + 1.5) / 4)
    assert l2.item() == pytest.approx((0.25 + 9 + 4) / 4)
    # With sigmoid on both maps.
    ds = torch.sigmoid(s) - torch.sigmoid(t)
    sig_l2 = distillation_loss(s, t, DistillationConfig(term="l2", sigmoid=True))
    assert sig_l2.item() == pytest.approx(ds.square().mean().item())
    # BCE with logits against sigmoid(teacher), eq. 4.25, mean over elements.
    p, q = torch.sigmoid(s), torch.sigmoid(t)
    bce_ref = (-(q * torch.log(p) + (1 - q) * torch.log(1 - p))).mean()
    bce = distillation_loss(s, t, DistillationConfig(term="bce"))
    assert bce.item() == pytest.approx(bce_ref.item(), rel=1e-5)


def test_teacher_gets_no_gradient():
    s, t = _feats()
    s.requires_grad_()
    t.requires_grad_()
    for term in TERMS:
        distillation_loss(s, t, DistillationConfig(term=term)).sum().backward()
        assert t.grad is None
        assert s.grad is not None and s.grad.abs().sum() > 0
        s.grad = None


@pytest.mark.parametrize("term", TERMS)
def test_attention_ones_equals_none_and_zeros_gives_zero(term):
    s, t = _feats()
    cfg = DistillationConfig(term=term, attention=True)
    plain = distillation_loss(s, t, DistillationConfig(term=term))
    ones = distillation_loss(s, t, cfg, attention=torch.ones(3, 5, 5))
    zeros = distillation_loss(s, t, cfg, attention=torch.zeros(3, 5, 5))
    torch.testing.assert_close(ones, plain)
    assert torch.equal(zeros, torch.zeros(3))
    # A half-weighted map lies strictly between.
    half = distillation_loss(s, t, cfg, attention=torch.full((3, 5, 5), 0.5))
    assert torch.all((half > 0) & (half < plain))


def test_attention_required_when_configured():
    s, t = _feats()
    with pytest.raises(ValueError, match="attention"):
        distillation_loss(s, t, DistillationConfig(attention=True))


@pytest.mark.parametrize("term", TERMS)
def test_bf16_autocast_gives_finite_float32(term):
    s, t = _feats()
    pred, target = _pose(b=3), _pose(b=3, seed=3)
    valid = torch.ones(3, 5, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s16 = torch.nn.functional.conv2d(s, torch.eye(4).view(4, 4, 1, 1))
        assert s16.dtype == torch.bfloat16
        d = distillation_loss(s16, t.bfloat16(), DistillationConfig(term=term))
        r = regression_loss(pred.bfloat16(), target.bfloat16(), valid, RegressionLossConfig())
    for x in (d, r):
        assert x.dtype == torch.float32 and torch.all(torch.isfinite(x))
    ref = distillation_loss(s16.float(), t.bfloat16().float(), DistillationConfig(term=term))
    torch.testing.assert_close(d, ref)


# ---------------------------------------------------------------- alpha and objective
def test_alpha_schedule():
    cfg = DistillationConfig(alpha_warmup=0.1, alpha_target=0.2, alpha_ramp_epochs=10)
    assert alpha_at(0.0, cfg) == pytest.approx(0.1)
    assert alpha_at(5.0, cfg) == pytest.approx(0.15)
    assert alpha_at(10.0, cfg) == pytest.approx(0.2)
    assert alpha_at(20.0, cfg) == pytest.approx(0.2)
    assert alpha_at(2.5, cfg) == pytest.approx(0.125)
    assert alpha_at(3.0, DistillationConfig(alpha_ramp_epochs=0, alpha_target=0.5)) == 0.5


def test_student_objective_unlabelled_nan_targets():
    reg_cfg, dist_cfg = RegressionLossConfig(), DistillationConfig()
    pred = _pose(b=4).requires_grad_()
    target = _pose(b=4, seed=5)
    target[2:] = float("nan")  # unlabelled rows
    valid = torch.ones(4, 5, dtype=torch.bool)  # valid even where unlabelled: labeled must win
    labeled = torch.tensor([True, True, False, False])
    s, t = _feats(b=4)
    alpha = 0.3
    out = student_objective(pred, target, valid, labeled, s, t, alpha, reg_cfg, dist_cfg)
    assert all(torch.isfinite(out[k]) for k in ("loss", "regression", "distillation"))

    reg = regression_loss(pred[:2], target[:2], valid[:2], reg_cfg)
    dist = distillation_loss(s, t, dist_cfg)
    expected = (reg.sum() + alpha * dist.sum()) / 4
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["regression"], reg.mean().detach())
    torch.testing.assert_close(out["distillation"], dist.mean())

    out["loss"].backward()
    assert torch.all(torch.isfinite(pred.grad))
    assert torch.all(pred.grad[2:] == 0)  # unlabelled samples get no regression gradient
    assert torch.all(pred.grad[:2].abs().sum((1, 2)) > 0)


def test_student_objective_all_unlabelled():
    pred, target = _pose(b=2), torch.zeros(2, 5, 3)
    s, t = _feats(b=2)
    out = student_objective(pred, target, torch.ones(2, 5, dtype=torch.bool), torch.zeros(2, dtype=torch.bool),
                            s, t, 0.5, RegressionLossConfig(), DistillationConfig())
    assert out["regression"].item() == 0.0
    dist = distillation_loss(s, t, DistillationConfig())
    assert out["loss"].item() == pytest.approx(0.5 * dist.mean().item())
    assert not math.isnan(out["loss"].item())


def test_output_distillation_pulls_unlabelled_predictions_to_the_teachers_pose_only():
    """β·L_reg(pred, teacher pose) on unlabelled samples; labelled samples keep their own targets."""
    reg_cfg, dist_cfg = RegressionLossConfig(), DistillationConfig(pose_weight=2.0)
    pred = _pose(b=4).requires_grad_()
    target, teacher_pose = _pose(b=4, seed=5), _pose(b=4, seed=7)
    valid, labeled = torch.ones(4, 5, dtype=torch.bool), torch.tensor([True, True, False, False])
    s, t = _feats(b=4)
    out = student_objective(pred, target, valid, labeled, s, t, 0.3, reg_cfg, dist_cfg, teacher_pose=teacher_pose)
    plain = student_objective(pred, target, valid, labeled, s, t, 0.3, reg_cfg, DistillationConfig())
    pose = regression_loss(pred[2:], teacher_pose[2:], valid[2:], reg_cfg)
    torch.testing.assert_close(out["loss"], plain["loss"] + 2.0 * pose.sum() / 4)
    torch.testing.assert_close(out["pose_distillation"], pose.mean().detach())
    out["loss"].backward()
    teacher_grad = pred.grad.clone()
    pred.grad = None
    plain["loss"].backward()
    assert torch.equal(teacher_grad[:2], pred.grad[:2])  # labelled rows: unchanged
    assert not torch.equal(teacher_grad[2:], pred.grad[2:])
    with pytest.raises(ValueError, match="teacher pose"):
        student_objective(pred, target, valid, labeled, s, t, 0.3, reg_cfg, dist_cfg)
    with pytest.raises(ValueError, match="pose_weight"):
        DistillationConfig(pose_weight=-1.0)
