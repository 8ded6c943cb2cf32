"""The one training loop of every stage, on Accelerate (DDP) or DeepSpeed.

Read ``train()`` top to bottom: setup → resume → per epoch: per step (LR, forward,
backward, clip, step, log, checkpoint) → evaluate → checkpoint and export. What the run
is built from lives in ``depthpi.train.setup``; what a stage computes in
``depthpi.train.stages``; checkpoints in ``depthpi.train.checkpoint``.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from depthpi.config import TrainConfig
from depthpi.data.reference import cached_mean_pose
from depthpi.data.remote import configure as configure_remote
from depthpi.data.shard_stream import read_summary, skip_summary
from depthpi.dist import gather_objects
from depthpi.evaluate import evaluate, threshold_for_split
from depthpi.io import DiskFullError
from depthpi.log import configure_logging
from depthpi.train.checkpoint import TrainerState, code_version, resume_latest, save_checkpoint
from depthpi.train.ledger import RankLedger
from depthpi.train.logging import RunLogger, StepMeter, skeleton_panel
from depthpi.train.preemption import Preempted, StopRequest
from depthpi.train.run_lock import hold_run_dir
from depthpi.train.tracker_check import check_trackers
from depthpi.train.schedules import StepSchedule
from depthpi.train.setup import (Loaders, adopt_teacher_architecture, build_loaders, build_stage, check_config_unchanged,
                                  check_split_roles, make_accelerator, record_inputs, resolve_precision, save_run_config,
                                  startup_checks,
                                  verify_splits)
from depthpi.weights import save_weights

log = logging.getLogger("depthpi.train")


def train(cfg: TrainConfig, stop: StopRequest | None = None) -> dict:
    """Train one stage to the end (resuming if the run directory holds a checkpoint).

    ``stop``: a preemption signal; once set on any rank, every rank checkpoints at the next
    log point and :class:`Preempted` is raised (``depthpi.train.preemption``).
    Returns the final evaluation metrics (``mpjpe``, ``pck``, ``auc``, ``mean_pose_mpjpe``, ...).
    """
    with contextlib.ExitStack() as held:  # what the run holds (its directory's lock) until it ends
        return _train(cfg, stop, held)


def _train(cfg: TrainConfig, stop: StopRequest | None, held: contextlib.ExitStack) -> dict:
    # --- setup: every check that can fail does so here, before the first step ----
    with startup_checks():
        cfg, adopted = adopt_teacher_architecture(cfg)
        configure_remote(cfg.data.remote)
        accelerator = make_accelerator(cfg)
        run_dir, is_main = Path(cfg.run.out_dir), accelerator.is_main_process
        rank, world = accelerator.process_index, accelerator.num_processes
        configure_logging(rank, world)
        held.enter_context(hold_run_dir(run_dir, is_main))  # one run per directory, before it writes there
        check_trackers(cfg.run.log_with, run_dir, cfg.run.tracker_timeout_s, is_main)
        check_split_roles(cfg)
        if cfg.data.verify_shards:
            verify_splits(cfg, rank, world)
        new_config = check_config_unchanged(cfg)
        torch.manual_seed(cfg.run.seed)
        stage, model = build_stage(cfg, accelerator.device)
        loaders = build_loaders(cfg, stage, rank, world)
        record_inputs(cfg, is_main)
        mean_pose = training_mean_pose(cfg, accelerator)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                     weight_decay=cfg.optim.weight_decay)
        if cfg.run.channels_last and accelerator.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        model, optimizer = accelerator.prepare(model, optimizer)
        stage.model = torch.compile(model) if cfg.run.compile else model
        schedule = StepSchedule(tuple(cfg.optim.lr_milestones), tuple(cfg.optim.lr_factors)).scaled(cfg.optim.epochs)
        deepspeed = accelerator.distributed_type.name == "DEEPSPEED"
        trainer = resume(cfg, accelerator)
        if new_config and is_main:  # only a run that passed every check records its config
            save_run_config(cfg)
        accelerator.wait_for_everyone()
    if trainer.epoch >= cfg.optim.epochs:
        return already_complete(cfg, trainer)
    logger = RunLogger(accelerator, asdict(cfg), run_dir, resumed=trainer.step > 0)
    ledger = RankLedger(rank, world)
    if adopted:
        log.info(adopted)
    log.info("stage %s %s: %d process(es) × batch %d = global batch %d; %d steps/epoch; device %s, "
             "precision %s%s", cfg.stage, cfg.experiment, world, cfg.data.batch_size,
             world * cfg.data.batch_size, loaders.steps_per_epoch, accelerator.device,
             resolve_precision(cfg, accelerator.device.type != "cuda"),
             f", DeepSpeed ZeRO-{cfg.run.deepspeed.zero_stage}" if deepspeed else "")

    def checkpoint():
        trainer.data = loaders.positions() if trainer.batches_in_epoch else {}
        save_checkpoint(accelerator, run_dir, trainer, cfg.run.keep_last)

    # --- epochs ----------------------------------------------------------------
    metrics = {}
    threshold = threshold_for_split(cfg.data.test, cfg.data.dataset)
    steps_per_epoch = loaders.steps_per_epoch
    for epoch in range(trainer.epoch, cfg.optim.epochs):
        model.train()
        if cfg.optim.freeze_bn_after_epoch is not None:
            set_bn_frozen(model, epoch >= cfg.optim.freeze_bn_after_epoch)
        loaders.start_epoch(epoch, trainer.data, trainer.batches_in_epoch)
        meter, last = StepMeter(), None
        for index, batch in loaders.train_batches(start=trainer.batches_in_epoch):
            ledger.add(epoch, batch.keys)
            batch = batch.to(accelerator.device)
            meter.batch_ready()
            epoch_float = epoch + index / steps_per_epoch
            lr = set_lr(optimizer, cfg.optim.lr * schedule.factor(epoch_float))

            with accelerator.autocast():
                terms = stage.losses(batch, epoch_float)
            accelerator.backward(terms["loss"])
            grad_norm = None
            if not deepspeed and cfg.optim.grad_clip > 0:  # DeepSpeed clips inside its step
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            trainer.step += 1
            trainer.batches_in_epoch = index + 1
            meter.step_done(terms, grad_norm)

            epoch_end = index + 1 == steps_per_epoch
            if trainer.step % cfg.run.log_every == 0 or epoch_end:
                logger.step(meter, trainer.step, rank, lr, epoch_float, cfg.data.batch_size * world,
                            accelerator.device)
            if cfg.run.image_every and trainer.step % cfg.run.image_every == 0:
                log_images(logger, stage, accelerator.unwrap_model(model), batch, terms["pred"], trainer.step)
            if trainer.step % cfg.run.checkpoint_every == 0 and not epoch_end:  # the epoch's end saves anyway
                checkpoint()
            if stop is not None and trainer.step % cfg.run.log_every == 0 and stop.requested(accelerator):
                if trainer.step % cfg.run.checkpoint_every or epoch_end:
                    checkpoint()
                log.warning("preempted: checkpoint at step %d, stopping for the requeue", trainer.step)
                logger.close()
                raise Preempted(trainer.step)
            last = (batch, terms["pred"])
            meter.wait_for_batch()

        # --- evaluate, checkpoint, export --------------------------------------
        final = epoch + 1 == cfg.optim.epochs
        metrics = evaluate_epoch(stage, accelerator.unwrap_model(model), loaders, accelerator, threshold, mean_pose,
                                 final)
        logger.epoch(epoch, cfg.optim.epochs, meter, metrics, trainer.step)
        if last is not None:
            log_images(logger, stage, accelerator.unwrap_model(model), *last, trainer.step)
        trainer.epoch, trainer.batches_in_epoch = epoch + 1, 0
        improved = metrics["mpjpe"] < trainer.best_metric
        if improved:
            trainer.best_metric, trainer.best_step = metrics["mpjpe"], trainer.step
        checkpoint()
        export(accelerator, model, run_dir, improved)
        logger.write_metrics(metrics, run_dir / "metrics.json")
    ledger.write(run_dir, trainer.step, accelerator.unwrap_model(model))
    logger.close()
    accelerator.wait_for_everyone()
    return metrics


def resume(cfg: TrainConfig, accelerator) -> TrainerState:
    """The trainer state of the run's newest loadable checkpoint, with model, optimiser,
    scaler and every rank's RNG restored from it; a fresh state when there is none."""
    found = resume_latest(accelerator, Path(cfg.run.out_dir))
    if found is None:
        return TrainerState(code_version=code_version())
    trainer, path = found
    log.info("resumed from %s (epoch %d, step %d)", path, trainer.epoch, trainer.step)
    return trainer


