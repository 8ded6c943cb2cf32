"""Building a run: everything the training loop works with, checked before its first step.

:func:`build_run` runs the start-up in order (the accelerator, the run directory's lock,
the trackers, the splits, the config against the directory's; the stage, its model and
loaders; the optimiser; the resume) and returns one :class:`Run`. Every check that can
fail does so here, as a :class:`~depthpi.train.startup_checks.StartupError`.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from depthpi.config import TrainConfig, load_config
from depthpi.data.reference import cached_mean_pose
from depthpi.data.remote import configure as configure_remote
from depthpi.log import configure_logging
from depthpi.models.posenet import ARCHITECTURE_FIELDS, build_model, freeze, load_model
from depthpi.train.accelerator import make_accelerator
from depthpi.train.checkpoint import TrainerState, code_version, resume_latest
from depthpi.train.loaders import Loaders, build_loaders
from depthpi.train.run_lock import hold_run_dir
from depthpi.train.schedules import StepSchedule
from depthpi.train.stages import OnlineTeacher, StoredTeacher, StudentStage, SupervisedStage
from depthpi.train.startup_checks import (check_config_unchanged, check_split_roles, record_inputs, save_run_config,
                                          startup_checks, verify_splits)
from depthpi.train.tracker_check import check_trackers
from depthpi.weights import find_run_config

log = logging.getLogger("depthpi.train")


@dataclass
class Run:
    """One run, ready for its first (or next) step.

    ``model`` is the trained model as accelerate prepared it (DDP / DeepSpeed engine): what is
    checkpointed and exported; ``forward`` is what the loss runs: ``model``, compiled when
    ``run.compile``. ``trainer`` is where the run stands (resumed from its checkpoint).
    """

    cfg: TrainConfig
    accelerator: Accelerator
    model: nn.Module
    forward: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: StepSchedule
    stage: SupervisedStage
    loaders: Loaders
    trainer: TrainerState
    mean_pose: np.ndarray  # (J, 3) mm: the training split's mean root-relative pose

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run.out_dir)

    def unwrapped(self) -> nn.Module:
        """The plain model (no DDP / DeepSpeed / compile wrapper)."""
        return self.accelerator.unwrap_model(self.model)


def build_run(cfg: TrainConfig, held: contextlib.ExitStack) -> Run:
    """Set the run up; ``held`` keeps what the run holds until it ends (its directory's lock).

    Raises:
        StartupError: one line naming the key, file or directory at fault.
    """
    with startup_checks():
        cfg, adopted = adopt_teacher_architecture(cfg)
        configure_remote(cfg.data.remote)
        accelerator = make_accelerator(cfg)
        rank, world, is_main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
        configure_logging(rank, world)
        held.enter_context(hold_run_dir(cfg.run.out_dir, is_main))  # one run per directory, before it writes there
        check_trackers(cfg.run.log_with, Path(cfg.run.out_dir), cfg.run.tracker_timeout_s, is_main)
        check_split_roles(cfg)
        if cfg.data.verify_shards:
            verify_splits(cfg, rank, world)
        new_config = check_config_unchanged(cfg)
        set_seed(cfg.run.seed)
        stage, model = build_stage(cfg, accelerator.device)
        loaders = build_loaders(cfg, stage.needs_depth, rank, world)
        record_inputs(cfg, is_main)
        mean_pose = training_mean_pose(cfg, accelerator)
        model, forward, optimizer = prepare_model(cfg, accelerator, model)
        trainer = resume(cfg, accelerator)
        if new_config and is_main:  # only a run that passed every check records its config
            save_run_config(cfg)
        accelerator.wait_for_everyone()
    if adopted:
        log.info(adopted)
    schedule = StepSchedule(tuple(cfg.optim.lr_milestones), tuple(cfg.optim.lr_factors)).scaled(cfg.optim.epochs)
    return Run(cfg, accelerator, model, forward, optimizer, schedule, stage, loaders, trainer, mean_pose)


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
    """The stage object (the student's frozen teacher inside it) and the model it trains."""
    model = build_model(cfg.model)
    if cfg.run.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.stage != "student":
        return SupervisedStage(cfg), model
    if cfg.teacher.mode == "online":
        teacher_model = freeze(load_model(cfg.teacher.model, cfg.teacher.weights)).to(device)
        teacher = OnlineTeacher(teacher_model, cfg.teacher.model, cfg.distill.tap,
                                cfg.run.channels_last and device.type == "cuda")
    else:
        teacher = StoredTeacher()
    return StudentStage(cfg, teacher), model


def prepare_model(cfg: TrainConfig, accelerator, model: nn.Module) -> tuple[nn.Module, nn.Module, torch.optim.Adam]:
    """(prepared model, the module the loss runs, Adam of §5.3) on the accelerator's device."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                 weight_decay=cfg.optim.weight_decay)
    if cfg.run.channels_last and accelerator.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, torch.compile(model) if cfg.run.compile else model, optimizer


def training_mean_pose(cfg: TrainConfig, accelerator) -> np.ndarray:
    """(J, 3) mm mean root-relative pose of ``data.train`` (the reference every eval reports),
    computed once by the main process and cached in the run directory."""
    cache = Path(cfg.run.out_dir) / "mean_pose.json"
    if accelerator.is_main_process:
        cached_mean_pose(cfg.data.train, cache)
    accelerator.wait_for_everyone()
    return cached_mean_pose(cfg.data.train, cache)


def resume(cfg: TrainConfig, accelerator) -> TrainerState:
    """The trainer state of the run's newest loadable checkpoint, with model, optimiser,
    scaler and every rank's RNG restored from it; a fresh state when there is none."""
    found = resume_latest(accelerator, Path(cfg.run.out_dir))
    if found is None:
        return TrainerState(code_version=code_version())
    trainer, path = found
    log.info("resumed from %s (epoch %d, step %d)", path, trainer.epoch, trainer.step)
    return trainer
