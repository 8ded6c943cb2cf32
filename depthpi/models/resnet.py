"""ResNet-18/34/50/101 backbones whose state dicts match torchvision's (§4.1.2).

Parameter and buffer names follow torchvision (no ``fc``), so ``load_backbone_state`` loads
a torchvision ImageNet file or the backbone of one of our own checkpoints, adapting conv1 to
the model's input channels. Options: ``width``, ``in_chans``, ``output_stride=16`` (layer4
dilated, DeepLab/torchvision's way), ``partial_conv`` (up to layer2, §4.2.3) and ``layers``
(some stages only, for the teacher's branches and trunk).

Blocks return their pre-activation (after the residual addition, before the final ReLU);
the stage loop applies the ReLU and collects requested taps, so features are read without
forward hooks. docs/design.md ("Models: parameter names and options") has the details and
the reading of §4.1.2's dilation.
"""
from __future__ import annotations

import logging
from abc import ABCMeta, abstractmethod
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from depthpi.models.partial_conv import PartialConv2d, apply_conv, masked_max_pool, mask_from_depth
from depthpi.models.taps import LAYER_DEPTHS
from depthpi.validation import Choice

log = logging.getLogger(__name__)

STEM = 0  # stage index of conv1/bn1/relu/maxpool; 1..4 are layer1..layer4


