"""Pose metrics: MPJPE, PA-MPJPE, N-MPJPE, PCK and AUC, accumulable over batches and ranks.

:class:`PoseMetrics` keeps only sufficient statistics (sums and counts per joint, per group
value, and a fine error histogram), so the result does not depend on how the test set was
split into batches or ranks. Errors are Euclidean distances between root-relative joints
in mm; invalid joints take no part in any statistic or alignment. ``mpjpe`` is thesis
eq. 5.7 (no alignment), ``pa_mpjpe`` a proper similarity (Procrustes) alignment,
``n_mpjpe`` a least-squares scale, ``pck`` eq. 5.8 (e ≤ T), ``auc`` eq. 5.9 normalised to
[0, 1] and computed as the exact integral mean(clip(1 − e/T, 0, 1)).

docs/metrics.md defines each figure exactly and compares our AUC with MMPose's grid one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["DEFAULT_THRESHOLDS", "PoseMetrics", "procrustes_align", "scale_align"]

# PCK / AUC thresholds in mm per dataset (§5.2): 50 mm NTU RGB+D / PKU-MMD, 150 mm Human3.6M.
DEFAULT_THRESHOLDS = {"ntu": 50.0, "pku": 50.0, "h36m": 150.0, "synthetic": 50.0}

# Histogram for PCK curves: one bin for errors of exactly 0 (the root joint of root-relative
# poses), then 0.5 mm bins (k·w, (k+1)·w] (w a power of two, so e/w is exact and PCK at any
# multiple of 0.5 mm is exact) up to 1000 mm, then one overflow bin.
HIST_BIN_MM = 0.5
HIST_MAX_MM = 1000.0
_NUM_BINS = int(HIST_MAX_MM / HIST_BIN_MM)
_HIST_LEN = _NUM_BINS + 2

# Per-group statistics, in this order: sum of errors, joint count, count <= T, sum of AUC
# terms, sum of Procrustes-aligned errors, sum of scale-aligned errors.
_GROUP_FIELDS = ("sum_err", "count", "n_le", "sum_auc", "sum_err_pa", "sum_err_n")
_JOINT_STATS = (*_GROUP_FIELDS, "hist")


def _as_tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    """Convert a torch tensor or array-like to a CPU tensor of ``dtype``."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def _distances(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-joint Euclidean distances ``(B, J)`` of ``(B, J, 3)`` joints, 0 where not ``valid``."""
    diff = torch.where(valid.unsqueeze(-1), pred - target, 0.0)
    return torch.linalg.vector_norm(diff, dim=-1)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean ``(B, 1, 3)`` of ``x`` (B, J, 3), zero where ``mask`` (B, J, 1) is False, over the
    masked joints; zeros for a pose without any."""
    return x.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1).to(x.dtype)


def procrustes_align(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``pred`` moved by the similarity transform that best fits it to ``target`` (PA-MPJPE).

    Per pose, minimises Σ_valid |s·R·p + t - g|² over a proper rotation R (det +1), a
    scale s and a translation t (Umeyama; MMPose's ``compute_similarity_transform``),
    for the whole batch at once, in float64.

    Args:
        pred: ``(B, J, 3)`` predicted joints, mm.
        target: ``(B, J, 3)`` ground-truth joints, mm, finite where ``valid``.
        valid: ``(B, J)`` bool; only these joints enter the fit.

    Returns:
        ``(B, J, 3)`` float64 aligned prediction (every joint moved, the fit from the valid
        ones). A pose with fewer than two distinct valid predicted joints gets s = 0: it
        collapses onto the valid ground-truth centroid.
    """
    mask = valid.unsqueeze(-1)
    p = pred.to(torch.float64)
    p_valid = torch.where(mask, p, 0.0)
    g = torch.where(mask, target.to(torch.float64), 0.0)
    mu_p, mu_g = _masked_mean(p_valid, mask), _masked_mean(g, mask)
    x, y = torch.where(mask, p - mu_p, 0.0), torch.where(mask, g - mu_g, 0.0)
    cov = x.mT @ y  # (B, 3, 3) = Σ_j x_j y_jᵀ
    u, sigma, vh = torch.linalg.svd(cov)
    # R = V·D·Uᵀ maximises trace(R·cov) over rotations; D flips the last axis when U·Vᵀ reflects.
    d = torch.ones_like(sigma)
    d[:, -1] = torch.sign(torch.linalg.det(u @ vh))
    rotation = vh.mT @ (d.unsqueeze(-1) * u.mT)
    var_x = (x * x).sum((1, 2))
    scale = torch.where(var_x > 0, (d * sigma).sum(-1) / var_x.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
    return scale[:, None, None] * ((p - mu_p) @ rotation.mT) + mu_g


def scale_align(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``pred`` scaled about the origin (the root) by the least-squares factor (N-MPJPE).

    Per pose, s = Σ_valid <p, g> / Σ_valid <p, p> minimises Σ_valid |s·p - g|² (MMPose's
    ``alignment='scale'``). Shapes and units as :func:`procrustes_align`; s = 0 for a
    pose whose valid predicted joints are all at the origin. As there, s may be negative
    (a prediction closer to the truth mirrored through the root), where PA-MPJPE's
    rotation may not reflect.
    """
    mask = valid.unsqueeze(-1)
    p = pred.to(torch.float64)
    g = torch.where(mask, target.to(torch.float64), 0.0)
    pp = torch.where(mask, p * p, 0.0).sum((1, 2))
    pg = torch.where(mask, p * g, 0.0).sum((1, 2))
    scale = torch.where(pp > 0, pg / pp.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
    return scale[:, None, None] * p


class PoseMetrics:
    """Accumulator of MPJPE, PA-MPJPE, N-MPJPE, PCK@T and AUC@T, overall, per joint and per group value.

    Args:
        threshold_mm: T of PCK and AUC, mm; see :data:`DEFAULT_THRESHOLDS`.
        num_joints: J, checked against every batch.
        joint_names: J names for ``per_joint``; defaults to ``joint_0`` ... .
        group_keys: Metadata keys to break results down by (e.g. action, subject, camera).

    Call :meth:`update` per batch, :meth:`all_reduce` once on every rank after the last
    update, then :meth:`compute` (same result on every rank).
    """

    def __init__(
        self,
        threshold_mm: float = 50.0,
        num_joints: int = 17,
        joint_names: Sequence[str] | None = None,
        group_keys: Sequence[str] = ("action", "subject", "camera"),
    ) -> None:
        if not threshold_mm > 0:
            raise ValueError(f"PoseMetrics threshold_mm must be > 0, got {threshold_mm!r}")
        if num_joints < 1:
            raise ValueError(f"PoseMetrics num_joints must be >= 1, got {num_joints!r}")
        if joint_names is not None and len(joint_names) != num_joints:
            raise ValueError(
                f"PoseMetrics joint_names has {len(joint_names)} names, expected num_joints={num_joints}"
            )
        self.threshold_mm = float(threshold_mm)
        self.num_joints = num_joints
        self.joint_names = list(joint_names) if joint_names else [f"joint_{j}" for j in range(num_joints)]
        self.group_keys = tuple(group_keys)
        self.reset()

    def reset(self) -> None:
        """Clear all statistics."""
        j = self.num_joints
        self.sum_err = torch.zeros(j, dtype=torch.float64)
        self.count = torch.zeros(j, dtype=torch.int64)
        self.n_le = torch.zeros(j, dtype=torch.int64)
        self.sum_auc = torch.zeros(j, dtype=torch.float64)
        self.sum_err_pa = torch.zeros(j, dtype=torch.float64)
        self.sum_err_n = torch.zeros(j, dtype=torch.float64)
        self.hist = torch.zeros(j, _HIST_LEN, dtype=torch.int64)
        # {key: {value: [one sum per _GROUP_FIELDS]}}
        self.groups: dict[str, dict[Any, list[float]]] = {k: {} for k in self.group_keys}
        self._reduced = False

    # ------------------------------------------------------------------ accumulation
    def update(
        self,
        pred: torch.Tensor | np.ndarray,
        target: torch.Tensor | np.ndarray,
        valid: torch.Tensor | np.ndarray,
        groups: Mapping[str, Sequence[str | int]] | None = None,
    ) -> None:
        """Add one batch.

        Args:
            pred: ``(B, J, 3)`` predicted root-relative joints, mm.
            target: ``(B, J, 3)`` ground-truth root-relative joints, mm (may be NaN
                where ``valid`` is False).
            valid: ``(B, J)`` bool; False joints are excluded.
            groups: Optional ``{key: B values}``; keys of ``group_keys`` present here
                are tracked, other keys are ignored.
        """
        pred_t, target_t = _as_tensor(pred, torch.float64), _as_tensor(target, torch.float64)
        valid_t = _as_tensor(valid, torch.bool)
        b = pred_t.shape[0]
        expected = (b, self.num_joints, 3)
        if pred_t.shape != expected or target_t.shape != expected or valid_t.shape != expected[:2]:
            raise ValueError(
                f"PoseMetrics.update expects pred/target {expected} and valid {expected[:2]}, got "
                f"{tuple(pred_t.shape)}, {tuple(target_t.shape)}, {tuple(valid_t.shape)}"
            )
        err = _distances(pred_t, target_t, valid_t)  # (B, J), 0 where invalid
        m = valid_t.to(torch.float64)
        le = (err <= self.threshold_mm) & valid_t
        auc = (1.0 - err / self.threshold_mm).clamp(0.0, 1.0) * m
        err_pa = _distances(procrustes_align(pred_t, target_t, valid_t), target_t, valid_t)
        err_n = _distances(scale_align(pred_t, target_t, valid_t), target_t, valid_t)

        self.sum_err += err.sum(0)
        self.count += valid_t.sum(0)
        self.n_le += le.sum(0)
        self.sum_auc += auc.sum(0)
        self.sum_err_pa += err_pa.sum(0)
        self.sum_err_n += err_n.sum(0)
        self._add_histogram(err, valid_t)
        if groups is not None:
            per_sample = torch.stack([err.sum(1), m.sum(1), le.sum(1).double(), auc.sum(1),
                                      err_pa.sum(1), err_n.sum(1)], 1)
            self._add_groups(per_sample, groups, b)

    def _add_histogram(self, err: torch.Tensor, valid: torch.Tensor) -> None:
        # Bin 0 holds e == 0, bin k >= 1 covers ((k-1)·w, k·w], so "e <= t" is exact at every
        # multiple of w, 0 included; errors above HIST_MAX_MM land in the last bin.
        idx = torch.ceil(err / HIST_BIN_MM).long().clamp(0, _HIST_LEN - 1)
        joint = torch.arange(self.num_joints).expand_as(idx)
        flat = (joint * _HIST_LEN + idx)[valid]
        self.hist += torch.bincount(flat, minlength=self.hist.numel()).view_as(self.hist)

    def _add_groups(self, per_sample: torch.Tensor, groups: Mapping[str, Sequence[Any]], b: int) -> None:
        rows = per_sample.tolist()
        for key in self.group_keys:
            if key not in groups:
                continue
            values = list(groups[key])
            if len(values) != b:
                raise ValueError(f"PoseMetrics.update groups[{key!r}] has {len(values)} values, expected B={b}")
            table = self.groups[key]
            for value, row in zip(values, rows):
                value = value.item() if isinstance(value, (torch.Tensor, np.generic)) else value
                acc = table.setdefault(value, [0.0] * len(_GROUP_FIELDS))
                for i, x in enumerate(row):
                    acc[i] += x

    # ------------------------------------------------------------------ combination
    def _merge_groups(self, groups: Mapping[str, Mapping[Any, Sequence[float]]]) -> None:
        for key, table in groups.items():
            mine = self.groups.setdefault(key, {})
            for value, row in table.items():
                acc = mine.setdefault(value, [0.0] * len(_GROUP_FIELDS))
                for i, x in enumerate(row):
                    acc[i] += x

    def all_reduce(self) -> None:
        """Sum statistics over all ranks in place; a no-op without torch.distributed.

        Must be called on every rank, once: a second call would double-count, so it raises.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        if self._reduced:
            raise RuntimeError("PoseMetrics.all_reduce was already called; call reset() before reusing")
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        for name in _JOINT_STATS:
            t = getattr(self, name)
            buf = t.to(device) if device is not None else t.clone()
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            setattr(self, name, buf.cpu())
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, self.groups)
        self.groups = {k: {} for k in self.group_keys}
        for groups in gathered:  # rank order, so every rank sums in the same order
            self._merge_groups(groups)
        self._reduced = True

    # ------------------------------------------------------------------ results
    @staticmethod
    def _summary(sum_err: float, count: float, n_le: float, sum_auc: float, sum_err_pa: float,
                 sum_err_n: float) -> dict[str, float]:
        return {
            "mpjpe": _ratio(sum_err, count),
            "pa_mpjpe": _ratio(sum_err_pa, count),
            "n_mpjpe": _ratio(sum_err_n, count),
            "pck": _ratio(n_le, count),
            "auc": _ratio(sum_auc, count),
        }

    def compute(self) -> dict[str, Any]:
        """Metrics of everything accumulated so far.

        Returns:
            ``mpjpe``, ``pa_mpjpe``, ``n_mpjpe`` (mm), ``pck`` and ``auc`` (fractions in
            [0, 1]); each NaN when no valid joint was seen; ``count`` (valid joints),
            ``threshold_mm``, ``per_joint`` ``{name: {mpjpe, pa_mpjpe, n_mpjpe, pck, auc}}``
            and ``per_group`` ``{key: {value: {mpjpe, pa_mpjpe, n_mpjpe, pck, auc, count}}}``.
            A per-joint PA-MPJPE is the mean error of that joint after each pose's alignment
            (fitted to all valid joints of the pose).
        """
        total = [getattr(self, name).sum().item() for name in _GROUP_FIELDS]
        out: dict[str, Any] = self._summary(*total)
        out["count"] = int(total[_GROUP_FIELDS.index("count")])
        out["threshold_mm"] = self.threshold_mm
        out["per_joint"] = {
            name: self._summary(*(getattr(self, field)[j].item() for field in _GROUP_FIELDS))
            for j, name in enumerate(self.joint_names)
        }
        out["per_group"] = {
            key: {value: {**self._summary(*row), "count": int(row[_GROUP_FIELDS.index("count")])}
                  for value, row in table.items()}
            for key, table in self.groups.items()
        }
        return out

    def compute_without(self, joints: Sequence[int]) -> dict[str, float]:
        """``mpjpe`` … ``auc`` and ``count`` over every joint except ``joints`` (e.g. the root,
        whose root-relative error is 0 by construction). Alignments stay fitted to all joints."""
        keep = torch.ones(self.num_joints, dtype=torch.bool)
        keep[list(joints)] = False
        totals = [getattr(self, name)[keep].sum().item() for name in _GROUP_FIELDS]
        return {**self._summary(*totals), "count": int(totals[_GROUP_FIELDS.index("count")])}

    def pck_curve(self, thresholds: Sequence[float] | np.ndarray, exclude: Sequence[int] = ()) -> np.ndarray:
        """PCK at each threshold, from the error histogram, for a PCK-vs-threshold plot.

        PCK(t) counts ``e <= t`` like :meth:`compute`, so PCK(0) is the share of errors of
        exactly 0 (the root joint of root-relative poses). Resolution: exact at 0 and at
        every multiple of ``HIST_BIN_MM`` (0.5 mm); between two multiples the count is
        interpolated linearly, so it lies between the exact values at the two; errors above
        ``HIST_MAX_MM`` (1000 mm) fall in one overflow bin and are counted as incorrect.

        Args:
            thresholds: Thresholds in mm, >= 0.
            exclude: Joints left out of the curve (e.g. the root); all but one: that joint's curve.

        Returns:
            ``(len(thresholds),)`` float64 fractions in [0, 1] (NaN if nothing seen).
        """
        t = np.asarray(thresholds, dtype=np.float64)
        if np.any(t < 0):
            raise ValueError(f"PoseMetrics.pck_curve thresholds must be >= 0, got min {t.min()}")
        keep = torch.ones(self.num_joints, dtype=torch.bool)
        keep[list(exclude)] = False
        hist = self.hist[keep].sum(0).double().numpy()
        count = hist.sum()
        cdf = np.cumsum(hist[:_NUM_BINS + 1])  # cdf[k] = number of errors <= k·w, k = 0 .. _NUM_BINS
        pos = np.clip(t / HIST_BIN_MM, 0.0, _NUM_BINS)
        correct = np.interp(pos, np.arange(_NUM_BINS + 1), cdf)
        return correct / count if count > 0 else np.full_like(t, np.nan)
