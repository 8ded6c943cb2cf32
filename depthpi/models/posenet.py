"""Pose models: the baseline (§4.1.2), the RGB-D teacher (§4.2.1), their config and factory.

Both return a ``PoseOutput``: root-relative joints in mm and the feature taps asked for by
name (``depthpi.models.taps``), collected in the forward pass without hooks. Parameter
names let a baseline's weights load into either teacher branch and the trunk.

Fusion (§4.2.1): concat of both layer2 outputs (2C) → 1×1 conv without bias → C →
BatchNorm → ReLU (the thesis names only the conv). docs/design.md ("Models: parameter
names and options", "Teacher (§4.2.1)") has the names and the reasons.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from depthpi.models.head import VolumetricHead
from depthpi.models.resnet import Arch, ResNet, load_backbone_state
from depthpi.models.taps import FUSION, group_taps
from depthpi.validation import Choice, check
from depthpi.weights import load_any_weights, load_weights

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


ModelKind = Choice("ModelKind", "baseline teacher")
ModelInput = Choice("ModelInput", "rgb depth")
Init = Choice("Init", "standard none checkpoint")


# ModelConfig fields that shape the weights (the others say how they are initialised).
ARCHITECTURE_FIELDS = ("kind", "input", "arch", "width", "depth_bins", "cube_mm", "num_joints", "root_index",
                       "output_stride", "partial_conv")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and initialisation of a pose model.

    Attributes:
        kind: ``baseline`` (one ResNet, §4.1.2) or ``teacher`` (RGB + depth branches, §4.2.1).
        input: baseline input, ``rgb`` (3 channels) or ``depth`` (1 channel); ignored by a teacher.
        arch: ``resnet18``, ``resnet34``, ``resnet50`` (thesis) or ``resnet101``.
        width: channel multiplier (1.0 thesis; 0.125 for CPU demos and tests).
        depth_bins: D, heatmap bins along z.
        cube_mm: edge of the prediction cube in mm (eq. 4.10).
        num_joints: J.
        root_index: joint made the origin (pelvis = 0).
        output_stride: 16 (layer4 dilated, 257 → 17×17) or 32.
        partial_conv: partial convolutions up to the end of layer2 of the depth network
            (baseline depth or the teacher's depth branch, §4.2.3).
        init: ``standard`` (ImageNet file ``imagenet_path`` for every backbone part),
            ``checkpoint`` (``init_checkpoint``: a baseline of either input, or a whole
            teacher for a teacher), or ``none`` (random, He-initialised). ``depth_branch_checkpoint``
            is loaded whenever it is set, whatever ``init`` says.
            Head and fusion are He-initialised unless a checkpoint provides them.
        imagenet_path: local torchvision ResNet state dict (nothing is downloaded).
        init_checkpoint: our exported weights (Tables 6.1 and 6.8: init from 1.2 / 2.1).
        depth_branch_checkpoint: teacher only: a depth baseline whose backbone then
            initialises the depth branch after ``init`` (Table 6.3, model 3.2).
    """

    kind: ModelKind = ModelKind.baseline
    input: ModelInput = ModelInput.rgb
    arch: Arch = Arch.resnet50
    width: float = 1.0
    depth_bins: int = 32
    cube_mm: float = 2000.0
    num_joints: int = 17
    root_index: int = 0
    output_stride: int = 16
    partial_conv: bool = False
    init: Init = Init.standard
    imagenet_path: str | None = None
    init_checkpoint: str | None = None
    depth_branch_checkpoint: str | None = None

    def __post_init__(self):
        """ConfigError naming the first field with a bad value (kind, input, arch and init are
        Choices that OmegaConf checks). ``imagenet_path`` is checked by ``build_model``: the
        defaults (init='standard' without a file) must construct, as config loading builds
        them before merging YAML."""
        check(self.width > 0, "width", "> 0", self.width)
        check(self.depth_bins >= 1, "depth_bins", ">= 1", self.depth_bins)
        check(self.cube_mm > 0, "cube_mm", "> 0", self.cube_mm)
        check(self.num_joints >= 1, "num_joints", ">= 1", self.num_joints)
        check(0 <= self.root_index < self.num_joints, "root_index", f"in 0..{self.num_joints - 1}", self.root_index)
        check(self.output_stride in (16, 32), "output_stride", "16 or 32", self.output_stride)
        check(not self.partial_conv or needs_depth(self), "partial_conv",
              "false unless the model has a depth network (input=depth or kind=teacher)", self.partial_conv)
        check(self.init != Init.checkpoint or bool(self.init_checkpoint), "init_checkpoint",
              "a weights file when init=checkpoint", self.init_checkpoint)
        check(self.depth_branch_checkpoint is None or self.kind == ModelKind.teacher, "depth_branch_checkpoint",
              "unset unless kind=teacher", self.depth_branch_checkpoint)


