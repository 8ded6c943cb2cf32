"""Training losses: masked Huber pose regression and teacher-student feature distillation.

Implements thesis eq. 4.12-4.13 (regression), eq. 4.22-4.27 (distillation, with the
optional keypoint attention map) and the student objective of §4.2.2 (eq. 4.23), in
which labelled samples get regression + α·distillation and unlabelled RGB-D pairs
distillation only. One term is ours, not the thesis': output distillation (β times the
regression loss against the teacher's predicted pose on unlabelled pairs), off unless
``pose_weight`` is set; it is the positive control of the low-label study.

Every loss returns one value per sample, shape ``(B,)``, so that the caller decides how
samples are combined; :func:`student_objective` states the combination it uses.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from depthpi.validation import Choice, check

__all__ = [
    "RegressionLossConfig",
    "DistillationConfig",
    "DistillTerm",
    "regression_loss",
    "distillation_loss",
    "alpha_at",
    "student_objective",
]


DistillTerm = Choice("DistillTerm", "huber l2 bce")


@dataclass(frozen=True)
class RegressionLossConfig:
    """Settings of the masked Huber regression loss (eq. 4.12-4.13).

    Attributes:
        delta: Huber threshold, in units of ``unit_mm``; eq. 4.13 uses 1.0.
        unit_mm: Length of one loss unit in millimetres; coordinates are divided by it
            before the Huber term. The default, 100 mm with δ = 1, makes the loss
            quadratic for per-coordinate errors below 10 cm (the range a converged model
            lives in, where a smooth minimum helps) and linear above, so the errors of
            several hundred mm at the start of training (soft-argmax over a 2000 mm
            cube) give bounded gradients. In metres (``unit_mm=1000``) every realistic
            error is below δ and the loss degenerates to a tiny MSE.
    """

    delta: float = 1.0
    unit_mm: float = 100.0

    def __post_init__(self) -> None:
        check(self.delta > 0, "delta", "> 0", self.delta)
        check(self.unit_mm > 0, "unit_mm", "> 0 (millimetres per loss unit)", self.unit_mm)


@dataclass(frozen=True)
class DistillationConfig:
    """Settings of the feature distillation loss (eq. 4.22-4.27) and its weight α.

    Attributes:
        tap: Feature map to match by its module path, ``"layer<i>.<j>.{pre,post}_relu"``,
            or by the thesis' block count, ``"block<N>.{pre,post}_relu"`` (see
            :mod:`depthpi.models.taps`; validated against the architectures by the run
            config); the default is the thesis' best (13th block, after ReLU).
        sigmoid: Apply the logistic sigmoid to both maps before the huber/l2 term
            (eq. 4.22). Ignored by ``bce``, which always uses logits for the student
            and sigmoid(teacher) as target (eq. 4.24-4.25).
        term: ``"huber"`` (pixelwise Huber, δ = 1), ``"l2"`` (squared difference) or
            ``"bce"`` (binary cross entropy).
        attention: Weight the per-pixel difference by the keypoint attention map
            (eq. 4.26-4.27); the map is built in the training step (``depthpi.train.targets``).
        alpha_warmup: α at epoch 0. Default 0.1, the thesis' models 4.3 and 8.1.
        alpha_target: α from ``alpha_ramp_epochs`` on. Default 0.2 (same models).
        alpha_ramp_epochs: Epochs of the linear ramp from warm-up to target (§6.1.4; α rises linearly, §4.2.2).
        pose_weight: β, weight of output distillation (not a thesis term; 0 = off): on
            unlabelled samples, the regression loss of eq. 4.12-4.13 between the student's
            pose and the frozen teacher's predicted pose of the same view. Constant (no ramp);
            needs an online teacher.
    """

    tap: str = "layer3.5.post_relu"
    sigmoid: bool = True
    term: DistillTerm = DistillTerm.huber
    attention: bool = False
    alpha_warmup: float = 0.1
    alpha_target: float = 0.2
    alpha_ramp_epochs: int = 10
    pose_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("alpha_warmup", "alpha_target", "pose_weight"):
            check(getattr(self, name) >= 0, name, ">= 0", getattr(self, name))
        check(self.alpha_ramp_epochs >= 0, "alpha_ramp_epochs", "an integer >= 0", self.alpha_ramp_epochs)


def _float32_region(device: torch.device):
    """Context that turns autocast off so losses are computed in float32."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def regression_loss(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, cfg: RegressionLossConfig
) -> torch.Tensor:
    """Masked Huber loss per sample (eq. 4.12-4.13).

    Args:
        pred: ``(B, J, 3)`` predicted root-relative joints, mm.
        target: ``(B, J, 3)`` ground-truth root-relative joints, mm. Entries of
            masked joints are never read into the result, so they may be NaN.
        valid: ``(B, J)`` bool, the mask m_j.
        cfg: Huber threshold and unit.

    Returns:
        ``(B,)`` float32: Σ_j m_j Σ_xyz huber / (3 Σ_j m_j), in loss units; 0 for a
        sample without any valid joint.
    """
    if pred.shape != target.shape or pred.shape[-1] != 3 or valid.shape != pred.shape[:-1]:
        raise ValueError(
            f"regression_loss expects pred/target (B, J, 3) and valid (B, J), got "
            f"pred {tuple(pred.shape)}, target {tuple(target.shape)}, valid {tuple(valid.shape)}"
        )
    with _float32_region(pred.device):
        mask = valid.bool().unsqueeze(-1).expand_as(pred)
        # where() rather than multiplying by the mask: NaN * 0 is NaN, also in the gradient.
        diff = torch.where(mask, (pred.float() - target.float()) / cfg.unit_mm, 0.0)
        per_coord = F.huber_loss(diff, torch.zeros_like(diff), reduction="none", delta=cfg.delta)
        total = per_coord.sum(dim=(1, 2))
        denom = 3.0 * valid.bool().sum(dim=1).float()
        return total / denom.clamp(min=1.0)


