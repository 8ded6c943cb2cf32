"""The run's accelerator: DDP or DeepSpeed, precision, process group and trackers.

The run config is the one place for precision (``run.precision``) and DeepSpeed
(``run.deepspeed``); ``accelerate launch`` decides only the process layout.
"""
from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path

import torch

from depthpi.config import TrainConfig
from depthpi.train.reporting import make_trackers

log = logging.getLogger(__name__)
PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


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
    DeepSpeed clips gradients inside its step (``optim.grad_clip``).

    Raises:
        ValueError: fp16 under DeepSpeed (autocast in fp16 needs a loss scaler ZeRO does not give it).
    """
    ds = cfg.run.deepspeed
    if not ds.zero_stage:
        return None
    if precision == "fp16":
        raise ValueError("run.precision=fp16 with run.deepspeed.zero_stage > 0: use bf16 (or fp32) under DeepSpeed")
    from accelerate.utils import DeepSpeedPlugin

    # str(): DeepSpeed pickles its config into every checkpoint, which must load with
    # weights_only=True; a config Choice would be a depthpi type there
    plugin = DeepSpeedPlugin(zero_stage=ds.zero_stage, gradient_accumulation_steps=1,
                             gradient_clipping=cfg.optim.grad_clip, offload_optimizer_device=str(ds.offload_optimizer),
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


def describe(cfg: TrainConfig, accelerator, steps_per_epoch: int) -> str:
    """The run's start-up line: processes, batch, steps per epoch, device, precision, DeepSpeed."""
    world, on_cpu = accelerator.num_processes, accelerator.device.type != "cuda"
    deepspeed = f", DeepSpeed ZeRO-{cfg.run.deepspeed.zero_stage}" if cfg.run.deepspeed.zero_stage else ""
    return (f"stage {cfg.stage} {cfg.experiment}: {world} process(es) × batch {cfg.data.batch_size} = global batch "
            f"{world * cfg.data.batch_size}; {steps_per_epoch} steps/epoch; device {accelerator.device}, precision "
            f"{resolve_precision(cfg, on_cpu)}{deepspeed}")