class PoseOutput(NamedTuple):
    """What a pose model returns.

    Attributes:
        joints: (B, J, 3) float32 mm, camera axes, root-relative; None from a forward
            with ``head=False``.
        features: requested tap name → (B, C, h, w) feature map (graph kept).
    """

    joints: torch.Tensor | None
    features: dict[str, torch.Tensor]


def _as_tuple(taps) -> tuple[str, ...]:
    return (taps,) if isinstance(taps, str) else tuple(taps)


def _stop_after(taps: tuple[str, ...], head: bool) -> int | None:
    """How many maps to collect before the forward may stop (None: run to the head)."""
    if head:
        return None
    if not taps:
        raise ValueError("head=False returns only feature taps: name at least one")
    return len(set(taps))


class Normalize(nn.Module):
    """RGB in [0, 1] → ImageNet-normalised, per channel (what the backbone's weights expect).

    The model owns its input normalisation, as timm's models declare theirs: callers pass
    plain RGB in [0, 1]. The buffers are not part of the state dict.
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → (B, 3, H, W) normalised, same memory format."""
        return (rgb - self.mean) / self.std


class PoseNet(nn.Module):
    """Baseline: ResNet backbone (layer4 dilated) + volumetric head (§4.1.2).

    Args:
        cfg: the model config; ``cfg.input`` picks 3 (RGB) or 1 (depth) input channels.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.arch = cfg.arch
        in_chans = 1 if cfg.input == ModelInput.depth else 3
        self.normalize = nn.Identity() if cfg.input == ModelInput.depth else Normalize()
        self.backbone = ResNet(cfg.arch, cfg.width, in_chans, cfg.output_stride, cfg.partial_conv)
        self.head = VolumetricHead(self.backbone.out_channels, cfg.num_joints, cfg.depth_bins, cfg.cube_mm,
                                   cfg.root_index)

    def forward(self, x: torch.Tensor, depth: torch.Tensor | None = None, taps=(), head: bool = True) -> PoseOutput:
        """Args:
            x: (B, 3, N, N) RGB in [0, 1] (normalised here), or (B, 1, N, N) depth in
                [0, 1] (exp(−metres), 0 = invalid) for a depth baseline.
            depth: must be None (a baseline has one input).
            taps: tap names (``"block13.pre_relu"``, ``"layer3.5.post_relu"``).
            head: False stops after the last requested tap and returns no joints (a
                teacher queried for its features only).
        """
        if depth is not None:
            raise TypeError("PoseNet takes one input: pass the depth map as x for a depth baseline")
        taps = _as_tuple(taps)
        stop_after = _stop_after(taps, head)
        groups = group_taps(taps, self.arch)
        features: dict[str, torch.Tensor] = {}
        feat = self.backbone.forward_taps(self.normalize(x), groups.get("", {}), features, stop_after=stop_after)
        return PoseOutput(self.head(feat) if head else None, features)


class Fusion(nn.Module):
    """concat(rgb, depth) (2C) → 1×1 conv → BN → ReLU → C channels (§4.2.1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) ×2 → (B, C, h, w)."""
        return self.relu(self.bn(self.conv(torch.cat((rgb, depth), dim=1))))


class RGBDTeacher(nn.Module):
    """Two-branch RGB-D teacher: stems + layer1 + layer2 per modality, fusion, shared trunk.

    Args:
        cfg: the model config (``cfg.partial_conv`` applies to the depth branch).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.arch = cfg.arch
        branch = dict(arch=cfg.arch, width=cfg.width, output_stride=cfg.output_stride, stages=(0, 1, 2))
        self.normalize = Normalize()
        self.rgb = ResNet(in_chans=3, **branch)
        self.depth = ResNet(in_chans=1, partial_conv=cfg.partial_conv, **branch)
        self.fusion = Fusion(self.rgb.out_channels)
        self.trunk = ResNet(cfg.arch, cfg.width, 3, cfg.output_stride, stages=(3, 4))
        self.head = VolumetricHead(self.trunk.out_channels, cfg.num_joints, cfg.depth_bins, cfg.cube_mm,
                                   cfg.root_index)

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor | None = None, taps=(), head: bool = True) -> PoseOutput:
        """Args:
            rgb: (B, 3, N, N) RGB in [0, 1] (normalised here).
            depth: (B, 1, N, N) depth in [0, 1] (exp(−metres), 0 = invalid).
            taps: tap names; branch blocks need ``rgb.``/``depth.``, trunk blocks none, or ``fusion``.
            head: False stops after the last requested tap and returns no joints (the
                online teacher of a student: block 13 skips layer4 and the head).
        """
        if depth is None:
            raise TypeError("RGBDTeacher needs both inputs: model(rgb, depth)")
        taps = _as_tuple(taps)
        stop_after = _stop_after(taps, head)
        groups = group_taps(taps, self.arch, teacher=True)
        features: dict[str, torch.Tensor] = {}

        def done() -> bool:
            return stop_after is not None and len(features) >= stop_after

        f_rgb = self.rgb.forward_taps(self.normalize(rgb), groups.get("rgb", {}), features)
        if not groups.get("depth") and done():  # an RGB-branch tap needs no depth branch
            return PoseOutput(None, features)
        f_depth = self.depth.forward_taps(depth, groups.get("depth", {}), features)
        fused = self.fusion(f_rgb, f_depth)
        for name in groups.get(FUSION, {}).get("", ()):
            features[name] = fused
        if done():
            return PoseOutput(None, features)
        feat = self.trunk.forward_taps(fused, groups.get("", {}), features, stop_after=stop_after)
        return PoseOutput(self.head(feat) if head else None, features)


