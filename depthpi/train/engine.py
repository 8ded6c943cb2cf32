"""The one training loop of every stage, on Accelerate (DDP) or DeepSpeed.

Read ``train()`` top to bottom: setup → resume → per epoch: per step (LR, forward,
backward, clip, step, log, checkpoint) → evaluate → checkpoint and export.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from depthpi.config import TrainConfig, load_config, save_config, to_yaml
from depthpi.data.batches import (build_eval_loader, build_train_loaders, concat_batches, pipeline_for,
                                to_device)
from depthpi.data.loader import ShardLoader, skip_summary
from depthpi.data.shards import ManifestError
from depthpi.evaluate import evaluate_split, threshold_for_split
from depthpi.io import atomic_write_json
from depthpi.models.posenet import ARCHITECTURE_FIELDS, build_model, freeze
from depthpi.precompute import check_feature_shards
from depthpi.train.checkpoint import (TrainerState, code_version, latest_checkpoint, load_checkpoint, rng_state,
                                      save_checkpoint, set_rng_state)
from depthpi.train.logging import RunLogger, peak_memory_mib
from depthpi.train.preemption import Preempted, StopRequest
from depthpi.train.schedules import StepSchedule
from depthpi.train.stages import StudentStage, SupervisedStage
from depthpi.weights import find_run_config, load_weights, save_weights


def make_accelerator(cfg: TrainConfig):
    """An Accelerator for this machine: DDP/DeepSpeed on GPUs, gloo on CPU-only machines."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    on_cpu = cfg.run.cpu or not torch.cuda.is_available()
    precision = cfg.run.precision
    if precision == "auto":
        precision = "fp32" if on_cpu else "bf16"
    kwargs = []
    if on_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Without an explicit backend accelerate finds none on a GPU-less machine and, under
        # DeepSpeed, reports one process per rank (DESIGN.md, "Library behaviour").
        kwargs.append(InitProcessGroupKwargs(backend="gloo"))
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    # cpu=True would silently drop a DeepSpeed plugin; DeepSpeed on CPU goes through gloo instead.
    accelerator = Accelerator(mixed_precision=mixed, cpu=on_cpu and not deepspeed, kwargs_handlers=kwargs)
    if deepspeed:
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
        ds["gradient_clipping"] = cfg.optim.grad_clip
    return accelerator


def build_stage(cfg: TrainConfig, device: torch.device):
    """The stage object and the trainable model (plus the frozen teacher of a student)."""
    model = build_model(cfg.model)
    if cfg.run.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.stage != "student":
        return SupervisedStage(model, cfg), model
    teacher = None
    if cfg.teacher.mode == "online":
        teacher = build_model(replace(cfg.teacher.model, init="none"))
        try:
            missing, unexpected = teacher.load_state_dict(load_weights(cfg.teacher.weights), strict=False)
            problem = f"missing {missing[:5]}, unexpected {unexpected[:5]}" if missing or unexpected else None
        except RuntimeError as err:  # tensor shapes differ
            problem = " ".join(str(err).split())[:400]
        if problem:
            m = cfg.teacher.model
            raise ValueError(f"teacher.weights {cfg.teacher.weights}: does not fit teacher.model (kind {m.kind}, "
                             f"arch {m.arch}, width {m.width}, depth_bins {m.depth_bins}): {problem}; set "
                             f"teacher.model.* to the architecture the teacher was trained with")
        teacher = freeze(teacher).to(device)
    return StudentStage(model, cfg, teacher), model


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


class RankLedger:
    """What each rank trained on: ``run_dir/ranks/rank-<r>.json`` (sample keys per epoch,
    up to ``max_keys``, and a parameter checksum) — to audit data sharding and DDP sync."""

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


def check_precomputed(cfg: TrainConfig) -> tuple[tuple[str, str | None], str]:
    """Feature shards of the train (and unlabelled) split, checked against the config.

    Returns the (labelled, unlabelled) feature directories and where colour augmentation
    must run (``workers``/``device``): where it ran when the features were computed, so the
    student sees the teacher's pixels exactly, whatever device either ran on.
    """
    sigmoid = cfg.distill.sigmoid or cfg.distill.term == "bce"
    pairs = [(cfg.teacher.features, cfg.data.train)]
    if cfg.data.unlabeled is not None:
        pairs.append((cfg.teacher.unlabeled_features, cfg.data.unlabeled))
    colour = set()
    for features, source in pairs:
        params = check_feature_shards(features, source, tap=cfg.distill.tap, input_size=cfg.data.pipeline.input_size,
                                      sigmoid_needed=sigmoid, teacher_weights=cfg.teacher.weights,
                                      colour_on=cfg.data.pipeline.colour_on)
        colour.add(params.get("colour_on", "workers"))
    if len(colour) > 1:
        raise ValueError(f"teacher.features and teacher.unlabeled_features were computed with colour augmentation "
                         f"in different places ({sorted(colour)}); recompute one of them")
    return (cfg.teacher.features, cfg.teacher.unlabeled_features), colour.pop()


