"""Using a trained model: load it with its run config, predict, evaluate.

The prediction path is written once: ``Predictor.predict`` is what ``depthpi eval`` runs
over shards (and what the training engine's evaluation runs, through the stage).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from depthpi.config import TrainConfig, load_config
from depthpi.evaluate import evaluate_split, threshold_for, write_report
from depthpi.models.posenet import build_model
from depthpi.train.checkpoint import load_weights
from depthpi.train.data import build_eval_loader
from depthpi.train.stages import run_model


def find_run_config(ckpt: str | Path) -> Path:
    """config.yaml of the run a weights file or checkpoint directory belongs to."""
    ckpt = Path(ckpt).resolve()
    for parent in [ckpt.parent, *ckpt.parents]:
        if (parent / "config.yaml").is_file():
            return parent / "config.yaml"
    raise FileNotFoundError(f"{ckpt}: no config.yaml in any parent directory; pass --config")


class Predictor:
    """A trained pose model with the config that built it, in eval mode on ``device``."""

    def __init__(self, cfg: TrainConfig, weights: str | Path, device: str | torch.device = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        model = build_model(replace(cfg.model, init="none"))
        missing, unexpected = model.load_state_dict(load_weights(weights), strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights}: weights do not fit model config (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
        self.model = model.to(self.device).eval()

    @classmethod
    def from_checkpoint(cls, ckpt: str | Path, config: str | Path | None = None, device="cpu") -> Predictor:
        return cls(load_config(config or find_run_config(ckpt)), ckpt, device)

    @property
    def needs_depth(self) -> bool:
        return self.cfg.model.kind == "teacher" or self.cfg.model.input == "depth"

    @torch.no_grad()
    def predict(self, batch: dict) -> torch.Tensor:
        """(B, J, 3) mm, root-relative, in the input crop's camera frame."""
        return run_model(self.model, self.cfg.model, batch).joints


def evaluate_checkpoint(ckpt: str | Path, shards: str | Path, out_dir: str | Path, *, config=None,
                        batch_size: int = 64, num_workers: int = 2, device: str | None = None) -> dict:
    """``depthpi eval``: metrics.json, pck_curve.png and per-joint tables in ``out_dir``."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    predictor = Predictor.from_checkpoint(ckpt, config, device)
    data = replace(predictor.cfg.data, eval_batch_size=batch_size)
    pipeline = replace(data.pipeline, depth=predictor.needs_depth)
    loader = build_eval_loader(data, pipeline, str(shards), rank=0, world_size=1, num_workers=num_workers)
    metrics = evaluate_split(predictor.predict, loader, predictor.device, threshold_for(data.dataset), reduce=False)
    return write_report(metrics, out_dir, title=f"{Path(ckpt).name} on {Path(shards).name}")
