"""Batches of the pose pipeline: the loaders of a run's splits (training, evaluation,
prediction over a split) and the host→device step that turns their batches into model inputs.

Workers hand over uint8 RGB, its colour parameters and float depth; colour augmentation,
normalisation and NCHW/channels_last layout happen on the device, where they are nearly
free, instead of in the workers.
"""
from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch

from depthpi.data.device_colour import IDENTITY, colour_augment
from depthpi.data.features import replay_map
from depthpi.data.loader import make_loader
from depthpi.data.pipeline import PipelineConfig, process_sample

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _map_sample(sample, epoch: int, *, cfg: PipelineConfig, seed: int, train: bool) -> dict:
    """Module-level (picklable) map function for loader workers."""
    out = process_sample(sample, cfg, seed=seed, epoch=epoch, train=train)
    out.pop("view")  # replay needs it only at precompute time; keeps collation cheap
    return out


def map_fn(cfg: PipelineConfig, seed: int, train: bool):
    return partial(_map_sample, cfg=cfg, seed=seed, train=train)


def pipeline_for(stage_cfg, needs_depth: bool, device_type: str) -> PipelineConfig:
    """The data config's pipeline with the stage's needs switched on and colour placed for
    the device (attention maps are built on the training device, ``depthpi.train.targets``)."""
    pipeline = replace(stage_cfg.pipeline, depth=needs_depth or stage_cfg.pipeline.depth)
    return pipeline.for_device(device_type)


def split_batch(batch_size: int, unlabeled_fraction: float, has_unlabeled: bool) -> tuple[int, int]:
    """Labelled and unlabelled samples per step (thesis: a third unlabelled)."""
    if not has_unlabeled or unlabeled_fraction == 0:
        return batch_size, 0
    unlabeled = max(1, round(batch_size * unlabeled_fraction))
    if unlabeled >= batch_size:
        raise ValueError(f"data.batch_size={batch_size} leaves no labelled samples at "
                         f"data.unlabeled_fraction={unlabeled_fraction}")
    return batch_size - unlabeled, unlabeled


def build_train_loaders(data_cfg, pipeline: PipelineConfig, seed: int, rank: int, world_size: int,
                        features: tuple[str | None, str | None] | None = None):
    """(labelled loader, unlabelled loader or None); the unlabelled one never runs out.

    ``features``: feature-shard directories (train, unlabelled) of a precomputed teacher;
    samples are then read side by side with them and replay a stored view.
    """
    labeled_bs, unlabeled_bs = split_batch(data_cfg.batch_size, data_cfg.unlabeled_fraction,
                                           data_cfg.unlabeled is not None)
    common = dict(rank=rank, world_size=world_size, num_workers=data_cfg.num_workers,
                  shuffle=True, shuffle_buffer=data_cfg.shuffle_buffer, pin_memory=torch.cuda.is_available())

    def loader(split, batch_size, split_seed, companion, **extra):
        fn = map_fn(pipeline, split_seed, True) if companion is None else partial(
            replay_map, cfg=pipeline, seed=split_seed)
        return make_loader(split, batch_size, fn, seed=split_seed, companion_dir=companion, **common, **extra)

    train_features, unlabeled_features = features or (None, None)
    labeled = loader(data_cfg.train, labeled_bs, seed, train_features)
    unlabeled = None
    if unlabeled_bs:
        unlabeled = loader(data_cfg.unlabeled, unlabeled_bs, seed + 1, unlabeled_features, infinite=True)
    return labeled, unlabeled


def build_eval_loader(data_cfg, pipeline: PipelineConfig, split_dir: str, rank: int, world_size: int,
                      num_workers: int | None = None):
    """Every sample exactly once across ranks, identity view, in stored order."""
    workers = data_cfg.num_workers if num_workers is None else num_workers
    return make_loader(split_dir, data_cfg.eval_batch_size, map_fn(pipeline, 0, False), rank=rank,
                       world_size=world_size, num_workers=workers, seed=0, shuffle=False, drop_last=False)


def concat_batches(labeled: dict, unlabeled: dict | None) -> dict:
    """One batch of labelled samples followed by unlabelled ones (same keys)."""
    if unlabeled is None:
        return labeled
    out = {}
    for key, value in labeled.items():
        other = unlabeled[key]
        out[key] = torch.cat([value, other]) if isinstance(value, torch.Tensor) else list(value) + list(other)
    return out


def to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    """Move a collated batch to ``device`` and build model inputs.

    Adds ``rgb_input`` (B, 3, N, N) float ImageNet-normalised, colour-augmented here when
    the batch carries ``colour`` parameters (B, 4), and, when present, ``depth_input``
    (B, 1, N, N) float; other tensors are moved as they are.
    """
    # Decided on the host copy: evaluation batches (identity views) skip the colour
    # arithmetic without a device→host sync.
    recolour = "colour" in batch and not bool((batch["colour"] == torch.tensor(IDENTITY)).all())
    non_blocking = device.type == "cuda"
    out = {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
           for k, v in batch.items()}
    memory_format = torch.channels_last if channels_last and device.type == "cuda" else torch.contiguous_format
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    rgb = out["rgb"].permute(0, 3, 1, 2).float()
    if recolour:
        rgb = colour_augment(rgb, out["colour"])
    out["rgb_input"] = ((rgb - mean) / std).contiguous(memory_format=memory_format)
    if "depth" in out:
        out["depth_input"] = out["depth"].unsqueeze(1).float().contiguous(memory_format=memory_format)
    return out
