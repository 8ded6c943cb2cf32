"""TensorBoard and console output of a run; only the main process writes."""
from __future__ import annotations

import resource
from pathlib import Path

import cv2
import numpy as np
import torch

from depthpi.camera import Camera
from depthpi.draw import GT_COLOUR, PRED_COLOUR, draw_skeleton
from depthpi.io import atomic_write_json


def skeleton_panel(batch: dict, pred: torch.Tensor, count: int = 4) -> np.ndarray:
    """Crops with ground truth (green) and prediction (red) side by side.

    Args:
        batch: ``rgb`` (B, S, S, 3) uint8, ``K`` (B, 3, 3) crop intrinsics px, ``root`` (B, 3)
            mm, ``joints`` (B, J, 3) root-relative mm, ``valid`` (B, J), ``labeled`` (B,),
            all in the crop camera's frame.
        pred: (B, J, 3) root-relative mm, crop camera frame.
    Returns:
        (S, min(count, B)·S, 3) uint8 RGB; unlabelled crops are left undrawn.
    """
    tiles = []
    for i in range(min(count, len(pred))):
        image = batch["rgb"][i].cpu().numpy().copy()
        if bool(batch["labeled"][i]):
            camera = Camera.from_intrinsics(batch["K"][i].cpu().numpy())
            root = batch["root"][i].cpu().numpy()
            truth = camera.camera_to_image(batch["joints"][i].cpu().numpy() + root)
            draw_skeleton(image, truth, GT_COLOUR, batch["valid"][i].cpu().numpy())
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


class RunLogger:
    """Console lines, TensorBoard scalars/images/text and metrics files for the main process."""

    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def info(self, message: str) -> None:
        if self.enabled:
            print(f"[depthpi] {message}", flush=True)

    def text(self, tag: str, text: str) -> None:
        if self.writer:
            self.writer.add_text(tag, f"```\n{text}\n```", 0)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def images(self, stage, batch: dict, pred: torch.Tensor, step: int) -> None:
        if not self.writer:
            return
        self.writer.add_image("train/skeletons", skeleton_panel(batch, pred), step, dataformats="HWC")
        if hasattr(stage, "teacher_features"):
            # eval mode: a train-mode forward, even without grad, would move BatchNorm's
            # running statistics with these 4 samples and change the weights saved next.
            was_training = stage.model.training
            stage.model.eval()
            with torch.no_grad():
                small = {k: v[:4] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                student = stage.predict(small, (stage.tap,)).features[stage.tap]
                teacher = stage.teacher_features(small)
            stage.model.train(was_training)
            panel = feature_difference_panel(student, teacher, batch["rgb"].shape[1])
            self.writer.add_image("train/feature_difference", panel, step, dataformats="HWC")

    def epoch_summary(self, epoch: int, epochs: int, train: dict, metrics: dict, seconds: float,
                      wait: float) -> None:
        terms = " ".join(f"{k}={v:.4g}" for k, v in train.items() if k != "grad_norm")
        self.info(f"epoch {epoch + 1}/{epochs} | {terms} | eval mpjpe={metrics['mpjpe']:.1f}mm "
                  f"pck={metrics['pck']:.3f} auc={metrics['auc']:.3f} | {seconds:.0f}s, "
                  f"data wait {wait / max(seconds, 1e-9):.0%}")
        for part, report in metrics.get("skipped", {}).items():
            if report["total"]:
                reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(report["by_reason"].items()))
                example = next(iter(report["examples"].values()))
                self.info(f"  skipped {report['total']} bad {part} samples this epoch ({reasons}); e.g. "
                          f"{example['key']} in {example['shard']}: {example['message']}")

    def write_metrics(self, metrics: dict, path: Path) -> None:
        atomic_write_json(path, metrics)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
