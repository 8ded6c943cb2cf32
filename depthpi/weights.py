"""Model weights as plain state dicts on disk: what training exports and inference loads.

``run_dir/export/last.pt`` and ``best.pt`` are written and read here; inference also takes a
run directory or a checkpoint directory (accelerate's ``model.safetensors``). Weights load
with ``torch.load(weights_only=True)`` or safetensors: no code is unpickled. This module
knows files, not models (``depthpi.models.posenet.load_model`` rebuilds a model from them).
"""
from __future__ import annotations

from pathlib import Path

import torch

from depthpi.io import atomic_path


def save_weights(model_state: dict, path: str | Path) -> None:
    """Write a plain state dict for inference, atomically.

    Raises:
        DiskFullError: the disk filled up (the file it replaces is untouched).
    """
    needed = sum(t.numel() * t.element_size() for t in model_state.values() if isinstance(t, torch.Tensor))
    with atomic_path(path, needed=needed) as tmp:
        torch.save(model_state, tmp)


def load_weights(path: str | Path) -> dict:
    """The model state dict of an exported weights file (``export/*.pt``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no weights file (expected a run's export/last.pt or export/best.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        raise ValueError(f"{path}: not a weights file that loads safely ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (export/*.pt), got {type(state).__name__}")
    return state


def load_any_weights(path: str | Path) -> dict:
    """The model state dict of weights given as a file or a directory (what inference takes).

    ``path`` is an exported weights file (``run/export/last.pt`` or ``best.pt``), a run
    directory (its ``export/last.pt``), or a checkpoint directory
    (``run/checkpoints/step-N``: the model of that step, from accelerate's
    ``model.safetensors``; a DeepSpeed checkpoint's sharded model is not read here).

    Raises:
        FileNotFoundError: no such file, or a directory holding none of these.
        ValueError: the file is not a state dict of tensors.
    """
    path = Path(path)
    if path.is_dir():
        return _directory_weights(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no weights file (expected a run directory, its export/last.pt or "
                                "export/best.pt, or a checkpoint directory checkpoints/step-N)")
    return load_weights(path)


def _directory_weights(path: Path) -> dict:
    """The weights of a run directory (export/last.pt) or of a checkpoint directory."""
    if (path / "export" / "last.pt").is_file():
        return load_weights(path / "export" / "last.pt")
    if (path / "model.safetensors").is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path / "model.safetensors", device="cpu")
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path / 'model.safetensors'}: not a readable safetensors file ({err})") from None
    if (path / "pytorch_model.bin").is_file():
        return load_weights(path / "pytorch_model.bin")
    if any(path.glob("pytorch_model*/*model_states.pt")) or any(path.glob("*/mp_rank_*_model_states.pt")):
        raise ValueError(f"{path}: a DeepSpeed checkpoint (its model is sharded); use the run's export/last.pt")
    raise FileNotFoundError(f"{path}: neither a run directory (no export/last.pt) nor a checkpoint directory "
                            "(no model.safetensors)")


def find_run_config(weights: str | Path) -> Path:
    """config.yaml of the run weights belong to: the nearest directory holding one, from the
    weights' own directory (a run or checkpoint directory) upwards."""
    weights = Path(weights).resolve()
    for parent in ([weights] if weights.is_dir() else []) + list(weights.parents):
        if (parent / "config.yaml").is_file():
            return parent / "config.yaml"
    raise FileNotFoundError(f"{weights}: no config.yaml in any parent directory; pass --config")
