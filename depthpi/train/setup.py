"""Everything a run is built from before its first step: the accelerator, the stage (model,
teacher), the loaders, and the checks that must fail at start rather than after an epoch.

The run config is the one place for precision (``run.precision``) and DeepSpeed
(``run.deepspeed``); ``accelerate launch`` decides only the process layout.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from depthpi.config import TrainConfig, load_config, save_config, to_yaml
from depthpi.data.batches import Batch, build_eval_loader, build_train_loaders, with_depth
from depthpi.data.features import check_feature_shards
from depthpi.data.loader import ShardLoader
from depthpi.data.shard_verify import require_intact
from depthpi.data.shards import ManifestError, file_sha256, manifest_sha256, read_manifest
from depthpi.dist import gather_objects
from depthpi.io import atomic_write_json
from depthpi.train.checkpoint import CheckpointError
from depthpi.train.logging import make_trackers
from depthpi.evaluate import threshold_for_split
from depthpi.models.posenet import ARCHITECTURE_FIELDS, build_model, freeze, load_model
from depthpi.train.stages import OnlineTeacher, StoredTeacher, StudentStage, SupervisedStage
from depthpi.weights import find_run_config

log = logging.getLogger(__name__)
PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
# Keys a resumed run may change freely: they say how it reports, not what it computes.
RESUME_FREE_KEYS = ("run.log_every", "run.image_every", "run.keep_last", "run.checkpoint_every",
                    "run.collective_timeout_s", "run.log_with", "run.tracker_timeout_s", "run.allow_config_change",
                    "data.verify_shards", "data.remote.connect_timeout_s", "data.remote.stall_timeout_s",
                    "data.remote.retries", "data.remote.retry_delay_s")


class StartupError(ValueError):
    """A run that cannot start as configured (a bad path, a file that does not fit, a
    changed config): one line for the user, no traceback."""


@contextlib.contextmanager
def startup_checks():
    """Turn the user errors a run's setup raises into :class:`StartupError`."""
    try:
        yield
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, CheckpointError) as err:
        raise StartupError(str(err)) from err


def resolve_precision(cfg: TrainConfig, on_cpu: bool) -> str:
    """``run.precision`` with ``auto`` resolved: bf16 on a GPU, fp32 on a CPU."""
    if cfg.run.precision != "auto":
        return cfg.run.precision
    return "fp32" if on_cpu else "bf16"


def check_launcher_settings(cfg: TrainConfig, precision: str) -> None:
    """Refuse or report ``accelerate launch`` settings that the run config owns.

    Raises:
        ValueError: DeepSpeed asked for by the launcher but not by ``run.deepspeed``.
    """
    launcher_ds = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if launcher_ds and not cfg.run.deepspeed.zero_stage:
        raise ValueError("accelerate launch asked for DeepSpeed (--use_deepspeed or distributed_type: DEEPSPEED), "
                         "but config key 'run.deepspeed.zero_stage' is 0: depthpi takes DeepSpeed from its run "
                         "config; set run.deepspeed.zero_stage=1 or 2 and launch without DeepSpeed options")
    launcher_mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launcher_mp not in ("no", PRECISIONS[precision]):
        log.warning("accelerate launch's mixed precision %r is not used: config key run.precision decides (%s)",
                    launcher_mp, precision)


def deepspeed_plugin(cfg: TrainConfig, precision: str = "fp32"):
    """The DeepSpeed plugin of ``run.deepspeed`` (None when ``zero_stage`` is 0).

    Mixed precision runs through DeepSpeed's ``torch_autocast``: the weights stay fp32 and the
    forward runs under autocast, as with DDP. (DeepSpeed's own ``bf16`` mode casts the weights
    to bf16 while accelerate switches its autocast off, so fp32 inputs would meet bf16 weights.)

    Raises:
        ValueError: fp16 under DeepSpeed (autocast in fp16 needs a loss scaler ZeRO does not give it).
    """
    ds = cfg.run.deepspeed
    if not ds.zero_stage:
        return None
    if precision == "fp16":
        raise ValueError("run.precision=fp16 with run.deepspeed.zero_stage > 0: use bf16 (or fp32) under DeepSpeed")
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin(zero_stage=ds.zero_stage, gradient_accumulation_steps=1,
                             gradient_clipping=cfg.optim.grad_clip, offload_optimizer_device=ds.offload_optimizer,
                             zero3_init_flag=False)
    # no DataLoader goes through accelerate.prepare, so DeepSpeed cannot infer the batch size
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
    if precision == "bf16":
        plugin.deepspeed_config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    return plugin


