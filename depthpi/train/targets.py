"""Training targets built on the training device from joint coordinates.

The keypoint attention map of eq. 4.26 weights the distillation loss (model 8.3). It is
built here, in the training step, from the batch's ``joints2d``: it costs the data workers
nothing (they would spend ~90 µs per 257×257 sample on it). The Gaussian is separable and
area resizing is linear and separable, so resizing each 1-D profile and summing outer
products equals building the N×N map and resizing it — without ever building it.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=16)
def area_matrix(size: int, out_size: int) -> np.ndarray:
    """(out_size, size) float64: OpenCV's INTER_AREA downscaling of a 1-D profile as a matrix.

    Output cell i averages the input interval [i·s, (i+1)·s), s = size / out_size, each
    input pixel weighted by the length of its overlap with the interval.
    """
    if not 0 < out_size <= size:
        raise ValueError(f"area_matrix: expected 0 < out_size <= size, got {out_size}, {size}")
    scale = size / out_size
    edges = np.arange(out_size + 1) * scale
    pixels = np.arange(size)
    overlap = np.clip(np.minimum(edges[1:, None], pixels[None] + 1) - np.maximum(edges[:-1, None], pixels[None]), 0, None)
    return overlap / scale


def keypoint_attention(joints2d: torch.Tensor, valid: torch.Tensor, size: int, out_size: int) -> torch.Tensor:
    """Eq. 4.26 for a batch, area-resized to the tap's grid and normalised to [0, 1] per sample.

    Args:
        joints2d: (B, J, 2) pixels in the N×N input (N = ``size``).
        valid: (B, J) bool; a sample without valid joints gets a map of ones.
        out_size: h = w of the tapped feature map.
    Returns:
        (B, out_size, out_size) float32 on the joints' device.
    """
    device = joints2d.device
    grid = torch.arange(size, dtype=torch.float32, device=device)
    points = joints2d.float()
    weight = valid.to(torch.float32).unsqueeze(-1)  # invalid joints contribute nothing
    gx = torch.exp(-(grid - points[..., :1]) ** 2 / 5.0) * weight  # (B, J, N) over u
    gy = torch.exp(-(grid - points[..., 1:]) ** 2 / 5.0) * weight  # (B, J, N) over v
    area = torch.as_tensor(area_matrix(size, out_size), dtype=torch.float32, device=device)
    small = torch.einsum("bjv,bju->bvu", gy @ area.T, gx @ area.T)  # separable: Σ_j outer products
    peak = small.amax(dim=(1, 2), keepdim=True)
    return torch.where(peak > 0, small / peak.clamp_min(1e-30), torch.ones_like(small))
