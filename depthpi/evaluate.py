"""Evaluation: MPJPE / PCK / AUC over a split, per joint and per group, with plots.

:func:`evaluate` is the one evaluation loop: the engine calls it each epoch, ``depthpi
eval`` and the reproduction report through :func:`depthpi.predict.evaluate_checkpoint`.
Every result carries the mean-pose reference (``mean_pose_mpjpe``,
``depthpi.data.reference``) beside the model's figures.

Distributed: every rank runs its own share of the split through the *unwrapped* model (no
DDP forward, so no collective per batch, and ranks may hold different batch counts or
none); the statistics are summed once at the end, a collective every rank reaches.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from depthpi.data.batches import Batch
from depthpi.data.loader import skip_summary
from depthpi.data.shards import read_manifest
from depthpi.dist import collective, gather_objects
from depthpi.io import atomic_path, atomic_write_json, atomic_write_text
from depthpi.metrics import DEFAULT_THRESHOLDS, PoseMetrics
from depthpi.skeleton import H36M_17


@dataclass
class Evaluation:
    """The outcome of one pass over a split.

    Attributes:
        metrics: the model's statistics (summed over ranks).
        skipped: the bad samples the pass skipped, over all ranks (``skip_summary``).
        mean_pose: the same split scored with the training split's mean pose, or None.
    """

    metrics: PoseMetrics
    skipped: dict
    mean_pose: PoseMetrics | None = None

    def summary(self) -> dict:
        """``PoseMetrics.compute()`` plus ``threshold_mm``, ``skipped`` and ``mean_pose_mpjpe``."""
        result = self.metrics.compute()
        result["threshold_mm"] = self.metrics.threshold_mm
        result["skipped"] = self.skipped
        result["mean_pose_mpjpe"] = self.mean_pose.compute()["mpjpe"] if self.mean_pose is not None else None
        return result


@torch.no_grad()
def evaluate(predict: Callable[[Batch], torch.Tensor], loader, device: torch.device, threshold_mm: float, *,
             mean_pose: np.ndarray | None = None, autocast=contextlib.nullcontext) -> Evaluation:
    """Score ``predict(batch) -> (B, J, 3) mm`` over every batch ``loader`` gives this rank.

    Args:
        predict: root-relative predictions, crop camera frame (an eval-mode model's).
        loader: an evaluation loader (every sample once across ranks).
        mean_pose: (J, 3) mm, the training split's mean root-relative pose, scored alongside.
    Unlabelled samples and invalid joints are excluded. A collective at the end: every
    rank calls this, with or without data.
    """
    metrics = _new_metrics(threshold_mm)
    reference = _new_metrics(threshold_mm) if mean_pose is not None else None
    loader.set_epoch(0)
    for raw in loader:
        batch = Batch.from_collated(raw).to(device)
        with autocast():
            pred = predict(batch).float()
        valid = batch.valid & batch.labeled[:, None]
        metrics.update(pred, batch.joints, valid, groups=batch.groups)
        if reference is not None:
            constant = torch.as_tensor(mean_pose, dtype=torch.float32).expand_as(batch.joints)
            reference.update(constant, batch.joints.cpu(), valid.cpu(), groups=batch.groups)
    with collective("evaluation metrics"):
        metrics.all_reduce()
        if reference is not None:
            reference.all_reduce()
    skipped = skip_summary(gather_objects([loader.pass_stats()], "skip reports"))
    return Evaluation(metrics, skipped, reference)


def _new_metrics(threshold_mm: float) -> PoseMetrics:
    return PoseMetrics(threshold_mm=threshold_mm, joint_names=list(H36M_17.joint_names))


def write_report(evaluation: Evaluation, out_dir: str | Path, title: str = "") -> dict:
    """metrics.json, pck_curve.png and per_joint.md/.csv in ``out_dir``; returns the summary.

    The summary's figures count every joint, the root included (thesis eq. 5.7-5.9);
    ``without_root`` holds them over the other joints (the root's root-relative error is 0
    by construction, so it lifts PCK(0) to 1/J).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = evaluation.summary()
    root = H36M_17.root
    result["without_root"] = evaluation.metrics.compute_without([root])
    atomic_write_json(out_dir / "metrics.json", result)
    rows = [(name, v["mpjpe"], v["pa_mpjpe"], v["pck"], v["auc"]) for name, v in result["per_joint"].items()]
    table = [f"| joint | MPJPE (mm) | PA-MPJPE (mm) | PCK@{result['threshold_mm']:g}mm | AUC |", "|---|---|---|---|---|"]
    table += [f"| {n} | {m:.1f} | {pa:.1f} | {p:.3f} | {a:.3f} |" for n, m, pa, p, a in rows]
    table.append(f"| **all** | {result['mpjpe']:.1f} | {result['pa_mpjpe']:.1f} | {result['pck']:.3f} | "
                 f"{result['auc']:.3f} |")
    other = result["without_root"]
    table.append(f"| all but the root | {other['mpjpe']:.1f} | {other['pa_mpjpe']:.1f} | {other['pck']:.3f} | "
                 f"{other['auc']:.3f} |")
    if result["mean_pose_mpjpe"] is not None:
        table.append(f"| *mean training pose (reference)* | {result['mean_pose_mpjpe']:.1f} | | | |")
    table += ["", f"Joints are root-relative, so the root ({H36M_17.joint_names[root]}) has error 0 by construction; "
              "**all** counts it, as the thesis' tables do (PCK is at least 1/17 = 0.059 at 0 mm); *all but the root* "
              "leaves it out."]
    atomic_write_text(out_dir / "per_joint.md", "\n".join(table) + "\n")
    atomic_write_text(out_dir / "per_joint.csv", "joint,mpjpe_mm,pa_mpjpe_mm,pck,auc\n" +
                      "".join(f"{n},{m:.3f},{pa:.3f},{p:.5f},{a:.5f}\n" for n, m, pa, p, a in rows))
    plot_pck_curve(evaluation.metrics, out_dir / "pck_curve.png", title, root=root)
    return result


def plot_pck_curve(metrics: PoseMetrics, path: Path, title: str = "", root: int | None = None) -> None:
    """PCK against the threshold, over every joint (what the tables report) and, given the
    ``root`` index, over every joint but the root."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    limit = 3 * metrics.threshold_mm
    thresholds = np.linspace(0, limit, 301)
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    ax.plot(thresholds, metrics.pck_curve(thresholds), lw=2, label=f"all {metrics.num_joints} joints (tables)")
    if root is not None:
        ax.plot(thresholds, metrics.pck_curve(thresholds, exclude=[root]), lw=1.5, ls="-.",
                label=f"{metrics.num_joints - 1} joints, root left out")
    ax.axvline(metrics.threshold_mm, color="grey", ls="--", lw=1, label=f"T = {metrics.threshold_mm:g} mm")
    ax.set(xlabel="threshold (mm)", ylabel="PCK", xlim=(0, limit), ylim=(0, 1))
    ax.set_title(title or "PCK vs threshold", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def threshold_for(dataset: str) -> float:
    """PCK/AUC threshold T in mm for a data set name (§5.2); 50 mm for names it does not know."""
    return DEFAULT_THRESHOLDS.get(dataset, 50.0)


def threshold_for_split(split_dir: str | Path, fallback_dataset: str) -> float:
    """T in mm for the data set a split was converted from (its manifest's ``params.source``).

    A model trained on NTU and tested on Human3.6M is scored at Human3.6M's 150 mm, not at the
    training set's 50 mm. ``fallback_dataset`` (the config's ``data.dataset``) names the set
    when the manifest does not.
    """
    source = read_manifest(split_dir).params.get("source")
    return threshold_for(source if source in DEFAULT_THRESHOLDS else fallback_dataset)
