"""Pose metrics: MPJPE, PCK and AUC (thesis eq. 5.7-5.9), accumulable over batches and ranks.

:class:`PoseMetrics` keeps only sufficient statistics (sums and counts per joint, per
group value, and a fine error histogram), so the result does not depend on how the test
set was split into batches or ranks, up to float64 summation order (~1e-12 relative).

Conventions:
    * errors are Euclidean distances between root-relative joints, in mm, with no
      alignment (eq. 5.7);
    * joints whose ``valid`` flag is False are excluded from every statistic: the
      denominators count valid joints, not N·J (the thesis has no masks in eq. 5.7-5.8);
    * PCK@T counts ``e <= T`` (eq. 5.8) and is a fraction in [0, 1];
    * AUC is eq. 5.9 normalised by T to [0, 1] and computed as the exact, grid-free
      integral (1/T)∫₀ᵀ PCK(t) dt = mean(clip(1 - e/T, 0, 1)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["DEFAULT_THRESHOLDS", "PoseMetrics"]

# PCK / AUC thresholds in mm per dataset (§5.2): 50 mm NTU RGB+D / PKU-MMD, 150 mm Human3.6M.
DEFAULT_THRESHOLDS = {"ntu": 50.0, "pku": 50.0, "h36m": 150.0, "synthetic": 50.0}

# Histogram for PCK curves: 0.5 mm bins (a power of two, so e/w is exact and PCK at any
# multiple of 0.5 mm is exact) up to 1000 mm, plus one overflow bin.
HIST_BIN_MM = 0.5
HIST_MAX_MM = 1000.0
_NUM_BINS = int(HIST_MAX_MM / HIST_BIN_MM)

# Per-group statistics, in this order: sum of errors, joint count, count <= T, sum of AUC terms.
_GROUP_FIELDS = ("sum_err", "count", "n_le", "sum_auc")
_JOINT_STATS = ("sum_err", "count", "n_le", "sum_auc", "hist")


def _as_tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    """Convert a torch tensor or array-like to a CPU tensor of ``dtype``."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


