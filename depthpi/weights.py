"""Model weights as plain state dicts: what training exports and inference loads.

``run_dir/export/last.pt`` and ``best.pt`` are written here; a checkpoint directory's
``state.pt`` (``depthpi.train.checkpoint``) holds the same weights under ``model``, beside
the optimiser state. Both load with ``torch.load(weights_only=True)``: no code is unpickled.
"""
from __future__ import annotations

from pathlib import Path

import torch

from depthpi.io import atomic_path

CHECKPOINT_STATE = "state.pt"  # inside a checkpoint directory


def save_weights(model_state: dict, path: str | Path) -> None:
    """Write a plain state dict for inference, atomically."""
    with atomic_path(path) as tmp:
        torch.save(model_state, tmp)


def load_weights(path: str | Path) -> dict:
    """The model state dict of an exported weights file, a checkpoint directory or its ``state.pt``."""
    path = Path(path)
    file = path / CHECKPOINT_STATE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no weights (expected an export/*.pt file or a checkpoint directory "
                                f"holding {CHECKPOINT_STATE}; for DeepSpeed runs use export/*.pt)")
    state = torch.load(file, map_location="cpu", weights_only=True)
    is_checkpoint = isinstance(state, dict) and "model" in state and "optimizer" in state
    return state["model"] if is_checkpoint else state


def find_run_config(ckpt: str | Path) -> Path:
    """config.yaml of the run a weights file or checkpoint directory belongs to."""
    ckpt = Path(ckpt).resolve()
    for parent in [ckpt.parent, *ckpt.parents]:
        if (parent / "config.yaml").is_file():
            return parent / "config.yaml"
    raise FileNotFoundError(f"{ckpt}: no config.yaml in any parent directory; pass --config")