class Frozen(nn.Module):
    """A model that stays in eval mode with no trainable parameters (the frozen teacher).

    ``train()`` is a no-op and ``forward`` runs under ``torch.no_grad``. The wrapped
    model's state-dict keys carry a ``module.`` prefix: load weights before freezing.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        for p in module.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "Frozen":
        return super().train(False)

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.module(*args, **kwargs)


def freeze(model: nn.Module) -> Frozen:
    """Freeze ``model`` for use as a teacher: no gradients, eval mode for good."""
    return model if isinstance(model, Frozen) else Frozen(model)


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build and initialise the model ``cfg`` describes.

    Raises:
        ConfigError: init=standard without an ImageNet file (``model.imagenet_path``).
        ValueError: a weights file does not fit.
    """
    check(cfg.init != Init.standard or bool(cfg.imagenet_path) and Path(cfg.imagenet_path).is_file(),
          "model.imagenet_path", f"a local file holding torchvision's ImageNet {cfg.arch} state dict when "
          f"model.init=standard (README, Training), or model.init=none to train from scratch; no such file",
          cfg.imagenet_path)
    model = RGBDTeacher(cfg) if cfg.kind == ModelKind.teacher else PoseNet(cfg)
    if cfg.init == Init.standard:
        state = load_weights(cfg.imagenet_path)
        for part in _backbone_parts(model):
            _load_strict(part, state, cfg.imagenet_path, "")
    elif cfg.init == Init.checkpoint:
        _init_from_checkpoint(model, cfg.init_checkpoint)
    if cfg.depth_branch_checkpoint:  # whatever init says: a configured file is loaded or refused
        _load_strict(model.depth, load_weights(cfg.depth_branch_checkpoint), cfg.depth_branch_checkpoint,
                     "backbone.")
    return model


