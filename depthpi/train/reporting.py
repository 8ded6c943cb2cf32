"""What a run reports: console lines (``logging``), tracker scalars and images, metrics.json.

Scalars and images go through accelerate's tracker API (``run.log_with``: TensorBoard by
default, MLflow or Weights & Biases where installed); only the main process writes.
TensorBoard writes to ``run_dir/tensorboard``; MLflow to ``MLFLOW_TRACKING_URI`` (experiment
``depthpi`` unless ``MLFLOW_EXPERIMENT_NAME`` says otherwise), W&B to project ``depthpi``; a
resumed run continues the same MLflow / W&B run (their ids are kept in ``run_dir/trackers.json``).
"""
from __future__ import annotations

import json
import logging
import math
import resource
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from depthpi.camera import Camera
from depthpi.dotted import flatten
from depthpi.draw import GT_COLOUR, PRED_COLOUR, draw_skeleton
from depthpi.io import atomic_write_json

log = logging.getLogger("depthpi.train")
PROJECT = "depthpi"
TRACKER_IDS = "trackers.json"


def make_trackers(log_with: tuple[str, ...], run_dir: Path, experiment: str, stage: str) -> list:
    """accelerate tracker objects for ``run.log_with``, continuing this run's earlier tracker runs."""
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    ids_file = run_dir / TRACKER_IDS
    ids = json.loads(ids_file.read_text()) if ids_file.is_file() else {}
    name = f"{experiment or stage} ({run_dir.name})"
    trackers = []
    for kind in log_with:
        if kind == "tensorboard":
            trackers.append(TensorBoardTracker("tensorboard", run_dir))
        elif kind == "mlflow":
            trackers.append(MLflowTracker(PROJECT, run_id=ids.get("mlflow"), run_name=name,
                                          tags={"experiment": experiment, "stage": stage}))
        elif kind == "wandb":
            trackers.append(WandBTracker(PROJECT, name=name, id=ids.get("wandb"), resume="allow",
                                         dir=str(run_dir)))
    return trackers


def skeleton_panel(batch, pred: torch.Tensor, count: int = 4) -> np.ndarray:
    """Crops with ground truth (green) and prediction (red) side by side.

    Args:
        batch: a :class:`depthpi.data.batches.Batch` (rgb (B, S, S, 3) uint8, K (B, 3, 3)
            crop intrinsics px, root (B, 3) mm, joints (B, J, 3) root-relative mm, valid
            (B, J), labeled (B,); crop camera frame).
        pred: (B, J, 3) root-relative mm, crop camera frame.
    Returns:
        (S, min(count, B)·S, 3) uint8 RGB; unlabelled crops are left undrawn.
    """
    tiles = []
    for i in range(min(count, len(pred))):
        image = batch.rgb[i].cpu().numpy().copy()
        if bool(batch.labeled[i]):
            camera = Camera.from_intrinsics(batch.K[i].cpu().numpy())
            root = batch.root[i].cpu().numpy()
            truth = camera.camera_to_image(batch.joints[i].cpu().numpy() + root)
            draw_skeleton(image, truth, GT_COLOUR, batch.valid[i].cpu().numpy())
            draw_skeleton(image, camera.camera_to_image(pred[i].float().cpu().numpy() + root), PRED_COLOUR)
        tiles.append(image)
    return np.concatenate(tiles, axis=1)


def feature_difference_panel(student: torch.Tensor, teacher: torch.Tensor, size: int, count: int = 4) -> np.ndarray:
    """Fig. 6.3: Σ_c |F_teacher − F_student| per location, upsampled, one shared scale."""
    diff = (teacher.float() - student.float()).abs().sum(1)[:count].cpu().numpy()
    diff = diff / max(float(diff.max()), 1e-12)
    tiles = [cv2.applyColorMap(cv2.resize((d * 255).astype(np.uint8), (size, size),
                                          interpolation=cv2.INTER_NEAREST), cv2.COLORMAP_INFERNO)[..., ::-1]
             for d in diff]
    return np.concatenate(tiles, axis=1)


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory of this process so far, MiB: the CUDA allocator's peak on a GPU (no
    device sync), else the process' peak resident set (includes allocator caching)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class StepMeter:
    """One epoch's running loss terms and data-wait time.

    Terms are summed on the device and read back only when logged: no host sync per step.
    """

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count, self.wait = 0, 0.0
        self.start = self._ready = time.perf_counter()

    def batch_ready(self) -> None:
        self.wait += time.perf_counter() - self._ready

    def step_done(self, terms: dict[str, torch.Tensor], grad_norm) -> None:
        for name, value in terms.items():
            if name != "pred":
                self.sums[name] = self.sums.get(name, 0.0) + value.detach().float()
        if grad_norm is not None:
            self.sums["grad_norm"] = self.sums.get("grad_norm", 0.0) + torch.as_tensor(grad_norm).float()
        self.count += 1

    def wait_for_batch(self) -> None:
        """The step's work is done (logging and checkpoints included): waiting starts now."""
        self._ready = time.perf_counter()

    def means(self) -> dict[str, float]:
        return {name: (value / max(self.count, 1)).item() for name, value in self.sums.items()}

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def tracker_params(config: dict) -> dict[str, str | int | float | bool]:
    """A nested config dict as ``a.b.c`` → value, lists and Choices as strings (trackers take
    flat scalar params)."""
    return {key: value if type(value) in (str, int, float, bool) else str(value)
            for key, value in flatten(config).items()}


