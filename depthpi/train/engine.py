"""The one training loop of every stage, on Accelerate (DDP) or DeepSpeed.

Read :func:`train` top to bottom: build the run → per epoch: per step (LR, forward,
backward, clip, step, bookkeeping, checkpoint or stop) → evaluate → checkpoint and export
the weights. What the run is built from lives in ``depthpi.train.run``; what a stage
computes in ``depthpi.train.stages``; the counters, reports and checkpoint decisions in
``depthpi.train.bookkeeping``.
"""
from __future__ import annotations

import contextlib
import json
import logging
from functools import partial
from pathlib import Path

from torch import nn

from depthpi.config import TrainConfig
from depthpi.data.shard_stream import read_summary, skip_summary
from depthpi.dist import first_on_any_rank, gather_objects
from depthpi.evaluate import evaluate
from depthpi.io import DiskFullError
from depthpi.train.bookkeeping import Bookkeeping
from depthpi.train.checkpoint import TrainerState
from depthpi.train.preemption import StopRequest
from depthpi.train.run import Run, build_run
from depthpi.weights import save_weights

log = logging.getLogger("depthpi.train")


def train(cfg: TrainConfig, stop: StopRequest | None = None) -> dict:
    """Train one stage to the end (resuming if the run directory holds a checkpoint).

    ``stop``: a preemption signal; once set on any rank, every rank checkpoints at the next
    log point and :class:`~depthpi.train.preemption.Preempted` is raised.
    Returns the final evaluation metrics (``mpjpe``, ``pck``, ``auc``, ``mean_pose_mpjpe``, ...).
    """
    with contextlib.ExitStack() as held:  # what the run holds (its directory's lock) until it ends
        run = build_run(cfg, held)  # every check that can fail does so here, before the first step
        cfg, trainer = run.cfg, run.trainer
        if trainer.epoch >= cfg.optim.epochs:
            return already_complete(cfg, trainer)
        accelerator, model, optimizer, stage, loaders = run.accelerator, run.model, run.optimizer, run.stage, run.loaders
        books = Bookkeeping(run, stop)
        metrics = {}
        for epoch in range(trainer.epoch, cfg.optim.epochs):
            model.train()
            if cfg.optim.freeze_bn_after_epoch is not None:
                set_bn_frozen(model, epoch >= cfg.optim.freeze_bn_after_epoch)
            loaders.start_epoch(epoch, trainer.data, trainer.batches_in_epoch)
            books.start_epoch()
            for index, batch in loaders.train_batches(start=trainer.batches_in_epoch):
                batch = books.batch_ready(epoch, batch)
                epoch_float = epoch + index / loaders.steps_per_epoch
                lr = set_lr(optimizer, cfg.optim.lr * run.schedule.factor(epoch_float))
                with accelerator.autocast():
                    terms = stage.losses(run.forward, batch, epoch_float)
                accelerator.backward(terms["loss"])  # under DeepSpeed: also its clip and step
                grad_norm = None
                if cfg.optim.grad_clip > 0:  # under DeepSpeed: the norm its step clipped by
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                books.step_done(index, batch, terms, grad_norm, lr, epoch_float)
                books.checkpoint_or_stop()

            # --- evaluate, checkpoint, export ------------------------------------------
            metrics = evaluate_epoch(run, final=epoch + 1 == cfg.optim.epochs)
            improved = books.epoch_done(epoch, metrics)
            save_exported_weights(accelerator, model, run.run_dir, improved)
            books.logger.write_metrics(metrics, run.run_dir / "metrics.json")
        books.finish()
        return metrics


def already_complete(cfg: TrainConfig, trainer: TrainerState) -> dict:
    """A run re-run after its last epoch: says so and returns the metrics it recorded."""
    log.info("run complete (%d epochs, step %d): nothing to do. To train it longer, re-run with "
             "run.allow_config_change=true optim.epochs=<more> (the LR schedule stretches to the new length)",
             trainer.epoch, trainer.step)
    path = Path(cfg.run.out_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def set_lr(optimizer, lr: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def set_bn_frozen(model: nn.Module, frozen: bool) -> None:
    """§6.1.6: stop updating BatchNorm running statistics (parameters still learn)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train(not frozen)


def evaluate_epoch(run: Run, final: bool) -> dict:
    """Test-split metrics with the mean-pose reference, the bad samples skipped this epoch
    (``skipped`` {train, eval}), the bytes read per training sample (``read``) and, after the
    last epoch, every extra test set (``tests``).

    Runs the unwrapped model: a DDP forward would run collectives per batch, which ranks with
    fewer (or no) test batches would never reach.
    """
    model, loaders, accelerator = run.unwrapped(), run.loaders, run.accelerator
    was_training = model.training
    model.eval()
    predict = partial(run.stage.predict, model)
    metrics = evaluate(predict, loaders.test, accelerator.device, loaders.test_threshold_mm, mean_pose=run.mean_pose,
                       autocast=accelerator.autocast).summary()
    reports = gather_objects(loaders.pass_reports(), "training read reports")
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


def save_exported_weights(accelerator, model: nn.Module, run_dir: Path, improved: bool) -> None:
    """``export/last.pt`` (and ``best.pt`` when this epoch improved): plain state dicts, the
    weights ``depthpi eval``/``export`` and a student's ``teacher.weights`` read.

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
    full = first_on_any_rank(full, "weights exported")
    if full:  # all ranks stop together: none waits in the next epoch's first collective
        raise DiskFullError(full)
