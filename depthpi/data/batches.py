"""Batches of the pose pipeline: the typed batch, the loaders of a run's splits, and the
step that turns a batch into model inputs on the training device.

Loader workers decode, warp and build targets (``depthpi.data.pipeline``) and hand over
uint8 crops with their colour parameters; :func:`model_inputs` applies colour augmentation
(``depthpi.data.colour``) to the whole batch where it trains, CPU or GPU. Normalisation
belongs to the model (``depthpi.models.posenet``): inputs are RGB in [0, 1] and depth in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import partial

import torch

from depthpi.data.colour import colour_augment
from depthpi.data.features import feature_sets, replay_map
from depthpi.data.loader import ShardLoader, make_loader
from depthpi.data.pipeline import PipelineConfig, process_sample

GROUP_KEYS = ("subject", "camera", "action")


@dataclass
class Batch:
    """B samples of one or more splits, on the host or on a device.

    Attributes:
        rgb: (B, N, N, 3) uint8 crops, geometry applied, colour not yet.
        joints: (B, J, 3) float32 mm, root-relative, crop camera frame (zeros if unlabelled).
        root: (B, 3) float32 mm, the root joint in the crop camera frame.
        joints2d: (B, J, 2) float32 px in the N×N crop.
        valid: (B, J) bool, annotated and inside the crop.
        labeled: (B,) bool.
        K: (B, 3, 3) float32 crop intrinsics, px.
        keys: sample keys. groups: ``subject``/``camera``/``action`` → B names (per-group metrics).
        colour: (B, 4) float32 colour parameters of each view, or None (evaluation views).
        depth: (B, N, N) float32 depth input in [0, 1), or None.
        teacher_features: (B, C, h, w) float32 stored teacher tap (precomputed student), or None.
    """

    rgb: torch.Tensor
    joints: torch.Tensor
    root: torch.Tensor
    joints2d: torch.Tensor
    valid: torch.Tensor
    labeled: torch.Tensor
    K: torch.Tensor
    keys: list[str]
    groups: dict[str, list[str]]
    colour: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    teacher_features: torch.Tensor | None = None

    @classmethod
    def from_collated(cls, collated: dict) -> Batch:
        """The loader's collated dict of :func:`process_sample` outputs → a Batch."""
        return cls(rgb=collated["rgb"], joints=collated["joints"], root=collated["root"],
                   joints2d=collated["joints2d"], valid=collated["valid"], labeled=collated["labeled"],
                   K=collated["K"], keys=list(collated["key"]),
                   groups={k: list(collated[k]) for k in GROUP_KEYS if k in collated},
                   colour=collated.get("colour"), depth=collated.get("depth"),
                   teacher_features=collated.get("teacher_feat"))

    def __len__(self) -> int:
        return len(self.keys)

    def _map(self, tensor_fn, list_fn) -> Batch:
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                values[f.name] = tensor_fn(value)
            elif f.name == "keys":
                values[f.name] = list_fn(value)
            elif f.name == "groups":
                values[f.name] = {k: list_fn(v) for k, v in value.items()}
            else:
                values[f.name] = value
        return Batch(**values)

    def to(self, device: torch.device) -> Batch:
        """Every tensor on ``device`` (non-blocking from pinned memory on CUDA)."""
        non_blocking = torch.device(device).type == "cuda"
        return self._map(lambda t: t.to(device, non_blocking=non_blocking), lambda v: v)

    def head(self, count: int) -> Batch:
        """The first ``count`` samples."""
        return self._map(lambda t: t[:count], lambda v: v[:count])

    def as_unlabeled(self) -> Batch:
        """The same views with their labels withheld (``labeled`` and ``valid`` False, joints
        zero): what every sample of a run's unlabelled split is, whatever its shard stores, so
        that part of a labelled split can serve as unlabelled RGB-D pairs (low-label runs)."""
        return replace(self, labeled=torch.zeros_like(self.labeled), valid=torch.zeros_like(self.valid),
                       joints=torch.zeros_like(self.joints))

    def cat(self, other: Batch | None) -> Batch:
        """This batch followed by ``other`` (labelled then unlabelled samples of one step)."""
        if other is None:
            return self
        values = {}
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if (mine is None) != (theirs is None):
                raise ValueError(f"Batch.cat: field {f.name!r} is set in one batch only")
            if isinstance(mine, torch.Tensor):
                values[f.name] = torch.cat([mine, theirs])
            elif f.name == "groups":
                values[f.name] = {k: mine[k] + theirs[k] for k in mine}
            else:
                values[f.name] = mine if mine is None else mine + theirs
        return Batch(**values)