class PoseMetrics:
    """Accumulator of MPJPE, PCK@T and AUC@T, overall, per joint and per group value.

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
        self.hist = torch.zeros(j, _NUM_BINS + 1, dtype=torch.int64)
        # {key: {value: [sum_err, count, n_le, sum_auc]}}
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
        diff = torch.where(valid_t.unsqueeze(-1), pred_t - target_t, 0.0)
        err = torch.linalg.vector_norm(diff, dim=-1)  # (B, J)
        m = valid_t.to(torch.float64)
        le = (err <= self.threshold_mm) & valid_t
        auc = (1.0 - err / self.threshold_mm).clamp(0.0, 1.0) * m

        self.sum_err += (err * m).sum(0)
        self.count += valid_t.sum(0)
        self.n_le += le.sum(0)
        self.sum_auc += auc.sum(0)
        self._add_histogram(err, valid_t)
        if groups is not None:
            per_sample = torch.stack([(err * m).sum(1), m.sum(1), le.sum(1).double(), auc.sum(1)], 1)
            self._add_groups(per_sample, groups, b)

    def _add_histogram(self, err: torch.Tensor, valid: torch.Tensor) -> None:
        # Bin k covers (k·w, (k+1)·w] (bin 0 includes 0), so "e <= t" is exact at bin edges.
        idx = (torch.ceil(err / HIST_BIN_MM).long() - 1).clamp(0, _NUM_BINS)
        joint = torch.arange(self.num_joints).expand_as(idx)
        flat = (joint * (_NUM_BINS + 1) + idx)[valid]
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
    def merge(self, other: PoseMetrics) -> None:
        """Add another accumulator's statistics into this one (same T and J)."""
        if other.threshold_mm != self.threshold_mm or other.num_joints != self.num_joints:
            raise ValueError(
                f"PoseMetrics.merge needs equal threshold_mm and num_joints, got "
                f"({self.threshold_mm}, {self.num_joints}) and ({other.threshold_mm}, {other.num_joints})"
            )
        for name in _JOINT_STATS:
            getattr(self, name).add_(getattr(other, name))
        self._merge_groups(other.groups)

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
    def _summary(self, sum_err: float, count: float, n_le: float, sum_auc: float) -> dict[str, float]:
        return {
            "mpjpe": _ratio(sum_err, count),
            "pck": _ratio(n_le, count),
            "auc": _ratio(sum_auc, count),
        }

    def compute(self) -> dict[str, Any]:
        """Metrics of everything accumulated so far.

        Returns:
            ``mpjpe`` (mm), ``pck`` and ``auc`` (fractions in [0, 1]; NaN when no valid
            joint was seen), ``count`` (valid joints), ``threshold_mm``,
            ``per_joint`` ``{name: {mpjpe, pck, auc}}`` and ``per_group``
            ``{key: {value: {mpjpe, pck, auc, count}}}``.
        """
        total = [self.sum_err.sum().item(), self.count.sum().item(),
                 self.n_le.sum().item(), self.sum_auc.sum().item()]
        out: dict[str, Any] = self._summary(*total)
        out["count"] = int(total[1])
        out["threshold_mm"] = self.threshold_mm
        out["per_joint"] = {
            name: self._summary(self.sum_err[j].item(), self.count[j].item(),
                                self.n_le[j].item(), self.sum_auc[j].item())
            for j, name in enumerate(self.joint_names)
        }
        out["per_group"] = {
            key: {value: {**self._summary(*row), "count": int(row[1])} for value, row in table.items()}
            for key, table in self.groups.items()
        }
        return out

    def pck_curve(self, thresholds: Sequence[float] | np.ndarray, joint: int | None = None) -> np.ndarray:
        """PCK at each threshold, from the error histogram, for a PCK-vs-threshold plot.

        Resolution: exact at multiples of ``HIST_BIN_MM`` (0.5 mm), linearly
        interpolated within a bin otherwise; above ``HIST_MAX_MM`` (1000 mm) errors
        fall in one overflow bin and are counted as incorrect.

        Args:
            thresholds: Thresholds in mm, >= 0.
            joint: Joint index for one joint's curve; all joints when None.

        Returns:
            ``(len(thresholds),)`` float64 fractions in [0, 1] (NaN if nothing seen).
        """
        t = np.asarray(thresholds, dtype=np.float64)
        if np.any(t < 0):
            raise ValueError(f"PoseMetrics.pck_curve thresholds must be >= 0, got min {t.min()}")
        hist = (self.hist.sum(0) if joint is None else self.hist[joint]).double().numpy()
        count = hist.sum()
        # cdf[k] = number of errors <= k·w, for k = 0 .. _NUM_BINS (bin 0 also holds e == 0).
        cdf = np.concatenate([[0.0], np.cumsum(hist[:_NUM_BINS])])
        pos = np.clip(t / HIST_BIN_MM, 0.0, _NUM_BINS)
        correct = np.interp(pos, np.arange(_NUM_BINS + 1), cdf)
        return correct / count if count > 0 else np.full_like(t, np.nan)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Statistics as tensors and plain containers (loadable with ``weights_only=True``)."""
        state: dict[str, Any] = {name: getattr(self, name).clone() for name in _JOINT_STATS}
        state["threshold_mm"] = self.threshold_mm
        state["groups"] = {k: {v: list(row) for v, row in table.items()} for k, table in self.groups.items()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore statistics saved by :meth:`state_dict` (same T and J)."""
        if float(state["threshold_mm"]) != self.threshold_mm or state["count"].shape != self.count.shape:
            raise ValueError(
                f"PoseMetrics.load_state_dict: state has threshold_mm={state['threshold_mm']} and "
                f"{state['count'].shape[0]} joints, this accumulator {self.threshold_mm} and {self.num_joints}"
            )
        for name in _JOINT_STATS:
            setattr(self, name, state[name].clone())
        self.groups = {k: {} for k in self.group_keys}
        self._merge_groups(state["groups"])
        self._reduced = False