def make_accelerator(cfg: TrainConfig):
    """An Accelerator for this machine: DDP or DeepSpeed (from ``run.deepspeed``) on GPUs,
    gloo on CPU-only machines; trackers of ``run.log_with`` writing under ``run.out_dir``."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    on_cpu = cfg.run.cpu or not torch.cuda.is_available()
    precision = resolve_precision(cfg, on_cpu)
    check_launcher_settings(cfg, precision)
    plugin = deepspeed_plugin(cfg, precision)
    if on_cpu:  # before accelerate imports DeepSpeed: its CPU backend, without its detection warning
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    handlers = []
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # An explicit backend: without one accelerate finds none on a GPU-less machine (and,
        # under DeepSpeed, reports one process per rank); a timeout: a missed collective fails.
        handlers.append(InitProcessGroupKwargs(backend="gloo" if on_cpu else "nccl",
                                               timeout=timedelta(seconds=cfg.run.collective_timeout_s)))
    # cpu=True would silently drop a DeepSpeed plugin; DeepSpeed on CPU goes through gloo instead.
    trackers = make_trackers(cfg.run.log_with, Path(cfg.run.out_dir), cfg.experiment, cfg.stage)
    # Under DeepSpeed the plugin carries the precision (torch_autocast); accelerate's own would
    # switch DeepSpeed to bf16 weights.
    mixed = "no" if plugin is not None else PRECISIONS[precision]
    return Accelerator(mixed_precision=mixed, cpu=on_cpu and plugin is None, deepspeed_plugin=plugin,
                       kwargs_handlers=handlers, log_with=trackers or None, project_dir=cfg.run.out_dir)


def adopt_teacher_architecture(cfg: TrainConfig) -> tuple[TrainConfig, str | None]:
    """A student config whose ``teacher.model`` is the architecture ``teacher.weights`` was
    trained with, read from that run's config.yaml (as precompute does), and a line saying
    what changed; unchanged when the weights have no run config or already agree."""
    if cfg.stage != "student" or cfg.teacher.mode != "online" or not cfg.teacher.weights:
        return cfg, None
    try:
        run_config = find_run_config(cfg.teacher.weights)
    except FileNotFoundError:
        return cfg, None
    trained = load_config(run_config).model
    changed = {k: getattr(trained, k) for k in ARCHITECTURE_FIELDS
               if getattr(trained, k) != getattr(cfg.teacher.model, k)}
    if not changed:
        return cfg, None
    model = replace(cfg.teacher.model, **changed)
    note = f"teacher.model {changed} taken from {run_config}, the run of teacher.weights"
    return replace(cfg, teacher=replace(cfg.teacher, model=model)), note


def build_stage(cfg: TrainConfig, device: torch.device) -> tuple[SupervisedStage, nn.Module]:
    """The stage object and the trainable model (the student's frozen teacher inside the stage)."""
    model = build_model(cfg.model)
    if cfg.run.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.stage != "student":
        return SupervisedStage(model, cfg), model
    if cfg.teacher.mode == "online":
        teacher_model = freeze(load_model(cfg.teacher.model, cfg.teacher.weights)).to(device)
        teacher = OnlineTeacher(teacher_model, cfg.teacher.model, cfg.distill.tap,
                                cfg.run.channels_last and device.type == "cuda")
    else:
        teacher = StoredTeacher()
    return StudentStage(model, cfg, teacher), model


@dataclass
class Loaders:
    """The loaders of one run: labelled train, unlabelled train (or None), test, extra tests."""

    labeled: ShardLoader
    unlabeled: ShardLoader | None
    test: ShardLoader
    extra_tests: dict[str, tuple[ShardLoader, float]]
    steps_per_epoch: int

    def train_loaders(self) -> dict[str, ShardLoader]:
        return {"train": self.labeled, **({"unlabeled": self.unlabeled} if self.unlabeled is not None else {})}

    def start_epoch(self, epoch: int, positions: dict, batches_done: int) -> None:
        """Select the epoch; when resuming inside it, each train loader skips what it handed out."""
        for name, loader in self.train_loaders().items():
            loader.set_epoch(epoch)
            if batches_done:
                loader.load_state_dict(positions.get(name) or {"epoch": epoch, "batches": batches_done})

    def train_batches(self, start: int) -> Iterator[tuple[int, Batch]]:
        """(index in epoch, labelled batch followed by its unlabelled share) until the epoch's end."""
        unlabeled = iter(self.unlabeled) if self.unlabeled is not None else None
        for index, raw in enumerate(self.labeled, start=start):
            if index >= self.steps_per_epoch:
                return
            batch = Batch.from_collated(raw)
            pairs = Batch.from_collated(next(unlabeled)).as_unlabeled() if unlabeled is not None else None
            yield index, batch.cat(pairs)

    def positions(self) -> dict[str, dict]:
        return {name: loader.state_dict() for name, loader in self.train_loaders().items()}


def check_precomputed(cfg: TrainConfig) -> tuple[str, str | None]:
    """Feature shards of the train (and unlabelled) split, checked against the config."""
    sigmoid = cfg.distill.sigmoid or cfg.distill.term == "bce"
    pairs = [(cfg.teacher.features, cfg.data.train)]
    if cfg.data.unlabeled is not None:
        pairs.append((cfg.teacher.unlabeled_features, cfg.data.unlabeled))
    for features, source in pairs:
        check_feature_shards(features, source, tap=cfg.distill.tap, input_size=cfg.data.pipeline.input_size,
                             sigmoid_needed=sigmoid, teacher_weights=cfg.teacher.weights, teacher_model=cfg.teacher.model)
    return cfg.teacher.features, cfg.teacher.unlabeled_features


def build_loaders(cfg: TrainConfig, stage: SupervisedStage, rank: int, world: int) -> Loaders:
    """Every loader of the run, with the stage's pipeline (depth when a model reads it, the
    stored teacher features of a precomputed student); checks fail here, before training."""
    pipeline = with_depth(cfg.data.pipeline, stage.needs_depth)
    features = None
    if cfg.stage == "student" and cfg.teacher.mode == "precomputed":
        features = check_precomputed(cfg)
    labeled, unlabeled = build_train_loaders(cfg.data, pipeline, cfg.run.seed, rank, world, features)
    steps = len(labeled) if not cfg.run.steps_per_epoch else min(len(labeled), cfg.run.steps_per_epoch)
    if steps == 0:
        raise ValueError(f"data.train {cfg.data.train}: too few samples for one batch of "
                         f"{cfg.data.batch_size} on each of {world} ranks")
    extra = build_extra_tests(cfg, pipeline, rank, world)
    return Loaders(labeled, unlabeled, build_eval_loader(cfg.data, pipeline, cfg.data.test, rank, world), extra, steps)


def build_extra_tests(cfg: TrainConfig, pipeline, rank: int, world: int) -> dict[str, tuple[ShardLoader, float]]:
    """``data.extra_tests`` as {name: (eval loader, threshold mm)}, checked at start: a test
    set that is not there fails now, not after 30 epochs."""
    tests = {}
    for name, split in (cfg.data.extra_tests or {}).items():
        if split is None:  # dropped by an override
            continue
        try:
            threshold = threshold_for_split(split, cfg.data.dataset)
        except ManifestError as err:
            raise ValueError(f"data.extra_tests.{name}: {err}; convert that data set (README) or drop it "
                             f"with data.extra_tests.{name}=null") from None
        tests[name] = (build_eval_loader(cfg.data, pipeline, split, rank, world), threshold)
    return tests



# --- checks at start ----------------------------------------------------------------
def check_split_roles(cfg: TrainConfig) -> None:
    """Refuse training on a test split: a split whose manifest names another role, or one
    directory serving two roles (unless ``data.allow_split_roles``).

    Raises:
        ValueError: naming the keys and the roles.
    """
    if cfg.data.allow_split_roles:
        return
    splits = {"data.train": cfg.data.train, "data.test": cfg.data.test, "data.unlabeled": cfg.data.unlabeled,
              **{f"data.extra_tests.{k}": v for k, v in (cfg.data.extra_tests or {}).items()}}
    splits = {key: value for key, value in splits.items() if value}
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
    splits = {"data.train": cfg.data.train, "data.test": cfg.data.test, "data.unlabeled": cfg.data.unlabeled,
              **{f"data.extra_tests.{k}": v for k, v in (cfg.data.extra_tests or {}).items()}}
    if cfg.stage == "student" and cfg.teacher.mode == "precomputed":
        splits.update({"teacher.features": cfg.teacher.features, "teacher.unlabeled_features":
                       cfg.teacher.unlabeled_features})
    for key, split in splits.items():
        if split:
            record[key] = {"path": str(split), "manifest_sha256": manifest_sha256(split)}
    return record


def record_inputs(cfg: TrainConfig, is_main: bool) -> None:
    """Log what the run reads and write it to ``run_dir/inputs.json`` (main process)."""
    inputs = loaded_inputs(cfg)
    for key, entry in inputs.items():
        digest = entry.get("sha256") or entry.get("manifest_sha256")
        log.info("input %s: %s (sha256 %s)", key, entry["path"], digest[:16])
    if is_main:
        atomic_write_json(Path(cfg.run.out_dir) / "inputs.json", inputs)


def verify_splits(cfg: TrainConfig, rank: int, world: int) -> None:
    """``data.verify_shards``: every rank checks its share of every split's shards (sha256,
    counts); all ranks learn every verdict, so all fail together.

    Raises:
        ValueError: naming the bad shards.
    """
    splits = [s for s in (cfg.data.train, cfg.data.test, cfg.data.unlabeled, *(cfg.data.extra_tests or {}).values())
              if s]
    problems = []
    for split in splits:
        try:
            require_intact(split, workers=1, part=(rank, world))
        except ManifestError as err:
            problems.append(str(err))
    problems = [p for rank_problems in gather_objects(problems, "shard verification") for p in rank_problems]
    if problems:
        raise ValueError("data.verify_shards: " + "\n".join(problems))


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