class RunLogger:
    """Console lines, tracker scalars and images, and metrics files of a run.

    Args:
        accelerator: built with ``log_with=make_trackers(...)``; trackers are started here
            (main process only, as accelerate does) and their run ids kept for a resume.
        config: the run config as a nested dict, stored as the trackers' parameters when the
            run starts (a resumed run continues its tracker runs, whose parameters stay; a
            config change is recorded in the run directory, ``config.previous-*.yaml``).
        run_dir: the run directory.
        resumed: whether the run resumes from a checkpoint.
    """

    def __init__(self, accelerator, config: dict, run_dir: Path, resumed: bool = False):
        self.accelerator = accelerator
        self.is_main = accelerator.is_main_process
        if accelerator.log_with:
            accelerator.init_trackers(PROJECT, config=None if resumed else tracker_params(config))
        if self.is_main and self.run_ids():
            atomic_write_json(run_dir / TRACKER_IDS, self.run_ids())

    def run_ids(self) -> dict[str, str]:
        """The MLflow / W&B run ids of this run (what a restart continues)."""
        ids = {}
        for tracker in self.accelerator.trackers:
            if tracker.name == "mlflow" and getattr(tracker, "active_run", None) is not None:
                ids["mlflow"] = tracker.active_run.info.run_id
            elif tracker.name == "wandb" and getattr(tracker, "run", None) is not None:
                ids["wandb"] = tracker.run.id
        return ids

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.accelerator.log_with:
            self.accelerator.log(values, step=step)

    def images(self, panels: dict[str, np.ndarray], step: int) -> None:
        """HWC uint8 panels to every tracker that takes images (TensorBoard, W&B)."""
        if not self.is_main:
            return
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                for tag, image in panels.items():
                    tracker.writer.add_image(tag, image, step, dataformats="HWC")
            elif hasattr(tracker, "log_images"):
                tracker.log_images({tag: [image] for tag, image in panels.items()}, step=step)

    def step(self, meter: StepMeter, step: int, rank: int, lr: float, epoch_float: float, global_batch: int,
             device: torch.device) -> None:
        """Mean loss terms since the epoch began, LR, throughput, data-wait share, peak memory.

        Raises:
            FloatingPointError: the mean loss is not finite (naming step and rank).
        """
        elapsed = meter.elapsed
        scalars = {f"train/{name}": value for name, value in meter.means().items()}
        if not math.isfinite(scalars["train/loss"]):
            raise FloatingPointError(f"non-finite loss at step {step} on rank {rank}")
        scalars.update({"train/lr": lr, "train/samples_per_s": meter.count * global_batch / elapsed,
                        "train/data_wait_share": meter.wait / elapsed, "train/epoch": epoch_float,
                        "train/peak_memory_mib": peak_memory_mib(device)})
        self.scalars(scalars, step)

    def epoch(self, epoch: int, epochs: int, meter: StepMeter, metrics: dict, step: int) -> None:
        """Eval, extra-test and skipped-sample scalars, and the console summary of one epoch."""
        keys = [k for k in EVAL_KEYS if metrics.get(k) is not None]
        self.scalars({f"eval/{k}": metrics[k] for k in keys}, step)
        for name, m in metrics.get("tests", {}).items():
            self.scalars({f"eval_{name}/{k}": m[k] for k in keys if m.get(k) is not None}, step)
            log.info("  test set %s: mpjpe=%.1fmm pck@%g=%.3f auc=%.3f", name, m["mpjpe"], m["threshold_mm"],
                     m["pck"], m["auc"])
        self.scalars({f"data/skipped_{part}": report["total"] for part, report in metrics["skipped"].items()}, step)
        terms = " ".join(f"{k}={v:.4g}" for k, v in meter.means().items() if k != "grad_norm")
        reference = metrics.get("mean_pose_mpjpe")
        ref = f" (mean pose {reference:.1f}mm)" if reference is not None else ""
        log.info("epoch %d/%d | %s | eval mpjpe=%.1fmm%s pck=%.3f auc=%.3f | %.0fs, data wait %.0f%%", epoch + 1,
                 epochs, terms, metrics["mpjpe"], ref, metrics["pck"], metrics["auc"], meter.elapsed,
                 100 * meter.wait / max(meter.elapsed, 1e-9))
        read = metrics.get("read")
        if read and read["samples"]:
            per_sample = read["bytes_per_sample"]
            self.scalars({f"data/bytes_per_sample_{role}": n for role, n in per_sample.items()}, step)
            log.info("  read per training sample: %s (%d samples)", ", ".join(
                f"{role} {n / 1024:.1f} KiB" for role, n in per_sample.items()), read["samples"])
        for part, report in metrics.get("skipped", {}).items():
            if report["total"]:
                reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(report["by_reason"].items()))
                example = next(iter(report["examples"].values()))
                log.warning("  skipped %d bad %s samples this epoch (%s); e.g. %s in %s: %s", report["total"], part,
                            reasons, example["key"], example["shard"], example["message"])

    def write_metrics(self, metrics: dict, path: Path) -> None:
        if self.is_main:
            atomic_write_json(path, metrics)

    def close(self) -> None:
        """Finish every tracker (not ``end_training``: that also ends the process group)."""
        for tracker in self.accelerator.trackers:
            tracker.finish()


EVAL_KEYS = ("mpjpe", "pa_mpjpe", "n_mpjpe", "pck", "auc", "mean_pose_mpjpe")
