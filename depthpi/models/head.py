"""Volumetric heatmap head with soft-argmax (§4.1.2–4.1.3, eqs. 4.8–4.11).

A 3×3 convolution predicts J·D score channels on the (h, w) feature grid; they are
reshaped to J volumes of (D, h, w), normalised by a softmax over each whole volume
(eq. 4.8) and reduced to the expected voxel centre (soft-argmax, eq. 4.9) inside a
``cube_mm`` cube (eq. 4.10), then made root-relative (eq. 4.11).

Axes: x runs along the feature width (image right), y along its height (image down),
z along the D depth bins (away from the camera). Voxel k (1-based) of an axis with n
cells sits at its centre (k − 0.5)/n — the reading in docs/design.md of eq. 4.9, whose printed
(k − 1)/(n − 1) grid contradicts the "centres of each grid voxel" in the text.

Softmax and soft-argmax run in float32 even under bf16/fp16 autocast: a softmax over
17·17·32 ≈ 9k cells in bf16 would lose most of the probability mass' precision.
"""
from __future__ import annotations

import torch
from torch import nn


def voxel_centres(n: int, device=None) -> torch.Tensor:
    """(n,) float32 centres (k − 0.5)/n, k = 1..n, of a unit axis cut into n cells."""
    return (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n


def soft_argmax_3d(scores: torch.Tensor) -> torch.Tensor:
    """Expected voxel centre of each volume under its 3D softmax.

    Args:
        scores: (B, J, D, h, w) scores, any float dtype.

    Returns:
        (B, J, 3) float32 normalised coordinates in (0, 1): x along w, y along h, z along D.
    """
    b, j, d, h, w = scores.shape
    with torch.autocast(device_type=scores.device.type, enabled=False):
        prob = torch.softmax(scores.float().reshape(b, j, -1), dim=-1).reshape(b, j, d, h, w)
        px = prob.sum(dim=(2, 3))  # (B, J, w) marginal along x
        py = prob.sum(dim=(2, 4))  # (B, J, h)
        pz = prob.sum(dim=(3, 4))  # (B, J, D)
        x = px @ voxel_centres(w, scores.device)
        y = py @ voxel_centres(h, scores.device)
        z = pz @ voxel_centres(d, scores.device)
        return torch.stack((x, y, z), dim=-1)


class VolumetricHead(nn.Module):
    """3×3 conv → J volumes → soft-argmax → root-relative joints in mm.

    Args:
        in_chs: channels of the backbone's last feature map.
        num_joints: J.
        depth_bins: D, bins along z.
        cube_mm: edge of the prediction cube (thesis: 2000 mm).
        root_index: joint subtracted by ``forward`` (pelvis = 0 in our skeleton).
    """

    def __init__(self, in_chs: int, num_joints: int = 17, depth_bins: int = 32, cube_mm: float = 2000.0,
                 root_index: int = 0):
        super().__init__()
        if not 0 <= root_index < num_joints:
            raise ValueError(f"root_index {root_index}: expected 0..{num_joints - 1}")
        self.num_joints, self.depth_bins, self.cube_mm, self.root_index = num_joints, depth_bins, cube_mm, root_index
        self.conv = nn.Conv2d(in_chs, num_joints * depth_bins, 3, padding=1)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)

    def scores(self, feat: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) features → (B, J, D, h, w) scores (channel j·D + d)."""
        s = self.conv(feat)
        b, _, h, w = s.shape
        return s.reshape(b, self.num_joints, self.depth_bins, h, w)

    def absolute(self, feat: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) → (B, J, 3) float32 mm, in the cube (corner at 0), not root-relative."""
        return soft_argmax_3d(self.scores(feat)) * self.cube_mm

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) → joints: (B, J, 3) float32 mm, camera axes, root-relative (eq. 4.11)."""
        p = self.absolute(feat)
        return p - p[:, self.root_index: self.root_index + 1]