@dataclass
class Inputs:
    """Model inputs built from a batch on its device.

    Attributes:
        rgb: (B, 3, N, N) float32 RGB in [0, 1], colour-augmented, or None.
        depth: (B, 1, N, N) float32 depth in [0, 1) (exp(−metres), 0 = invalid), or None.
    """

    rgb: torch.Tensor | None
    depth: torch.Tensor | None = None


def model_inputs(batch: Batch, *, rgb: bool = True, depth: bool = False, channels_last: bool = False) -> Inputs:
    """The inputs a model reads, built where ``batch`` lives (the training device).

    Colour augmentation runs here for views that carry colour parameters.
    """
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    rgb_input = depth_input = None
    if rgb:
        rgb_input = batch.rgb.permute(0, 3, 1, 2).float() / 255.0
        if batch.colour is not None:
            rgb_input = colour_augment(rgb_input, batch.colour)
        rgb_input = rgb_input.contiguous(memory_format=memory_format)
    if depth:
        if batch.depth is None:
            raise ValueError("the model needs depth but the batch has none (pipeline.depth is off)")
        depth_input = batch.depth.unsqueeze(1).float().contiguous(memory_format=memory_format)
    return Inputs(rgb_input, depth_input)


# --- the loaders of a run --------------------------------------------------------------
def _map_sample(sample, epoch: int, *, cfg: PipelineConfig, seed: int, train: bool) -> dict:
    """Module-level (picklable) map function for loader workers."""
    out = process_sample(sample, cfg, seed=seed, epoch=epoch, train=train)
    out.pop("view")  # replay needs it only at precompute time; keeps collation cheap
    return out


def map_fn(cfg: PipelineConfig, seed: int, train: bool):
    """The loader map function of the pose pipeline: ``(Sample, epoch) -> dict``."""
    return partial(_map_sample, cfg=cfg, seed=seed, train=train)


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
                        features: tuple[str | None, str | None] | None = None
                        ) -> tuple[ShardLoader, ShardLoader | None]:
    """(labelled loader, unlabelled loader or None); the unlabelled one never runs out.

    ``features``: feature-shard directories (train, unlabelled) of a precomputed teacher;
    samples are then read side by side with one of their sets per epoch and replay its view.
    """
    labeled_bs, unlabeled_bs = split_batch(data_cfg.batch_size, data_cfg.unlabeled_fraction,
                                           data_cfg.unlabeled is not None)
    common = dict(rank=rank, world_size=world_size, num_workers=data_cfg.num_workers, shuffle=True,
                  shuffle_buffer=data_cfg.shuffle_buffer, pin_memory=torch.cuda.is_available(),
                  cache_dir=data_cfg.cache_dir, remote=data_cfg.remote)

    def loader(split, batch_size, split_seed, companion, **extra):
        fn = map_fn(pipeline, split_seed, True) if companion is None else partial(
            replay_map, cfg=pipeline, seed=split_seed)
        sets = None if companion is None else feature_sets(companion)  # one stored view per sample and epoch
        return make_loader(split, batch_size, fn, seed=split_seed, companion_dir=sets, **common, **extra)

    train_features, unlabeled_features = features or (None, None)
    labeled = loader(data_cfg.train, labeled_bs, seed, train_features)
    unlabeled = None
    if unlabeled_bs:
        unlabeled = loader(data_cfg.unlabeled, unlabeled_bs, seed + 1, unlabeled_features, infinite=True)
    return labeled, unlabeled


def build_eval_loader(data_cfg, pipeline: PipelineConfig, split_dir: str, rank: int, world_size: int,
                      num_workers: int | None = None) -> ShardLoader:
    """Every sample exactly once across ranks, identity view, in stored order."""
    workers = data_cfg.num_workers if num_workers is None else num_workers
    return make_loader(split_dir, data_cfg.eval_batch_size, map_fn(pipeline, 0, False), rank=rank,
                       world_size=world_size, num_workers=workers, seed=0, shuffle=False, drop_last=False,
                       cache_dir=data_cfg.cache_dir, remote=data_cfg.remote)


def with_depth(pipeline: PipelineConfig, needs_depth: bool) -> PipelineConfig:
    """The pipeline with depth switched on when the model reads it."""
    return replace(pipeline, depth=pipeline.depth or needs_depth)
