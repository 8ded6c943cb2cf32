"""Resumable checkpoints: atomic, rotated, loadable without unpickling code.

Layout of a run directory::

    run_dir/config.yaml                  the resolved config of the run
    run_dir/checkpoints/step-00001200/   one checkpoint (a directory)
        state.pt       model, optimiser, scheduler, scaler, RNG (tensors and plain data)
        trainer.json   epoch, step, batches consumed in the epoch, best metric, code version
    run_dir/export/last.pt, best.pt      plain model state dicts for inference

A checkpoint directory is written under a temporary name and renamed when complete, so
a kill mid-save leaves the previous checkpoint as the latest. ``state.pt`` loads with
``torch.load(weights_only=True)``. Under DeepSpeed the model and optimiser are sharded
across ranks; they are then saved by every rank through ``accelerator.save_state`` into
``deepspeed/`` inside the same directory (DeepSpeed's own format).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from depthpi.weights import CHECKPOINT_STATE


_STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainerState:
    """Where a run stands. Mid-epoch, ``batches_in_epoch`` batches were consumed and
    ``data`` holds each loader's position (``ShardLoader.state_dict``, by loader name), so a
    resumed run continues with the next batch rather than the start of the epoch."""

    epoch: int = 0
    step: int = 0
    batches_in_epoch: int = 0
    data: dict = field(default_factory=dict)
    best_metric: float = float("inf")
    best_step: int = -1
    code_version: str = ""


def code_version() -> str:
    """The git commit of the package (with ``+dirty`` when modified), or ``unknown``."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("+dirty" if dirty else "")) if commit else "unknown"


def rng_state() -> dict:
    """Global RNG states as tensors and lists (safe for ``weights_only`` loading)."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": _to_lists(random.getstate()),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuples(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (incomplete ones lack trainer.json)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / "trainer.json").is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: str | Path, trainer: TrainerState, state: dict | None, keep_last: int,
                    save_sharded=None, is_main: bool = True, barrier=lambda: None) -> Path:
    """Write a checkpoint atomically and keep only the ``keep_last`` newest.

    Args:
        state: picklable-free dict (model/optimiser/... state dicts); written by the main
            process. None when ``save_sharded`` saves everything (DeepSpeed).
        save_sharded: optional ``fn(directory)`` every rank calls (collective save).
        barrier: synchronises ranks (``accelerator.wait_for_everyone``).
    """
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{trainer.step:08d}"
    tmp = root / f".tmp-step-{trainer.step:08d}"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    if save_sharded is not None:
        save_sharded(str(tmp / "deepspeed"))
        # Every rank writes its own files (RNG states) after the collective part: the main
        # process must not move the directory until all of them are done.
        barrier()
    if is_main:
        if state is not None:
            torch.save(state, tmp / CHECKPOINT_STATE)
        (tmp / "trainer.json").write_text(json.dumps(asdict(trainer), indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(path: str | Path) -> tuple[TrainerState, dict | None]:
    """Read a checkpoint directory: its trainer state and ``state.pt`` (if present)."""
    path = Path(path)
    trainer_file = path / "trainer.json"
    if not trainer_file.is_file():
        raise FileNotFoundError(f"{trainer_file}: not a complete checkpoint (trainer.json missing)")
    trainer = TrainerState(**json.loads(trainer_file.read_text()))
    state_file = path / CHECKPOINT_STATE
    state = torch.load(state_file, map_location="cpu", weights_only=True) if state_file.is_file() else None
    return trainer, state
