"""The checks a run passes before its first step, so that it fails at start, not after an epoch.

Split roles (no training on a test split), the shards against their manifests
(``data.verify_shards``), the config against the run directory's (no silent change on
resume), and the record of every input with its sha256 (``inputs.json``). The run
directory's lock and the trackers have their own modules (``run_lock``, ``tracker_check``).
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from depthpi.config import TrainConfig, load_config, save_config
from depthpi.data.shard_verify import require_intact
from depthpi.data.shards import ManifestError, manifest_sha256, read_manifest
from depthpi.dist import gather_objects
from depthpi.io import atomic_write_json, file_sha256
from depthpi.train.checkpoint import CheckpointError

log = logging.getLogger(__name__)
# Keys a resumed run may change freely: they say how it reports, not what it computes.
RESUME_FREE_KEYS = ("run.log_every", "run.image_every", "run.keep_last", "run.checkpoint_every",
                    "run.collective_timeout_s", "run.log_with", "run.tracker_timeout_s", "run.allow_config_change",
                    "data.verify_shards", "data.remote.connect_timeout_s", "data.remote.stall_timeout_s",
                    "data.remote.retries", "data.remote.retry_delay_s")


class StartupError(ValueError):
    """A run that cannot start as configured (a bad path, a file that does not fit, a
    changed config): one line for the user, no traceback."""


@contextlib.contextmanager
def startup_checks() -> Iterator[None]:
    """Turn the user errors a run's setup raises into :class:`StartupError`."""
    try:
        yield
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, CheckpointError) as err:
        raise StartupError(str(err)) from err


def config_splits(cfg: TrainConfig, features: bool = False) -> dict[str, str]:
    """Every split the config names, by config key: ``data.train``, ``data.test``,
    ``data.unlabeled``, ``data.extra_tests.<name>`` (those set) and, with ``features``, a
    precomputed student's ``teacher.features`` and ``teacher.unlabeled_features``."""
    data = cfg.data
    splits = {"data.train": data.train, "data.test": data.test, "data.unlabeled": data.unlabeled,
              **{f"data.extra_tests.{name}": split for name, split in (data.extra_tests or {}).items()}}
    if features and cfg.stage == "student" and cfg.teacher.mode == "precomputed":
        splits.update({"teacher.features": cfg.teacher.features,
                       "teacher.unlabeled_features": cfg.teacher.unlabeled_features})
    return {key: str(split) for key, split in splits.items() if split}


def check_split_roles(cfg: TrainConfig) -> None:
    """Refuse training on a test split: a split whose manifest names another role, or one
    directory serving two roles (unless ``data.allow_split_roles``).

    Raises:
        ValueError: naming the keys and the roles.
    """
    if cfg.data.allow_split_roles:
        return
    splits = config_splits(cfg)
    digests = {key: _manifest_digest(key, split) for key, split in splits.items()}
    for key in ("data.train", "data.unlabeled"):
        if key not in splits:
            continue
        role = read_manifest(splits[key], check_files=False).params.get("split")
        if role in ("test", "val", "validation"):
            raise ValueError(f"config key {key!r}: {splits[key]} is a {role!r} split (its manifest says so); "
                             f"training on it would leak it into the model. Point {key} at a training split, or "
                             f"set data.allow_split_roles=true if this is deliberate")
        for other, digest in digests.items():
            if other != key and digest == digests[key] and not {key, other} <= {"data.train", "data.unlabeled"}:
                raise ValueError(f"config keys {key!r} and {other!r} name the same split ({splits[key]}): "
                                 f"the model would be scored on what it trained on; set "
                                 f"data.allow_split_roles=true if this is deliberate")


def _manifest_digest(key: str, split: str) -> str:
    """sha256 of a split's manifest; a missing one is an error naming the config key."""
    try:
        return manifest_sha256(split)
    except ManifestError as err:
        drop = f"; convert that data set (README) or drop it with {key}=null" if key.startswith("data.extra") else ""
        raise ValueError(f"{key}: {err}{drop}") from None