def load_model(cfg: ModelConfig, path: str | Path, directories: bool = False) -> nn.Module:
    """A model of ``cfg`` (built without init files) holding the weights of ``path``: a
    weights file, or with ``directories`` also a run or checkpoint directory
    (:func:`depthpi.weights.load_any_weights`; inference only: training records its inputs as
    files). The one place a trained model is rebuilt from its weights (the online teacher of a
    student, ``Predictor`` for eval/predict/export, and precompute).

    Raises:
        ValueError: the weights do not fit the architecture, naming kind, arch, width and bins.
    """
    model = build_model(replace(cfg, init=Init.none, init_checkpoint=None, depth_branch_checkpoint=None))
    state = load_any_weights(path) if directories else load_weights(path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
        problem = f"missing {missing[:5]}, unexpected {unexpected[:5]}" if missing or unexpected else None
    except RuntimeError as err:  # tensor shapes differ
        problem = " ".join(str(err).split())[:400]
    if problem:
        raise ValueError(f"{path}: does not fit the model (kind {cfg.kind}, input {cfg.input}, arch {cfg.arch}, "
                         f"width {cfg.width}, depth_bins {cfg.depth_bins}): {problem}")
    return model


def run_model(model: nn.Module, model_cfg, rgb: torch.Tensor | None = None, depth: torch.Tensor | None = None,
              taps: tuple[str, ...] = (), head: bool = True) -> PoseOutput:
    """Call a pose model with the inputs its config names; returns its PoseOutput.

    Args:
        rgb: (B, 3, N, N) RGB in [0, 1]; depth: (B, 1, N, N) in [0, 1]; each as the model reads it.
        head: False (features only) is passed on only when asked for, so a model that
            always runs its head still fits the plain call.
    """
    kwargs = {"taps": taps} if head else {"taps": taps, "head": False}
    if model_cfg.kind == ModelKind.teacher:
        return model(rgb, depth, **kwargs)
    return model(depth if model_cfg.input == ModelInput.depth else rgb, **kwargs)


def tap_features(model: nn.Module, model_cfg, rgb: torch.Tensor | None, depth: torch.Tensor | None,
                 tap: str) -> torch.Tensor:
    """(B, C, h, w) map of one tap; the forward stops there (no later blocks, no head)."""
    return run_model(model, model_cfg, rgb, depth, (tap,), head=False).features[tap]


def needs_depth(model_cfg) -> bool:
    """Whether a model of this config reads depth (teacher or depth baseline)."""
    return model_cfg.kind == ModelKind.teacher or model_cfg.input == ModelInput.depth


def needs_rgb(model_cfg) -> bool:
    """Whether a model of this config reads RGB (teacher or RGB baseline)."""
    return model_cfg.kind == ModelKind.teacher or model_cfg.input == ModelInput.rgb


def _backbone_parts(model: nn.Module) -> list[ResNet]:
    if isinstance(model, RGBDTeacher):
        return [model.rgb, model.depth, model.trunk]
    return [model.backbone]


def _load_strict(part: ResNet, state: dict, source: str, prefix: str) -> None:
    """Load a backbone part; every one of its tensors must come from the file."""
    report = load_backbone_state(part, state, source, prefix)
    if report.missing:
        raise ValueError(f"{source}: has no tensors for {len(report.missing)} keys under prefix {prefix!r} "
                         f"(e.g. {report.missing[:3]}); is it the right arch/kind of weights?")


def _init_from_checkpoint(model: nn.Module, path: str) -> None:
    """Init from our weights: a whole teacher, or a baseline (either input) for any model.

    A baseline's backbone initialises every backbone part (conv1 adapted to each
    part's input) and its head is taken when it fits; a teacher file loads as a whole.
    """
    state = load_weights(path)
    if isinstance(model, RGBDTeacher) and "rgb.conv1.weight" in state:
        model.load_state_dict(state)
        return
    for part in _backbone_parts(model):
        _load_strict(part, state, path, "backbone.")
    head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    own = model.head.state_dict()
    if head.keys() == own.keys() and all(head[k].shape == own[k].shape for k in own):
        model.head.load_state_dict(head)
    else:
        log.info("%s: head not loaded (absent or of another shape); it keeps its He init", path)