def _set_lr(optimizer, base_lr: float, schedule: StepSchedule, epoch_float: float) -> float:
    lr = base_lr * schedule.factor(epoch_float)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def _set_bn_frozen(model: nn.Module, frozen: bool) -> None:
    """§6.1.6: stop updating BatchNorm running statistics (parameters still learn)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train(not frozen)


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

    def start_epoch(self, epoch: int, trainer: TrainerState) -> None:
        """Select the epoch; when resuming inside it, each train loader skips what it handed out."""
        for name, loader in self.train_loaders().items():
            loader.set_epoch(epoch)
            if trainer.batches_in_epoch:
                loader.load_state_dict(trainer.data.get(name) or {"epoch": epoch, "batches": trainer.batches_in_epoch})

    def positions(self) -> dict[str, dict]:
        return {name: loader.state_dict() for name, loader in self.train_loaders().items()}


def build_loaders(cfg: TrainConfig, stage, device_type: str, rank: int, world: int) -> Loaders:
    """Every loader of the run, with the stage's pipeline (depth, colour placement, stored
    teacher features of a precomputed student); checks fail here, before training starts."""
    pipeline = pipeline_for(cfg.data, stage.needs_depth, device_type)
    features = None
    if cfg.stage == "student" and cfg.teacher.mode == "precomputed":
        features, colour_on = check_precomputed(cfg)
        pipeline = replace(pipeline, colour_on=colour_on)
    labeled, unlabeled = build_train_loaders(cfg.data, pipeline, cfg.run.seed, rank, world, features)
    steps = len(labeled) if not cfg.run.steps_per_epoch else min(len(labeled), cfg.run.steps_per_epoch)
    if steps == 0:
        raise ValueError(f"data.train {cfg.data.train}: too few samples for one batch of "
                         f"{cfg.data.batch_size} on each of {world} ranks")
    return Loaders(labeled, unlabeled, build_eval_loader(cfg.data, pipeline, cfg.data.test, rank, world),
                   build_extra_tests(cfg, pipeline, rank, world), steps)


class StepMeter:
    """One epoch's running loss terms and data-wait time.

    Terms are summed on the device and read back only when logged: no host sync per step.
    """

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count, self.wait = 0, 0.0
        self.start = self._ready = time.perf_counter()

    def batch_ready(self) -> None:
        self.wait += time.perf_counter() - self._ready

    def step_done(self, terms: dict[str, torch.Tensor], grad_norm) -> None:
        for name, value in terms.items():
            if name != "pred":
                self.sums[name] = self.sums.get(name, 0.0) + value.detach().float()
        if grad_norm is not None:
            self.sums["grad_norm"] = self.sums.get("grad_norm", 0.0) + torch.as_tensor(grad_norm).float()
        self.count += 1

    def wait_for_batch(self) -> None:
        """The step's work is done (logging and checkpoints included): waiting starts now."""
        self._ready = time.perf_counter()

    def means(self) -> dict[str, float]:
        return {name: (value / max(self.count, 1)).item() for name, value in self.sums.items()}

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def train(cfg: TrainConfig, stop: StopRequest | None = None) -> dict:
    """Train one stage to the end (resuming if the run directory holds a checkpoint).

    ``stop``: a preemption signal; once set on any rank, every rank checkpoints at the next
    log point and :class:`Preempted` is raised (``depthpi.train.preemption``).
    Returns the final evaluation metrics (``mpjpe``, ``pck``, ``auc``, ...).
    """
    # --- setup -----------------------------------------------------------------
    cfg, adopted = adopt_teacher_architecture(cfg)
    accelerator = make_accelerator(cfg)
    run_dir, is_main = Path(cfg.run.out_dir), accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(cfg.run.seed)
    stage, model = build_stage(cfg, accelerator.device)
    loaders = build_loaders(cfg, stage, accelerator.device.type, rank, world)
    steps_per_epoch = loaders.steps_per_epoch
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                 weight_decay=cfg.optim.weight_decay)
    if cfg.run.channels_last and accelerator.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model, optimizer = accelerator.prepare(model, optimizer)
    stage.model = torch.compile(model) if cfg.run.compile else model
    schedule = StepSchedule(tuple(cfg.optim.lr_milestones), tuple(cfg.optim.lr_factors)).scaled(cfg.optim.epochs)
    deepspeed = accelerator.distributed_type.name == "DEEPSPEED"
    logger = RunLogger(run_dir, enabled=is_main)
    ledger = RankLedger(rank, world)
    trainer = resume(cfg, accelerator, model, optimizer, logger)
    if adopted:
        logger.info(adopted)
    logger.info(f"stage {cfg.stage} {cfg.experiment}: {world} process(es) × batch {cfg.data.batch_size} "
                f"= global batch {world * cfg.data.batch_size}; {steps_per_epoch} steps/epoch; "
                f"device {accelerator.device}, mixed precision {accelerator.mixed_precision}")

    def checkpoint():
        trainer.data = loaders.positions() if trainer.batches_in_epoch else {}
        state = None if deepspeed else {
            "model": accelerator.unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "rng": rng_state()}
        save_checkpoint(run_dir, trainer, state, cfg.run.keep_last,
                        save_sharded=accelerator.save_state if deepspeed else None,
                        is_main=is_main, barrier=accelerator.wait_for_everyone)

    # --- epochs ----------------------------------------------------------------
    metrics = {}
    threshold = threshold_for_split(cfg.data.test, cfg.data.dataset)
    for epoch in range(trainer.epoch, cfg.optim.epochs):
        model.train()
        if cfg.optim.freeze_bn_after_epoch is not None:
            _set_bn_frozen(model, epoch >= cfg.optim.freeze_bn_after_epoch)
        loaders.start_epoch(epoch, trainer)
        unlabeled = iter(loaders.unlabeled) if loaders.unlabeled is not None else None
        meter, last = StepMeter(), None
        for index, batch in enumerate(loaders.labeled, start=trainer.batches_in_epoch):
            if index >= steps_per_epoch:
                break
            if unlabeled is not None:
                batch = concat_batches(batch, next(unlabeled))
            ledger.add(epoch, batch["key"])
            batch = to_device(batch, accelerator.device, cfg.run.channels_last)
            meter.batch_ready()
            epoch_float = epoch + index / steps_per_epoch
            lr = _set_lr(optimizer, cfg.optim.lr, schedule, epoch_float)

            with accelerator.autocast():
                terms = stage.losses(batch, epoch_float)
            accelerator.backward(terms["loss"])
            grad_norm = None
            if not deepspeed and cfg.optim.grad_clip > 0:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            trainer.step += 1
            trainer.batches_in_epoch = index + 1
            meter.step_done(terms, grad_norm)

            if trainer.step % cfg.run.log_every == 0 or index + 1 == steps_per_epoch:
                log_step(logger, meter, trainer.step, rank, lr, epoch_float, cfg.data.batch_size * world,
                         accelerator.device)
            if cfg.run.image_every and trainer.step % cfg.run.image_every == 0:
                logger.images(stage, batch, terms["pred"], trainer.step)
            if trainer.step % cfg.run.checkpoint_every == 0:
                checkpoint()
            if stop is not None and trainer.step % cfg.run.log_every == 0 and stop.requested(accelerator.device):
                if trainer.step % cfg.run.checkpoint_every:
                    checkpoint()
                logger.info(f"preempted: checkpoint at step {trainer.step}, stopping for the requeue")
                logger.close()
                raise Preempted(trainer.step)
            last = (batch, terms["pred"])
            meter.wait_for_batch()

        # --- evaluate, checkpoint, export --------------------------------------
        final = epoch + 1 == cfg.optim.epochs
        metrics = evaluate_epoch(stage, loaders, accelerator, threshold, cfg.run.channels_last, final)
        log_epoch(logger, stage, metrics, meter, last, trainer.step, epoch, cfg.optim.epochs)
        trainer.epoch, trainer.batches_in_epoch = epoch + 1, 0
        improved = metrics["mpjpe"] < trainer.best_metric
        if improved:
            trainer.best_metric, trainer.best_step = metrics["mpjpe"], trainer.step
        checkpoint()
        weights = accelerator.get_state_dict(model)
        if is_main:
            save_weights(weights, run_dir / "export" / "last.pt")
            if improved:
                save_weights(weights, run_dir / "export" / "best.pt")
            logger.write_metrics(metrics, run_dir / "metrics.json")
    ledger.write(run_dir, trainer.step, accelerator.unwrap_model(model))
    logger.close()
    accelerator.wait_for_everyone()
    return metrics


