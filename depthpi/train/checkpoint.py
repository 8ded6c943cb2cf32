"""Resumable checkpoints: accelerate's own format inside an atomic, rotated directory.

``run_dir/checkpoints/step-<8 digits>/`` holds what ``accelerator.save_state`` writes
(model, optimiser, scaler and every rank's RNG; DeepSpeed's sharded files under DeepSpeed)
and ``trainer.json`` (epoch, step, data positions, best metric), written last: it marks the
checkpoint complete. A checkpoint is written under a temporary name and renamed into place;
re-saving a step swaps the new directory in before the old one goes, so a kill at any
moment leaves a complete latest checkpoint. The newest ``run.keep_last`` are kept, older
ones removed only once a newer one is complete (accelerate's ``total_limit`` rotation
deletes before it writes). Before accelerate (or DeepSpeed, which unpickles freely) reads a
checkpoint, every pickle-based file must load with ``torch.load(weights_only=True)``;
DeepSpeed's optimiser files may hold three DeepSpeed types besides tensors and plain data.
Nothing is registered with ``register_for_checkpointing`` (accelerate loads those with
``weights_only=False``); the trainer's own state is JSON.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from depthpi.dist import first_on_any_rank
from depthpi.io import DiskFullError, atomic_write_text, disk_full, is_disk_full

log = logging.getLogger(__name__)
MARKER = "trainer.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")
_PICKLED = (".bin", ".pkl", ".pt")


class CheckpointError(RuntimeError):
    """A checkpoint directory that cannot be used (incomplete, damaged or unsafe)."""


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

    @classmethod
    def from_json(cls, text: str, where: Path) -> TrainerState:
        try:
            record = json.loads(text)
            return cls(**{k: v for k, v in record.items() if k in cls.__dataclass_fields__})
        except (json.JSONDecodeError, TypeError) as err:
            raise CheckpointError(f"{where}: unreadable trainer state ({err})") from None


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


def _step_of(path: Path) -> int:
    return int(_STEP_DIR.match(path.name).group(1))


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run (their marker exists), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    _recover_swaps(root)
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / MARKER).is_file()]
    return sorted(found, key=_step_of)


def _recover_swaps(root: Path) -> None:
    """A kill between the two renames of a re-save leaves ``.old-step-N`` without ``step-N``: restore it."""
    for old in root.glob(".old-step-*"):
        final = root / old.name[len(".old-"):]
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        elif (old / MARKER).is_file():
            os.replace(old, final)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def resume_hint(run_dir: str | Path) -> str:
    """Where the same command would resume ``run_dir``: its latest complete checkpoint."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return "no checkpoint was written yet: the same command starts the run again"
    try:
        state = TrainerState.from_json((latest / MARKER).read_text(), latest)
    except (OSError, CheckpointError):
        return f"the same command resumes from the last checkpoint that loads ({latest})"
    return f"the last checkpoint is {latest} (epoch {state.epoch}, step {state.step}): the same command resumes from it"


def save_checkpoint(accelerator, run_dir: str | Path, trainer: TrainerState, keep_last: int) -> Path:
    """Write a checkpoint atomically (a collective: every rank calls it) and keep the newest ``keep_last``.

    Raises:
        DiskFullError: on every rank when the disk filled up on any (one line: the directory,
            the space needed, the space free); the partial checkpoint is removed, earlier
            ones are untouched.
    """
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{trainer.step:08d}"
    tmp = root / f".tmp-step-{trainer.step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    saved = _unless_full(lambda: accelerator.save_state(str(tmp), safe_serialization=True), tmp)
    # also the barrier: every rank's files (its RNG state, its ZeRO shard) are written
    full = first_on_any_rank(saved, "checkpoint files written")
    if full is None and accelerator.is_main_process:
        full = _unless_full(lambda: atomic_write_text(tmp / MARKER, json.dumps(asdict(trainer), indent=1),
                                                      fsync=True), tmp)
        if full is None:
            _swap_in(tmp, final)
            for stale in checkpoint_dirs(run_dir)[:-keep_last]:
                shutil.rmtree(stale, ignore_errors=True)
    full = first_on_any_rank(full, "checkpoint complete")
    if full:  # every rank stops with the same line; none is left waiting for the others
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise DiskFullError(full)
    return final


def _unless_full(write, tmp: Path) -> str | None:
    """``write()`` into the checkpoint being written at ``tmp``: None when done, the
    disk-full line when the disk filled up (any other error is raised)."""
    try:
        write()
        return None
    except Exception as err:  # safetensors, torch and DeepSpeed each raise their own type
        if not is_disk_full(err, tmp.parent):
            raise
    written = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
    previous = latest_checkpoint(tmp.parent.parent)
    needed = sum(f.stat().st_size for f in previous.rglob("*") if f.is_file()) if previous else None
    return str(disk_full(tmp.parent, f"checkpoint {tmp.name[len('.tmp-'):]}", needed=needed, written=written,
                         advice="the earlier checkpoints are intact; free some space", freed=written))


def _swap_in(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is moved aside first and removed last."""
    if not final.exists():
        os.replace(tmp, final)
        return
    old = final.with_name(f".old-{final.name}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def check_safe(path: Path) -> None:
    """Refuse a checkpoint holding a pickle-based file that does not load with ``weights_only=True``.

    Raises:
        CheckpointError: naming the file.
    """
    from accelerate.utils import load as safe_load  # torch.load(weights_only=True) + numpy's safe globals

    files = [f for f in sorted(path.rglob("*")) if f.is_file() and f.suffix in _PICKLED]
    allowed = _deepspeed_types() if any("zero_pp_rank" in f.name for f in files) else []
    for file in files:
        try:
            with torch.serialization.safe_globals(allowed):
                safe_load(file, map_location="cpu")
        except Exception as err:  # UnpicklingError, RuntimeError, EOFError, ... of a crafted or broken file
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(f"{file}: refused, it does not load as plain tensors and data "
                                  f"(weights_only=True): {first}") from None


def _deepspeed_types() -> list:
    """The DeepSpeed classes its ZeRO optimiser files pickle (deepspeed 0.14–0.19)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_checkpoint(accelerator, path: Path) -> TrainerState:
    """Restore model, optimiser, scaler and this rank's RNG from ``path``; returns its trainer state.

    Raises:
        CheckpointError: the checkpoint is incomplete, unsafe or cannot be loaded.
    """
    marker = path / MARKER
    if not marker.is_file():
        raise CheckpointError(f"{path}: incomplete checkpoint ({MARKER} missing)")
    trainer = TrainerState.from_json(marker.read_text(), marker)
    check_safe(path)
    try:
        accelerator.load_state(str(path))
    except CheckpointError:
        raise
    except Exception as err:  # a missing or truncated file: safetensors, torch and DeepSpeed raise many types
        raise CheckpointError(f"{path}: cannot be loaded ({type(err).__name__}: {err})") from err
    return trainer


def resume_latest(accelerator, run_dir: str | Path) -> tuple[TrainerState, Path] | None:
    """The newest checkpoint that loads, restored into the accelerator's objects; a damaged
    one is skipped with a warning in favour of the one before. None when there is none.

    Raises:
        CheckpointError: checkpoints exist but none of them loads.
    """
    candidates = checkpoint_dirs(run_dir)
    failures = []
    for path in reversed(candidates):
        try:
            return load_checkpoint(accelerator, path), path
        except CheckpointError as err:
            log.warning("skipping damaged checkpoint: %s", err)
            failures.append(str(err))
    if failures:
        raise CheckpointError(f"{run_dir}: no checkpoint could be loaded: " + " | ".join(failures))
    return None