def _pixel_term(diff: torch.Tensor, term: DistillTerm) -> torch.Tensor:
    """Elementwise huber (δ = 1) or squared difference."""
    if term == DistillTerm.huber:
        return F.huber_loss(diff, torch.zeros_like(diff), reduction="none", delta=1.0)
    return diff.square()


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    cfg: DistillationConfig,
    attention: torch.Tensor | None = None,
) -> torch.Tensor:
    """Feature distillation loss per sample (eq. 4.22, 4.24-4.25, 4.27).

    The teacher map is detached (a constant target). The loss is computed in float32
    with autocast disabled, whatever the input dtype.

    Normalisation: every term is *averaged* over the C·h·w elements of a sample (the
    thesis sums in eq. 4.24); the mean keeps the magnitude independent of the tap's
    width and resolution, and α absorbs the constant. With attention, the weighted
    elements are still divided by C·h·w (not by ΣA), so A = 1 equals no attention and
    A = 0 gives 0.

    Args:
        student: ``(B, C, h, w)`` student feature map (raw, pre-sigmoid).
        teacher: ``(B, C, h, w)`` teacher feature map at the same tap.
        cfg: Term and sigmoid settings. ``cfg.attention=True`` requires ``attention``.
        attention: Optional ``(B, h, w)`` map in [0, 1], applied whenever given. For
            huber/l2 it multiplies the difference before the term (eq. 4.27); for bce
            it weights the elementwise cross entropy. Eq. 4.26 defines it for labelled
            samples only; pass ones for unlabelled ones to leave them unweighted.

    Returns:
        ``(B,)`` float32 loss per sample.
    """
    if student.shape != teacher.shape or student.dim() != 4:
        raise ValueError(
            f"distillation_loss expects student and teacher of equal shape (B, C, h, w), got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    b, _, h, w = student.shape
    if cfg.attention and attention is None:
        raise ValueError("DistillationConfig.attention is True but no attention map was passed")
    if attention is not None and attention.shape != (b, h, w):
        raise ValueError(
            f"distillation_loss attention must be (B, h, w) = {(b, h, w)}, got {tuple(attention.shape)}"
        )
    with _float32_region(student.device):
        s, t = student.float(), teacher.detach().float()
        weight = None if attention is None else attention.detach().float().unsqueeze(1)
        if cfg.term == DistillTerm.bce:
            if weight is not None:
                weight = weight.expand_as(s)
            elementwise = F.binary_cross_entropy_with_logits(
                s, torch.sigmoid(t), weight=weight, reduction="none"
            )
        else:
            if cfg.sigmoid:
                s, t = torch.sigmoid(s), torch.sigmoid(t)
            diff = s - t if weight is None else (s - t) * weight
            elementwise = _pixel_term(diff, cfg.term)
        return elementwise.mean(dim=(1, 2, 3))


def alpha_at(epoch: float, cfg: DistillationConfig) -> float:
    """Distillation weight α at a (fractional) epoch.

    Linear from ``alpha_warmup`` at epoch 0 to ``alpha_target`` at
    ``alpha_ramp_epochs``, then held.

    Args:
        epoch: Epochs completed so far, fractional within an epoch (e.g. step / steps_per_epoch).
        cfg: The α schedule.

    Returns:
        α as a Python float.
    """
    if cfg.alpha_ramp_epochs == 0:
        return float(cfg.alpha_target)
    frac = min(max(epoch / cfg.alpha_ramp_epochs, 0.0), 1.0)
    return float(cfg.alpha_warmup + frac * (cfg.alpha_target - cfg.alpha_warmup))


def student_objective(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    labeled: torch.Tensor,
    s_feat: torch.Tensor,
    t_feat: torch.Tensor,
    alpha: float,
    reg_cfg: RegressionLossConfig,
    dist_cfg: DistillationConfig,
    attention: torch.Tensor | None = None,
    teacher_pose: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Student loss over a mixed batch of labelled and unlabelled samples (eq. 4.23, §4.2.2).

    Per-sample total: labelled ``L_reg + α·L_dist``; unlabelled ``α·L_dist`` (no
    regression; their targets are never read, so NaN or zeros there are harmless), plus
    ``β·L_reg(pred, teacher_pose)`` when ``dist_cfg.pose_weight`` β > 0 (output
    distillation, ours). α weights the distillation term of unlabelled samples too: α sets
    the relevance of distillation against regression, and leaving it off the unlabelled
    part would make that balance depend on the batch mix and defeat the warm-up ramp.

    The objective is one mean over the batch of the per-sample totals, so every sample
    weighs the same whether or not it is labelled.

    Args:
        pred: ``(B, J, 3)`` predicted root-relative joints, mm.
        target: ``(B, J, 3)`` ground truth, mm (ignored where ``labeled`` is False).
        valid: ``(B, J)`` bool joint mask.
        labeled: ``(B,)`` bool, True where the sample carries a 3D pose.
        s_feat: ``(B, C, h, w)`` student features at the tap.
        t_feat: ``(B, C, h, w)`` teacher features at the tap (detached here).
        alpha: Distillation weight, e.g. from :func:`alpha_at`.
        reg_cfg: Regression loss settings.
        dist_cfg: Distillation loss settings (``pose_weight``: β).
        attention: Optional ``(B, h, w)`` keypoint attention map in [0, 1].
        teacher_pose: ``(B, J, 3)`` mm, the teacher's root-relative prediction of each
            view; required when β > 0, read on unlabelled samples only.

    Returns:
        ``loss``: scalar objective to backpropagate. ``regression``: mean regression
        loss over the labelled samples (0 if none). ``distillation``: mean unweighted
        distillation loss over all samples. With β > 0, ``pose_distillation``: mean
        unweighted output-distillation loss over the unlabelled samples. All but ``loss``
        are detached, for logging.
    """
    labeled = labeled.bool()
    if labeled.shape != pred.shape[:1]:
        raise ValueError(f"student_objective labeled must be (B,) = {tuple(pred.shape[:1])}, "
                         f"got {tuple(labeled.shape)}")
    reg = regression_loss(pred, target, valid.bool() & labeled.unsqueeze(1), reg_cfg)
    dist = distillation_loss(s_feat, t_feat, dist_cfg, attention)
    total = torch.where(labeled, reg, 0.0) + alpha * dist
    terms = {"regression": (torch.where(labeled, reg, 0.0).sum() / labeled.sum().clamp(min=1)).detach(),
             "distillation": dist.mean().detach()}
    if dist_cfg.pose_weight > 0:
        if teacher_pose is None:
            raise ValueError("DistillationConfig.pose_weight > 0 but no teacher pose was passed")
        unlabeled = ~labeled
        every_joint = torch.ones(pred.shape[:2], dtype=torch.bool, device=pred.device)
        pose = regression_loss(pred, teacher_pose.detach(), every_joint, reg_cfg)
        total = total + dist_cfg.pose_weight * torch.where(unlabeled, pose, 0.0)
        terms["pose_distillation"] = (torch.where(unlabeled, pose, 0.0).sum() / unlabeled.sum().clamp(min=1)).detach()
    return {"loss": total.mean(), **terms}
