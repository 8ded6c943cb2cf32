"""Colour augmentation (thesis eq. 4.14–4.17), the one implementation, in torch.

Loader workers draw each view's colour parameters (``ViewParams.colour_vector``) and hand
over the crop without colour changes; the training step (and precompute, and a replayed
precomputed view) applies them here to a whole batch on the training device. One function
for every consumer means a stored teacher view and its replay for the student see the
same pixels by construction.
"""
from __future__ import annotations

import torch


def colour_augment(rgb: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, hue, saturation, in that order.

    Args:
        rgb: (B, 3, H, W) float intensities in [0, 1].
        params: (B, 4) float: brightness (added to [0, 1] intensities, eq. 4.14), contrast
            (scale about 0.5, eq. 4.15), hue (degrees, added, eq. 4.16), saturation (scale,
            clipped to [0, 1], eq. 4.17).
    Returns:
        (B, 3, H, W) float32 in [0, 1], in ``rgb``'s memory format.
    """
    p = params.to(device=rgb.device, dtype=torch.float32)[:, :, None, None]
    brightness, contrast, hue, saturation = p.unbind(1)  # each (B, 1, 1)
    x = ((rgb.float() + brightness[:, None] - 0.5) * contrast[:, None] + 0.5).clamp(0.0, 1.0)
    h, s, v = _rgb_to_hsv(x)
    h = torch.remainder(h + hue, 360.0)
    s = (s * saturation).clamp(0.0, 1.0)
    return _hsv_to_rgb(h, s, v)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) in [0, 1] → hue (B, H, W) degrees in [0, 360), saturation, value in [0, 1]."""
    r, g, b = x.unbind(1)
    value, argmax = x.max(dim=1)
    chroma = value - x.min(dim=1).values
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue_r = torch.remainder((g - b) / safe, 6.0)
    hue_g = (b - r) / safe + 2.0
    hue_b = (r - g) / safe + 4.0
    sector = torch.where(argmax == 0, hue_r, torch.where(argmax == 1, hue_g, hue_b))
    hue = torch.where(chroma > 0, sector * 60.0, torch.zeros_like(sector))
    saturation = torch.where(value > 0, chroma / torch.where(value > 0, value, torch.ones_like(value)),
                             torch.zeros_like(value))
    return hue, saturation, value


def _hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_rgb_to_hsv`: channel n ∈ (5, 3, 1) for (R, G, B) is
    V − V·S·clamp(min(k, 4 − k), 0, 1) with k = (n + H/60) mod 6."""
    n = torch.tensor([5.0, 3.0, 1.0], device=hue.device).view(1, 3, 1, 1)
    k = torch.remainder(n + hue[:, None] / 60.0, 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return value[:, None] * (1.0 - saturation[:, None] * ramp)
