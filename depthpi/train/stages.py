"""What each training stage computes from a batch on the training device.

The engine knows stages only through this interface (``losses``, ``predict``, ``panels``),
each given the model to run, so one loop serves the baselines (Tables 6.1–6.2), the teacher
(6.3) and the students (6.4–6.9). What differs between stages is the stage's type and its
teacher object, never which fields a batch happens to hold.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from depthpi.data.batches import Batch, Inputs, model_inputs
from depthpi.losses import alpha_at, regression_loss, student_objective
from depthpi.models.posenet import needs_depth, needs_rgb, run_model
from depthpi.train.targets import keypoint_attention


class SupervisedStage:
    """Baseline RGB, baseline depth or RGB-D teacher: regression only (eq. 4.12).

    Args:
        cfg: the run's TrainConfig.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        self.channels_last = cfg.run.channels_last

    @property
    def needs_depth(self) -> bool:
        """Whether batches must carry depth (the pipeline decodes and warps it)."""
        return needs_depth(self.cfg.model)

    def inputs(self, batch: Batch) -> Inputs:
        """The model's inputs, colour-augmented, on the batch's device."""
        on_gpu = batch.rgb.device.type == "cuda"
        return model_inputs(batch, rgb=needs_rgb(self.cfg.model), depth=needs_depth(self.cfg.model),
                            channels_last=self.channels_last and on_gpu)

    def losses(self, model: nn.Module, batch: Batch, epoch: float) -> dict[str, torch.Tensor]:
        """Loss terms of ``model`` (possibly wrapped by DDP / DeepSpeed / compile) on one batch
        (joints (B, J, 3) root-relative mm, valid (B, J)) at ``epoch`` (fractional).

        Returns ``loss`` (scalar, with graph), ``regression`` (detached) and ``pred``
        (B, J, 3) mm, detached; the engine logs every term but ``pred``.
        """
        inputs = self.inputs(batch)
        pred = run_model(model, self.cfg.model, inputs.rgb, inputs.depth).joints
        loss = regression_loss(pred, batch.joints, batch.valid, self.cfg.loss).mean()
        return {"loss": loss, "regression": loss.detach(), "pred": pred.detach()}

    def predict(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """(B, J, 3) mm root-relative predictions of ``model``."""
        inputs = self.inputs(batch)
        return run_model(model, self.cfg.model, inputs.rgb, inputs.depth).joints

    def panels(self, model: nn.Module, batch: Batch) -> dict[str, np.ndarray]:
        """Extra image summaries of this stage (name → HWC uint8); none for supervised stages."""
        return {}


class OnlineTeacher:
    """A frozen teacher run on each batch (§4.2.2): its tap (and, for output distillation,
    its predicted pose), computed without autograd."""

    def __init__(self, model: nn.Module, model_cfg, tap: str, channels_last: bool):
        self.model, self.model_cfg, self.tap, self.channels_last = model, model_cfg, tap, channels_last

    def features(self, batch: Batch, student_inputs: Inputs) -> torch.Tensor:
        """(B, C, h, w) teacher tap; reuses the student's colour-augmented RGB."""
        return self.outputs(batch, student_inputs, pose=False)[0]

    def outputs(self, batch: Batch, student_inputs: Inputs, pose: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """((B, C, h, w) tap, (B, J, 3) mm root-relative pose or None): the forward stops at
        the tap unless the pose is asked for."""
        depth = None
        if needs_depth(self.model_cfg):
            depth = model_inputs(batch, rgb=False, depth=True, channels_last=self.channels_last).depth
        with torch.inference_mode():
            out = run_model(self.model, self.model_cfg, student_inputs.rgb, depth, (self.tap,), head=pose)
        # An inference tensor cannot be saved for backward (bce keeps its target): one copy
        # of each output, outside inference mode, makes it an ordinary constant.
        return out.features[self.tap].clone(), out.joints.clone() if pose else None


class StoredTeacher:
    """Teacher features precomputed into shards (``depthpi precompute``), read with each batch."""

    def features(self, batch: Batch, student_inputs: Inputs) -> torch.Tensor:
        """(B, C, h, w) the stored tap of the replayed view of each sample."""
        return self.outputs(batch, student_inputs, pose=False)[0]

    def outputs(self, batch: Batch, student_inputs: Inputs, pose: bool) -> tuple[torch.Tensor, None]:
        if batch.teacher_features is None:
            raise ValueError("teacher.mode=precomputed but the batch holds no stored teacher features")
        if pose:
            raise ValueError("distill.pose_weight > 0 needs the teacher's pose: an online teacher "
                             "(stored features hold no pose)")
        return batch.teacher_features, None


class StudentStage(SupervisedStage):
    """RGB student matching a frozen teacher's tap (§4.2.2), online or from stored features.

    Args:
        teacher: :class:`OnlineTeacher` or :class:`StoredTeacher`.
    """

    def __init__(self, cfg, teacher: OnlineTeacher | StoredTeacher):
        super().__init__(cfg)
        self.teacher = teacher
        self.tap = cfg.distill.tap

    @property
    def needs_depth(self) -> bool:
        return isinstance(self.teacher, OnlineTeacher) and needs_depth(self.teacher.model_cfg)

    def losses(self, model: nn.Module, batch: Batch, epoch: float) -> dict[str, torch.Tensor]:
        """Eq. 4.23: regression on the labelled samples + α(epoch) · distillation of the tap.

        Unlabelled samples (``labeled`` False) add only distillation (and, with
        ``distill.pose_weight``, output distillation). Returns ``loss``, ``regression``,
        ``distillation`` (``pose_distillation``), ``alpha`` and ``pred`` (B, J, 3) mm, detached but ``loss``.
        """
        inputs = self.inputs(batch)
        out = run_model(model, self.cfg.model, inputs.rgb, inputs.depth, (self.tap,))
        student_feat = out.features[self.tap]
        teacher_feat, teacher_pose = self.teacher.outputs(batch, inputs, pose=self.cfg.distill.pose_weight > 0)
        alpha = alpha_at(epoch, self.cfg.distill)
        attention = None
        if self.cfg.distill.attention:
            attention = keypoint_attention(batch.joints2d, batch.valid, batch.rgb.shape[1], student_feat.shape[-1])
        terms = student_objective(out.joints, batch.joints, batch.valid, batch.labeled, student_feat, teacher_feat,
                                  alpha, self.cfg.loss, self.cfg.distill, attention, teacher_pose)
        return {**terms, "alpha": torch.tensor(alpha), "pred": out.joints.detach()}

    def panels(self, model: nn.Module, batch: Batch) -> dict[str, np.ndarray]:
        """Fig. 6.3: Σ_c |F_teacher − F_student| per location for the first samples."""
        from depthpi.train.reporting import feature_difference_panel

        small = batch.head(4)
        inputs = self.inputs(small)
        with torch.no_grad():
            student = run_model(model, self.cfg.model, inputs.rgb, inputs.depth, (self.tap,)).features[self.tap]
            teacher = self.teacher.features(small, inputs)
        return {"train/feature_difference": feature_difference_panel(student, teacher, small.rgb.shape[1])}