def resume(cfg: TrainConfig, accelerator, model: nn.Module, optimizer, logger: RunLogger) -> TrainerState:
    """The trainer state of the run's latest checkpoint, with model, optimiser, scaler and
    RNG restored from it; a fresh state (and the run's config.yaml written) when there is none."""
    run_dir = Path(cfg.run.out_dir)
    resume_from = latest_checkpoint(run_dir)
    if resume_from is None:
        if accelerator.is_main_process:
            save_config(cfg, run_dir / "config.yaml")
            logger.text("config", to_yaml(cfg))
        return TrainerState(code_version=code_version())
    trainer, state = load_checkpoint(resume_from)
    if accelerator.distributed_type.name == "DEEPSPEED":
        accelerator.load_state(str(resume_from / "deepspeed"))
    else:
        accelerator.unwrap_model(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(state["scaler"])
    set_rng_state((state or {}).get("rng", rng_state()))
    logger.info(f"resumed from {resume_from} (epoch {trainer.epoch}, step {trainer.step})")
    return trainer


def log_step(logger: RunLogger, meter: StepMeter, step: int, rank: int, lr: float, epoch_float: float,
             global_batch: int, device: torch.device) -> None:
    """Mean loss terms since the epoch began, LR, throughput, data-wait share, peak memory."""
    elapsed = meter.elapsed
    scalars = {f"train/{name}": value for name, value in meter.means().items()}
    if not math.isfinite(scalars["train/loss"]):
        raise FloatingPointError(f"non-finite loss at step {step} on rank {rank}")
    scalars.update({"train/lr": lr, "train/samples_per_s": meter.count * global_batch / elapsed,
                    "train/data_wait_share": meter.wait / elapsed, "train/epoch": epoch_float,
                    "train/peak_memory_mib": peak_memory_mib(device)})
    logger.scalars(scalars, step)


def evaluate_epoch(stage, loaders: Loaders, accelerator, threshold_mm: float, channels_last: bool,
                   final: bool) -> dict:
    """Test-split metrics, the bad samples skipped this epoch (``skipped`` {train, eval}) and,
    after the last epoch, every extra test set (``tests``)."""
    metrics = evaluate(stage, loaders.test, accelerator, threshold_mm, channels_last)
    metrics["skipped"] = {"train": gathered_skips(loaders.labeled, loaders.unlabeled), "eval": metrics.pop("skipped")}
    if final and loaders.extra_tests:
        metrics["tests"] = evaluate_extra_tests(stage, loaders.extra_tests, accelerator, channels_last)
    return metrics


def log_epoch(logger: RunLogger, stage, metrics: dict, meter: StepMeter, last, step: int, epoch: int,
              epochs: int) -> None:
    """TensorBoard scalars (eval, extra tests, skipped samples), the last batch's images and
    the console summary of one epoch."""
    logger.scalars({f"eval/{k}": metrics[k] for k in ("mpjpe", "pck", "auc")}, step)
    for name, m in metrics.get("tests", {}).items():
        logger.scalars({f"eval_{name}/{k}": m[k] for k in ("mpjpe", "pck", "auc")}, step)
        logger.info(f"  test set {name}: mpjpe={m['mpjpe']:.1f}mm pck@{m['threshold_mm']:g}={m['pck']:.3f} "
                    f"auc={m['auc']:.3f}")
    logger.scalars({f"data/skipped_{part}": report["total"] for part, report in metrics["skipped"].items()}, step)
    if last is not None:
        logger.images(stage, *last, step)
    logger.epoch_summary(epoch, epochs, meter.means(), metrics, meter.elapsed, meter.wait)


def build_extra_tests(cfg: TrainConfig, pipeline, rank: int, world: int) -> dict[str, tuple]:
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


def evaluate_extra_tests(stage, tests: dict[str, tuple], accelerator, channels_last: bool) -> dict[str, dict]:
    """{name: mpjpe, pck, auc, threshold_mm, count, skipped} of every extra test set (per-group tables left out)."""
    results = {}
    for name, (loader, threshold) in tests.items():
        result = evaluate(stage, loader, accelerator, threshold, channels_last)
        results[name] = {k: result[k] for k in ("mpjpe", "pck", "auc", "threshold_mm", "count", "skipped")}
    return results


def gathered_skips(*loaders) -> dict:
    """Bad samples skipped in the current pass of ``loaders`` on every rank (``skip_summary``).

    A collective when distributed: every rank calls it at the same point.
    """
    reports = [loader.pass_stats() for loader in loaders if loader is not None]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, reports)
        reports = [report for rank_reports in gathered for report in rank_reports]
    return skip_summary(reports)


def evaluate(stage, loader, accelerator, threshold_mm: float, channels_last: bool = False) -> dict:
    """MPJPE / PCK / AUC of the stage's model over a whole split, reduced across ranks,
    with the samples the pass skipped (``skipped``)."""
    was_training = stage.model.training
    stage.model.eval()
    metrics = evaluate_split(lambda batch: stage.predict(batch).joints, loader, accelerator.device, threshold_mm,
                             channels_last=channels_last, autocast=accelerator.autocast)
    stage.model.train(was_training)
    result = metrics.compute()
    result["threshold_mm"] = threshold_mm
    result["skipped"] = gathered_skips(loader)
    return result