def _conv(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1, partial: bool = False) -> nn.Conv2d:
    cls = PartialConv2d if partial else nn.Conv2d
    return cls(cin, cout, k, stride=stride, padding=dilation * (k // 2), dilation=dilation, bias=False)


class _Block(nn.Module, metaclass=ABCMeta):
    """Shared residual logic; subclasses define their (conv, bn) pairs."""

    expansion = 1

    @abstractmethod
    def _pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """The block's (conv, BatchNorm) pairs in forward order."""

    def forward_pre(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        """Block output before its final ReLU.

        Args:
            x: (B, C_in, H, W) block input. mask: (B, 1, H, W) validity or None.

        Returns:
            (pre, mask): pre (B, C_out, H', W'); mask (B, 1, H', W') or None.
        """
        out, out_mask = x, mask
        pairs = self._pairs()
        for i, (conv, bn) in enumerate(pairs):
            out, out_mask = apply_conv(conv, out, out_mask)
            out = bn(out)
            if i < len(pairs) - 1:
                out = F.relu(out, inplace=True)
        identity, id_mask = x, mask
        if self.downsample is not None:
            identity, id_mask = apply_conv(self.downsample[0], x, mask)
            identity = self.downsample[1](identity)
        if out_mask is not None and id_mask is not None:
            out_mask = torch.maximum(out_mask, id_mask)
        return out + identity, out_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.forward_pre(x)[0])


class BasicBlock(_Block):
    """Two 3×3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, first_dilation: int, dilation: int, partial: bool):
        super().__init__()
        self.conv1 = _conv(cin, planes, 3, stride, first_dilation, partial)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, 1, dilation, partial)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(cin, planes, stride, partial)

    def _pairs(self):
        return [(self.conv1, self.bn1), (self.conv2, self.bn2)]


class Bottleneck(_Block):
    """1×1 → 3×3 (strided, as torchvision's v1.5) → 1×1 ×4 (ResNet-50/101)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, first_dilation: int, dilation: int, partial: bool):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = _conv(cin, planes, 1, partial=partial)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride, first_dilation, partial)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, out, 1, partial=partial)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = _downsample(cin, out, stride, partial)

    def _pairs(self):
        return [(self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)]


def _downsample(cin: int, cout: int, stride: int, partial: bool) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv(cin, cout, 1, stride, partial=partial), nn.BatchNorm2d(cout))


Arch = Choice("Arch", "resnet18 resnet34 resnet50 resnet101")


ARCHS: dict[Arch, type[_Block]] = {
    Arch.resnet18: BasicBlock, Arch.resnet34: BasicBlock, Arch.resnet50: Bottleneck, Arch.resnet101: Bottleneck,
}


def scaled(channels: int, width: float) -> int:
    """``channels · width`` rounded, at least 1."""
    return max(1, int(round(channels * width)))


class ResNet(nn.Module):
    """ResNet backbone (no pooling, no fc) with torchvision parameter names.

    Args:
        arch: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``.
        width: channel multiplier (> 0); stem has ``round(64·width)`` channels.
        in_chans: input channels, 1 (depth), 3 (RGB) or 4 (RGB-D).
        output_stride: 32, or 16 (layer4 dilated instead of strided).
        partial_conv: partial convolutions up to the end of layer2 (needs the stem).
        stages: stage indices to build, a contiguous range of 0 (stem) .. 4 (layer4).
    """

    def __init__(self, arch: str = "resnet50", width: float = 1.0, in_chans: int = 3, output_stride: int = 16,
                 partial_conv: bool = False, stages: tuple[int, ...] = (0, 1, 2, 3, 4)):
        super().__init__()
        _validate(arch, width, in_chans, output_stride, stages, partial_conv)
        self.arch, self.width, self.in_chans, self.stages = arch, width, in_chans, tuple(stages)
        block = ARCHS[arch]
        stem = scaled(64, width)
        if STEM in stages:
            self.conv1 = PartialConv2d(in_chans, stem, 7, 2, 3, bias=False) if partial_conv else \
                nn.Conv2d(in_chans, stem, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.feature_info = [dict(num_chs=stem, reduction=2, module="relu")]
        self._build_layers(block, stem, output_stride, partial_conv)
        self.feature_info = [f for f, s in zip(self.feature_info, range(5)) if s in stages]
        _init_weights(self)

    def _build_layers(self, block: type[_Block], cin: int, output_stride: int, partial: bool) -> None:
        reduction, dilation = 4, 1
        for i, depth in enumerate(LAYER_DEPTHS[self.arch], start=1):
            stride = 1 if i == 1 else 2
            first_dilation = dilation
            if output_stride == 16 and i == 4:
                stride, dilation = 1, dilation * 2
            reduction *= stride
            planes = scaled(64 * 2 ** (i - 1), self.width)
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, planes, stride if j == 0 else 1,
                                    first_dilation if j == 0 else dilation, dilation, partial and i <= 2))
                cin = planes * block.expansion
            if i in self.stages:
                self.add_module(f"layer{i}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=cin, reduction=reduction, module=f"layer{i}"))
        self.num_features = cin

    @property
    def out_channels(self) -> int:
        """Channels of the last built stage's output."""
        return self.feature_info[-1]["num_chs"]

    @property
    def partial(self) -> bool:
        return STEM in self.stages and isinstance(self.conv1, PartialConv2d)

    def forward_stem(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        """conv1 → bn1 → relu → maxpool. Returns (x (B, C, H/4, W/4), mask or None)."""
        x, mask = apply_conv(self.conv1, x, mask)
        x = self.relu(self.bn1(x))
        return masked_max_pool(self.maxpool, x, mask)

    def forward_taps(self, x: torch.Tensor, taps: dict[str, list[str]] | None = None,
                     features: dict[str, torch.Tensor] | None = None,
                     mask: torch.Tensor | None = None, stop_after: int | None = None) -> torch.Tensor:
        """Run the built stages, storing requested block outputs.

        Args:
            x: (B, in_chans, N, N) input if the stem is built, else the previous stage's
                output (B, C, h, w).
            taps: canonical path (``"layer3.5.pre_relu"``) → names to store it under.
            features: dict that receives the requested taps.
            mask: (B, 1, N, N) validity for partial convolutions; default: depth != 0.
            stop_after: return as soon as ``features`` holds this many maps (the blocks
                after the last requested tap are not run).

        Returns:
            (B, out_channels, h, w) output of the last built stage (or of the block where
            it stopped).
        """
        taps = taps or {}
        features = {} if features is None else features
        if STEM in self.stages:
            if self.partial and mask is None:
                mask = mask_from_depth(x)
            mask = mask if self.partial else None
            x, mask = self.forward_stem(x, mask)
        for i in (s for s in self.stages if s != STEM):
            mask = mask if i <= 2 else None  # partial convolutions end with layer2
            for j, block in enumerate(getattr(self, f"layer{i}")):
                pre, mask = block.forward_pre(x, mask)
                x = F.relu(pre)
                for kind, value in (("pre_relu", pre), ("post_relu", x)):
                    for name in taps.get(f"layer{i}.{j}.{kind}", ()):
                        features[name] = value
                if stop_after is not None and len(features) >= stop_after:
                    return x
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, N, N) → (B, out_channels, h, w)."""
        return self.forward_taps(x)


def _validate(arch, width, in_chans, output_stride, stages, partial_conv) -> None:
    """The constructor's invariants (a user's values are checked by ``ModelConfig``)."""
    assert arch in ARCHS and width > 0 and in_chans in (1, 3, 4) and output_stride in (16, 32), \
        (arch, width, in_chans, output_stride)
    stages = tuple(stages)
    assert stages and stages == tuple(range(stages[0], stages[-1] + 1)) and set(stages) <= {0, 1, 2, 3, 4}, stages
    # partial convolutions derive their validity mask from a depth input, in the stem
    assert not partial_conv or (STEM in stages and in_chans == 1), (in_chans, stages)


def _init_weights(model: nn.Module) -> None:
    """He (fan_out) init for convolutions, BN to identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class LoadReport(NamedTuple):
    """Keys of a weight load: ``missing`` (model keys left as they were) and
    ``unexpected`` (file keys not used, e.g. torchvision's ``fc.*``)."""

    missing: list[str]
    unexpected: list[str]


def adapt_conv1(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a (C, c_src, k, k) stem kernel to ``in_chans`` input channels.

    To 1 channel: mean over the source channels (an RGB kernel for depth, §5.3; §4.2.1 gives the 1-channel shape).
    Otherwise: tile the source channels and rescale by c_src / in_chans (1→3 is ×3/3,
    3→4 repeats R), so an input equal on every channel gives the same response.
    """
    c_src = weight.shape[1]
    if c_src == in_chans:
        return weight
    if in_chans == 1:
        return weight.mean(dim=1, keepdim=True)
    reps = -(-in_chans // c_src)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (c_src / in_chans)


def load_backbone_state(model: ResNet, state: dict[str, torch.Tensor], source: str,
                        prefix: str = "") -> LoadReport:
    """Load backbone weights from a state dict into ``model`` (non-strict, reported).

    Args:
        model: the backbone (possibly only some stages).
        state: state dict whose backbone keys start with ``prefix``.
        source: file name used in messages.
        prefix: e.g. ``"backbone."`` for a PoseNet checkpoint; other keys are unexpected.

    Raises:
        ValueError: a key's shape does not fit, naming the key, both shapes and the source.
    """
    own = model.state_dict()
    used, unexpected = {}, []
    for key, value in state.items():
        name = key[len(prefix):] if key.startswith(prefix) else None
        if name not in own:
            unexpected.append(key)
            continue
        if name == "conv1.weight":
            value = adapt_conv1(value, model.in_chans)
        if value.shape != own[name].shape:
            raise ValueError(f"{source}: key {key!r} has shape {tuple(value.shape)}, the model expects "
                             f"{tuple(own[name].shape)} (arch {model.arch}, width {model.width})")
        used[name] = value
    missing = model.load_state_dict(used, strict=False).missing_keys
    log.info("%s: loaded %d tensors, %d missing, %d unused (%s)", source, len(used), len(missing),
             len(unexpected), ", ".join(unexpected[:4]) + (" …" if len(unexpected) > 4 else ""))
    return LoadReport(list(missing), unexpected)