def verify_splits(cfg: TrainConfig, rank: int, world: int) -> None:
    """``data.verify_shards``: every rank checks its share of every split's shards (sha256,
    counts); all ranks learn every verdict, so all fail together.

    Raises:
        ValueError: naming the bad shards.
    """
    problems = []
    for split in config_splits(cfg).values():
        try:
            require_intact(split, workers=1, part=(rank, world))
        except ManifestError as err:
            problems.append(str(err))
    problems = gather_objects(problems, "shard verification")
    if problems:
        raise ValueError("data.verify_shards: " + "\n".join(problems))


def loaded_inputs(cfg: TrainConfig) -> dict[str, dict]:
    """Every file and split the run reads, with its sha256 (a split: its manifest's): what the
    run records in ``inputs.json``."""
    files = {}
    model = cfg.model
    if model.init == "standard":
        files["model.imagenet_path"] = model.imagenet_path
    if model.init == "checkpoint":
        files["model.init_checkpoint"] = model.init_checkpoint
    if model.depth_branch_checkpoint:
        files["model.depth_branch_checkpoint"] = model.depth_branch_checkpoint
    if cfg.stage == "student" and cfg.teacher.weights and Path(cfg.teacher.weights).is_file():
        files["teacher.weights"] = cfg.teacher.weights
    record = {key: {"path": str(path), "sha256": file_sha256(path)} for key, path in files.items()}
    for key, split in config_splits(cfg, features=True).items():
        record[key] = {"path": split, "manifest_sha256": manifest_sha256(split)}
    return record


def record_inputs(cfg: TrainConfig, is_main: bool) -> None:
    """Log what the run reads and write it to ``run_dir/inputs.json`` (main process)."""
    inputs = loaded_inputs(cfg)
    for key, entry in inputs.items():
        digest = entry.get("sha256") or entry.get("manifest_sha256")
        log.info("input %s: %s (sha256 %s)", key, entry["path"], digest[:16])
    if is_main:
        atomic_write_json(Path(cfg.run.out_dir) / "inputs.json", inputs)


def check_config_unchanged(cfg: TrainConfig) -> bool:
    """Refuse to resume a run directory whose config.yaml differs from ``cfg`` (keys outside
    :data:`RESUME_FREE_KEYS`), unless ``run.allow_config_change``.

    Returns:
        Whether ``cfg`` must be written as the run's config.yaml (a new run, or an allowed change).
    Raises:
        ValueError: naming every key that differs, old and new value.
    """
    path = Path(cfg.run.out_dir) / "config.yaml"
    if not path.is_file():
        return True
    saved = load_config(path)
    changed = {key: (old, new) for key, (old, new) in _differences(asdict(saved), asdict(cfg)).items()
               if key not in RESUME_FREE_KEYS}
    if not changed:
        return False
    lines = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in sorted(changed.items()))
    if not cfg.run.allow_config_change:
        raise ValueError(f"{path}: this run directory was started with another config ({lines}); resume with the "
                         f"same config, use a new run.out_dir, or set run.allow_config_change=true")
    log.warning("resuming %s with a changed config: %s", cfg.run.out_dir, lines)
    return True


def save_run_config(cfg: TrainConfig) -> None:
    """Write ``run_dir/config.yaml``; an earlier one is kept as ``config.previous-<n>.yaml``."""
    path = Path(cfg.run.out_dir) / "config.yaml"
    if path.is_file():
        index = 1 + sum(1 for _ in path.parent.glob("config.previous-*.yaml"))
        os.replace(path, path.with_name(f"config.previous-{index}.yaml"))
    save_config(cfg, path)


def _differences(old: dict, new: dict, prefix: str = "") -> dict[str, tuple]:
    out = {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(_differences(a, b, f"{prefix}{key}."))
        elif _plain(a) != _plain(b):
            out[f"{prefix}{key}"] = (_plain(a), _plain(b))
    return out


def _plain(value):
    return list(value) if isinstance(value, tuple) else value
