"""Evaluation: MPJPE / PCK / AUC over a split, per joint and per group, with plots.

``evaluate_split`` is the one evaluation loop (the engine calls it each epoch);
``depthpi eval`` wraps it for a trained model and writes metrics.json, a PCK-vs-threshold
curve and a per-joint table.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from depthpi.data.batches import to_device
from depthpi.data.shards import read_manifest
from depthpi.io import atomic_path, atomic_write_json, atomic_write_text
from depthpi.metrics import DEFAULT_THRESHOLDS, PoseMetrics
from depthpi.skeleton import H36M_17

GROUP_KEYS = ("action", "subject", "camera")


@torch.no_grad()
def evaluate_split(predict, loader, device: torch.device, threshold_mm: float, *, channels_last: bool = False,
                   autocast=contextlib.nullcontext, reduce: bool = True) -> PoseMetrics:
    """Accumulate metrics of ``predict(batch) -> (B, J, 3) mm`` over every batch of ``loader``.

    Unlabelled samples and invalid joints are excluded. With ``reduce`` the statistics
    are summed across ranks (every rank must call it).
    """
    metrics = PoseMetrics(threshold_mm=threshold_mm, joint_names=list(H36M_17.joint_names))
    loader.set_epoch(0)
    for batch in loader:
        batch = to_device(batch, device, channels_last)
        with autocast():
            pred = predict(batch).float()
        valid = batch["valid"] & batch["labeled"][:, None]
        metrics.update(pred, batch["joints"], valid, groups={k: batch[k] for k in GROUP_KEYS if k in batch})
    if reduce:
        metrics.all_reduce()
    return metrics


def write_report(metrics: PoseMetrics, out_dir: str | Path, title: str = "", skipped: dict | None = None) -> dict:
    """metrics.json, pck_curve.png and per_joint.md/.csv in ``out_dir``; returns the summary.

    ``skipped``: the bad samples the evaluation pass skipped (``depthpi.data.loader.skip_summary``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = metrics.compute()
    result["threshold_mm"] = metrics.threshold_mm
    if skipped is not None:
        result["skipped"] = skipped
    atomic_write_json(out_dir / "metrics.json", result)
    rows = [(name, v["mpjpe"], v["pck"], v["auc"]) for name, v in result["per_joint"].items()]
    table = ["| joint | MPJPE (mm) | PCK | AUC |", "|---|---|---|---|"]
    table += [f"| {n} | {m:.1f} | {p:.3f} | {a:.3f} |" for n, m, p, a in rows]
    table.append(f"| **all** | {result['mpjpe']:.1f} | {result['pck']:.3f} | {result['auc']:.3f} |")
    atomic_write_text(out_dir / "per_joint.md", "\n".join(table) + "\n")
    atomic_write_text(out_dir / "per_joint.csv", "joint,mpjpe_mm,pck,auc\n" +
                  "".join(f"{n},{m:.3f},{p:.5f},{a:.5f}\n" for n, m, p, a in rows))
    plot_pck_curve(metrics, out_dir / "pck_curve.png", title)
    return result


def plot_pck_curve(metrics: PoseMetrics, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    limit = 3 * metrics.threshold_mm
    thresholds = np.linspace(0, limit, 301)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot(thresholds, metrics.pck_curve(thresholds), lw=2)
    ax.axvline(metrics.threshold_mm, color="grey", ls="--", lw=1, label=f"T = {metrics.threshold_mm:g} mm")
    ax.set(xlabel="threshold (mm)", ylabel="PCK", xlim=(0, limit), ylim=(0, 1), title=title or "PCK vs threshold")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
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

