"""Partial convolutions (Liu et al. 2018) for depth maps with invalid pixels (§4.2.3).

A partial convolution sees only the valid pixels of its window and rescales the
result by how many of them there were:

    out = W^T (X ⊙ M) · sum(1) / sum(M) + b   where the window holds a valid pixel,
    out = 0                                   elsewhere,
    M'  = 1 where the window holds a valid pixel, else 0.

Masks are single-channel ``(B, 1, H, W)`` float tensors of 0/1: every channel of a
feature map shares its spatial validity, so ``sum(1) / sum(M)`` over channels and
window reduces to ``k_h·k_w / window_sum``. BatchNorm and ReLU leave the mask alone.
``PartialConv2d`` subclasses ``nn.Conv2d``, so its parameters keep the standard names
(``conv1.weight``) and standard weights load unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mask_from_depth(depth: torch.Tensor) -> torch.Tensor:
    """Validity mask of a depth input.

    Args:
        depth: (B, 1, H, W) encoded depth, 0 = invalid (eq. 5.3).

    Returns:
        (B, 1, H, W) float mask, 1 where the depth is valid.
    """
    return (depth[:, :1] != 0).to(depth.dtype)


class PartialConv2d(nn.Conv2d):
    """``nn.Conv2d`` that also takes and returns a validity mask."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):  # type: ignore[override]
        """Args: x (B, C, H, W); mask (B, 1, H, W) 0/1 or None (all valid).

        Returns:
            (out, new_mask): out (B, C', H', W'), new_mask (B, 1, H', W') float32.
        """
        if mask is None:
            mask = torch.ones_like(x[:, :1])
        # Window counts and ratios in float32 even under autocast: 49/13 is not a bf16 number.
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            mask = mask.float()
            ones = torch.ones(1, 1, *self.kernel_size, device=x.device)
            window_sum = F.conv2d(mask, ones, None, self.stride, self.padding, self.dilation)
            new_mask = (window_sum > 0).float()
            ratio = (self.kernel_size[0] * self.kernel_size[1]) / window_sum.clamp(min=1.0) * new_mask
        out = F.conv2d(x * mask, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        out = out * ratio.to(out.dtype)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1).to(out.dtype) * new_mask.to(out.dtype)
        return out, new_mask


def apply_conv(conv: nn.Module, x: torch.Tensor, mask: torch.Tensor | None):
    """Run a standard or partial convolution; a standard one passes the mask through.

    A mask that reaches a standard convolution (past the partial part of a network)
    is dropped: returns ``(out, None)``.
    """
    if isinstance(conv, PartialConv2d):
        return conv(x, mask)
    return conv(x), None


def masked_max_pool(pool: nn.MaxPool2d, x: torch.Tensor, mask: torch.Tensor | None):
    """Max-pool that ignores invalid pixels; the new mask is the pooled mask.

    Invalid pixels are set to 0 before pooling: the input is post-ReLU (≥ 0), so a
    window with a valid pixel returns the maximum over its valid pixels.
    """
    if mask is None:
        return pool(x), None
    return pool(x * mask.to(x.dtype)), pool(mask)
