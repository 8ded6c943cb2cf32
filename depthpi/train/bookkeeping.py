"""The training loop's bookkeeping: where the run stands, what it reports, when it saves.

Around each step: the rank ledger and the data-wait clock as a batch arrives; after it, the
step and batch counters, the step meter, log lines and images at their intervals, the
periodic checkpoint and the stop a preemption asks for; after each epoch, the epoch's
report, the best metric and the epoch's checkpoint. At the end, each rank's ledger of what
it trained on (``run_dir/ranks/rank-<r>.json``), to audit data sharding and DDP sync.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from depthpi.data.batches import Batch
from depthpi.io import atomic_write_json
from depthpi.train.accelerator import describe
from depthpi.train.checkpoint import save_checkpoint
from depthpi.train.preemption import Preempted, StopRequest
from depthpi.train.reporting import RunLogger, StepMeter, skeleton_panel
from depthpi.train.run import Run

log = logging.getLogger("depthpi.train")


class Bookkeeping:
    """The counters, meter, ledger and reports of one :class:`~depthpi.train.run.Run`.

    Args:
        stop: a preemption signal; once set on any rank, every rank checkpoints at the next log
            point and :class:`Preempted` is raised.
    """

    def __init__(self, run: Run, stop: StopRequest | None = None):
        self.run, self.stop = run, stop
        accelerator = run.accelerator
        self.logger = RunLogger(accelerator, asdict(run.cfg), run.run_dir, resumed=run.trainer.step > 0)
        self.ledger = RankLedger(accelerator.process_index, accelerator.num_processes)
        self.meter, self.last = StepMeter(), None
        log.info("%s", describe(run.cfg, accelerator, run.loaders.steps_per_epoch))

    def start_epoch(self) -> None:
        self.meter, self.last = StepMeter(), None

    def batch_ready(self, epoch: int, batch: Batch) -> Batch:
        """Record the batch in the rank ledger; returns it on the training device."""
        self.ledger.add(epoch, batch.keys)
        batch = batch.to(self.run.accelerator.device)
        self.meter.batch_ready()
        return batch

    def step_done(self, index: int, batch: Batch, terms: dict[str, torch.Tensor], grad_norm, lr: float,
                  epoch_float: float) -> None:
        """Count the step (``index``: its batch in the epoch), add its loss terms (and gradient
        norm) to the meter; log at ``run.log_every`` and the epoch's end, images at ``run.image_every``."""
        trainer, cfg, accelerator = self.run.trainer, self.run.cfg, self.run.accelerator
        trainer.step += 1
        trainer.batches_in_epoch = index + 1
        self.meter.step_done(terms, grad_norm)
        if trainer.step % cfg.run.log_every == 0 or self.epoch_end:
            self.logger.step(self.meter, trainer.step, accelerator.process_index, lr, epoch_float,
                             cfg.data.batch_size * accelerator.num_processes, accelerator.device)
        if cfg.run.image_every and trainer.step % cfg.run.image_every == 0:
            self.images(batch, terms["pred"])
        self.last = (batch, terms["pred"])

    def checkpoint_or_stop(self) -> None:
        """The periodic checkpoint (the epoch's end saves anyway); at a log point, a stop any rank
        was asked for: every rank checkpoints and raises :class:`Preempted`. Ends the step."""
        step, cfg = self.run.trainer.step, self.run.cfg.run
        saved = step % cfg.checkpoint_every == 0 and not self.epoch_end
        if saved:
            self.checkpoint()
        if self.stop is not None and step % cfg.log_every == 0 and self.stop.requested(self.run.accelerator):
            if not saved:
                self.checkpoint()
            log.warning("preempted: checkpoint at step %d, stopping for the requeue", step)
            self.logger.close()
            raise Preempted(step)
        self.meter.wait_for_batch()  # the step's work is done: waiting for the next batch starts now

    @property
    def epoch_end(self) -> bool:
        return self.run.trainer.batches_in_epoch == self.run.loaders.steps_per_epoch

    def epoch_done(self, epoch: int, metrics: dict) -> bool:
        """Report the epoch, note its best metric (``mpjpe``), save its checkpoint.

        Returns:
            Whether this epoch improved on the best so far.
        """
        trainer = self.run.trainer
        self.logger.epoch(epoch, self.run.cfg.optim.epochs, self.meter, metrics, trainer.step)
        if self.last is not None:
            self.images(*self.last)
        trainer.epoch, trainer.batches_in_epoch = epoch + 1, 0
        improved = metrics["mpjpe"] < trainer.best_metric
        if improved:
            trainer.best_metric, trainer.best_step = metrics["mpjpe"], trainer.step
        self.checkpoint()
        return improved

    def checkpoint(self) -> None:
        """Save the run where it stands, the loaders' positions when inside an epoch (a collective)."""
        trainer = self.run.trainer
        trainer.data = self.run.loaders.positions() if trainer.batches_in_epoch else {}
        save_checkpoint(self.run.accelerator, self.run.run_dir, trainer, self.run.cfg.run.keep_last)

    def images(self, batch: Batch, pred: torch.Tensor) -> None:
        """Skeletons on the crops, and the stage's own panels (a student's feature differences).

        In eval mode: a train-mode forward, even without grad, would move BatchNorm's running
        statistics with these samples and change the weights saved next.
        """
        if not self.logger.is_main:
            return
        model = self.run.unwrapped()
        was_training = model.training
        model.eval()
        panels = {"train/skeletons": skeleton_panel(batch, pred), **self.run.stage.panels(model, batch)}
        model.train(was_training)
        self.logger.images(panels, self.run.trainer.step)

    def finish(self) -> None:
        """Write this rank's ledger, finish the trackers, wait for every rank."""
        self.ledger.write(self.run.run_dir, self.run.trainer.step, self.run.unwrapped())
        self.logger.close()
        self.run.accelerator.wait_for_everyone()


class RankLedger:
    """``run_dir/ranks/rank-<r>.json``: sample keys per epoch (up to ``max_keys``), samples
    per epoch, and a parameter checksum (equal on every rank when DDP kept them in sync)."""

    def __init__(self, rank: int, world_size: int, max_keys: int = 20000):
        self.rank, self.world_size, self.max_keys = rank, world_size, max_keys
        self.keys: dict[int, list[str]] = {}
        self.counts: dict[int, int] = {}

    def add(self, epoch: int, keys: list[str]) -> None:
        self.counts[epoch] = self.counts.get(epoch, 0) + len(keys)
        kept = self.keys.setdefault(epoch, [])
        if len(kept) < self.max_keys:
            kept.extend(keys[: self.max_keys - len(kept)])

    def write(self, run_dir: Path, step: int, model: nn.Module) -> None:
        checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
        record = {"rank": self.rank, "world_size": self.world_size, "step": step, "param_checksum": checksum,
                  "samples_per_epoch": self.counts, "keys": self.keys}
        atomic_write_json(run_dir / "ranks" / f"rank-{self.rank}.json", record, indent=None)