def already_complete(cfg: TrainConfig, trainer: TrainerState) -> dict:
    """A run re-run after its last epoch: says so and returns the metrics it recorded."""
    log.info("run complete (%d epochs, step %d): nothing to do. To train it longer, re-run with "
             "run.allow_config_change=true optim.epochs=<more> (the LR schedule stretches to the new length)",
             trainer.epoch, trainer.step)
    path = Path(cfg.run.out_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def training_mean_pose(cfg: TrainConfig, accelerator) -> np.ndarray:
    """(J, 3) mm mean root-relative pose of ``data.train`` (the reference every eval reports),
    computed once by the main process and cached in the run directory."""
    cache = Path(cfg.run.out_dir) / "mean_pose.json"
    if accelerator.is_main_process:
        cached_mean_pose(cfg.data.train, cache)
    accelerator.wait_for_everyone()
    return cached_mean_pose(cfg.data.train, cache)


def set_lr(optimizer, lr: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def set_bn_frozen(model: nn.Module, frozen: bool) -> None:
    """§6.1.6: stop updating BatchNorm running statistics (parameters still learn)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train(not frozen)


def evaluate_epoch(stage, model: nn.Module, loaders: Loaders, accelerator, threshold_mm: float,
                   mean_pose: np.ndarray, final: bool) -> dict:
    """Test-split metrics with the mean-pose reference, the bad samples skipped this epoch
    (``skipped`` {train, eval}) and, after the last epoch, every extra test set (``tests``).

    ``model`` is the unwrapped model: a DDP forward would run collectives per batch, which
    ranks with fewer (or no) test batches would never reach.
    """
    was_training = model.training
    model.eval()
    predict = partial(stage.predict, model=model)
    metrics = evaluate(predict, loaders.test, accelerator.device, threshold_mm, mean_pose=mean_pose,
                       autocast=accelerator.autocast).summary()
    reports = gathered_reports(loaders.labeled, loaders.unlabeled)
    metrics["skipped"] = {"train": skip_summary(reports), "eval": metrics["skipped"]}
    metrics["read"] = read_summary(reports)  # bytes per training sample, images and stored features
    if final and loaders.extra_tests:
        metrics["tests"] = {}
        for name, (loader, threshold) in loaders.extra_tests.items():
            result = evaluate(predict, loader, accelerator.device, threshold, autocast=accelerator.autocast).summary()
            metrics["tests"][name] = {k: result.get(k) for k in ("mpjpe", "pa_mpjpe", "n_mpjpe", "pck", "auc",
                                                                  "threshold_mm", "count", "skipped")}
    model.train(was_training)
    return metrics


def gathered_reports(*loaders) -> list[dict]:
    """The read reports of the current pass of ``loaders`` on every rank (a collective)."""
    reports = [loader.pass_stats() for loader in loaders if loader is not None]
    return [r for rank in gather_objects(reports, "training read reports") for r in rank]


def log_images(logger: RunLogger, stage, model: nn.Module, batch, pred: torch.Tensor, step: int) -> None:
    """Skeletons on the crops, and the stage's own panels (a student's feature differences).

    In eval mode: a train-mode forward, even without grad, would move BatchNorm's running
    statistics with these samples and change the weights saved next.
    """
    if not logger.is_main:
        return
    was_training = model.training
    model.eval()
    panels = {"train/skeletons": skeleton_panel(batch, pred), **stage.panels(batch, model)}
    model.train(was_training)
    logger.images(panels, step)


def export(accelerator, model: nn.Module, run_dir: Path, improved: bool) -> None:
    """``export/last.pt`` (and ``best.pt`` when this epoch improved): plain state dicts.

    Raises:
        DiskFullError: on every rank, when the main process's disk filled up.
    """
    weights = accelerator.get_state_dict(model)  # a collective under DeepSpeed
    full = None
    if accelerator.is_main_process:
        try:
            save_weights(weights, run_dir / "export" / "last.pt")
            if improved:
                save_weights(weights, run_dir / "export" / "best.pt")
        except DiskFullError as err:
            full = str(err)
    full = next(filter(None, gather_objects(full, "weights exported")), None)
    if full:  # all ranks stop together: none waits in the next epoch's first collective
        raise DiskFullError(full)
