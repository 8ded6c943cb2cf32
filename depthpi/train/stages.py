"""What each training stage computes from a device batch: predictions and loss terms.

The engine knows stages only through this interface (``losses``, ``predict``), so one
loop serves the baselines (Tables 6.1–6.2), the teacher (6.3) and the students (6.4–6.9).
"""
from __future__ import annotations

import torch
from torch import nn

from depthpi.losses import alpha_at, regression_loss, student_objective
from depthpi.models.posenet import run_model, tap_features
from depthpi.train.targets import keypoint_attention


class SupervisedStage:
    """Baseline RGB, baseline depth or RGB-D teacher: regression only (eq. 4.12)."""

    def __init__(self, model: nn.Module, cfg):
        self.model, self.cfg = model, cfg

    @property
    def needs_depth(self) -> bool:
        return self.cfg.model.kind == "teacher" or self.cfg.model.input == "depth"

    def losses(self, batch: dict, epoch: float) -> dict[str, torch.Tensor]:
        """Loss terms of one device batch (``to_device`` output: ``joints`` (B, J, 3)
        root-relative mm, ``valid`` (B, J)).

        Returns ``loss`` (scalar, with graph), ``regression`` (detached) and ``pred``
        (B, J, 3) mm, detached; the engine logs every term but ``pred``.
        """
        pred = run_model(self.model, self.cfg.model, batch).joints
        per_sample = regression_loss(pred, batch["joints"], batch["valid"], self.cfg.loss)
        loss = per_sample.mean()
        return {"loss": loss, "regression": loss.detach(), "pred": pred.detach()}

    def predict(self, batch: dict, taps: tuple[str, ...] = ()):
        """The model's PoseOutput (``joints`` (B, J, 3) mm, ``features`` of ``taps``)."""
        return run_model(self.model, self.cfg.model, batch, taps)


class StudentStage(SupervisedStage):
    """RGB student matching a frozen teacher's tap (§4.2.2), online or from stored features."""

    def __init__(self, model: nn.Module, cfg, teacher: nn.Module | None):
        super().__init__(model, cfg)
        self.teacher = teacher
        self.tap = cfg.distill.tap

    @property
    def needs_depth(self) -> bool:
        return self.teacher is not None and self.cfg.teacher.model.kind == "teacher"

    def teacher_features(self, batch: dict) -> torch.Tensor:
        """(B, C, h, w) teacher tap: stored (precomputed mode) or computed now, without autograd."""
        if "teacher_feat" in batch:
            return batch["teacher_feat"]
        with torch.inference_mode():
            feat = tap_features(self.teacher, self.cfg.teacher.model, batch, self.tap)
        # An inference tensor cannot be saved for backward (bce keeps its target): one copy
        # of the tap, outside inference mode, makes it an ordinary constant.
        return feat.clone()

    @staticmethod
    def attention(batch: dict, out_size: int) -> torch.Tensor:
        """(B, h, w) eq. 4.26 map: the workers' if they built one, else built here from joints2d."""
        if "attention" in batch:
            return batch["attention"]
        return keypoint_attention(batch["joints2d"], batch["valid"], batch["rgb_input"].shape[-1], out_size)

    def losses(self, batch: dict, epoch: float) -> dict[str, torch.Tensor]:
        """Eq. 4.23: regression on the labelled samples + α(epoch) · distillation of the tap.

        Unlabelled samples (``labeled`` False) add only distillation. Returns ``loss``,
        ``regression``, ``distillation``, ``alpha`` and ``pred`` (B, J, 3) mm, detached but ``loss``.
        """
        out = run_model(self.model, self.cfg.model, batch, (self.tap,))
        teacher_feat = self.teacher_features(batch)
        alpha = alpha_at(epoch, self.cfg.distill)
        attention = self.attention(batch, out.features[self.tap].shape[-1]) if self.cfg.distill.attention else None
        terms = student_objective(out.joints, batch["joints"], batch["valid"], batch["labeled"],
                                  out.features[self.tap], teacher_feat, alpha, self.cfg.loss,
                                  self.cfg.distill, attention)
        return {"loss": terms["loss"], "regression": terms["regression"].detach(),
                "distillation": terms["distillation"].detach(),
                "alpha": torch.tensor(alpha), "pred": out.joints.detach()}
