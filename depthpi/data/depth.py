"""Depth maps as network input (thesis §5.1.2) and depth intrinsics (§5.1.1).

Eq. 5.3 as docs/design.md reads it (the printed conditions are swapped): with D in metres,
valid pixels map to exp(−D) and invalid ones (D < 0.1 m, the sensor's 0 included) to
0, "infinitely far". Eq. 5.4 (optional rectification) is implemented as its geometry
needs: a radial distance d becomes the z coordinate z = d / sqrt(1 + x̂² + ŷ²); the
printed exponent −1 would square the correction.
"""
from __future__ import annotations

import numpy as np

MIN_VALID_MM = 100.0
_EXP_TABLE = np.where(np.arange(65536) >= MIN_VALID_MM, np.exp(-np.arange(65536, dtype=np.float32) * np.float32(1e-3)),
                      np.float32(0.0)).astype(np.float32)  # eq. 5.3 for every uint16 depth in mm


def depth_to_input(depth_mm: np.ndarray, rectify_xy: tuple[np.ndarray, np.ndarray] | None = None
                   ) -> np.ndarray:
    """Map a depth image to the network's input range (eq. 5.3, optionally 5.4 first).

    Args:
        depth_mm: (H, W) uint16 or float depth in mm; 0 = invalid.
        rectify_xy: optional (x̂, ŷ), each (H, W), normalised image coordinates of the
            camera the depth image is seen in (``Camera.normalised_coordinates``); when
            given, radial distances are converted to z first (eq. 5.4).
    Returns:
        (H, W) float32 in [0, 1): exp(−metres) where valid, 0 where invalid.
    """
    if rectify_xy is None and depth_mm.dtype == np.uint16:
        return _EXP_TABLE[depth_mm]  # one table lookup per pixel instead of exp
    metres = depth_mm.astype(np.float32) * np.float32(1e-3)
    if rectify_xy is not None:
        x, y = rectify_xy
        metres = metres / np.sqrt(1.0 + x * x + y * y).astype(np.float32)
    valid = depth_mm >= MIN_VALID_MM
    return np.where(valid, np.exp(-metres), np.float32(0.0)).astype(np.float32)


def fit_intrinsics(points: np.ndarray, pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares pinhole intrinsics from 2D–3D pairs (eq. 5.1–5.2).

    Solves u = fx·x/z + cx and v = fy·y/z + cy separately (no skew, no distortion).

    Args:
        points: (M, 3) camera-space points, any unit (z > 0).
        pixels: (M, 2) their observed pixel positions.
    Returns:
        K (3, 3) and the RMS reprojection error in pixels.
    """
    points = np.asarray(points, np.float64)
    pixels = np.asarray(pixels, np.float64)
    keep = np.isfinite(points).all(1) & np.isfinite(pixels).all(1) & (points[:, 2] > 0)
    if keep.sum() < 3:
        raise ValueError(f"fit_intrinsics: need >= 3 finite pairs with z > 0, got {keep.sum()}")
    points, pixels = points[keep], pixels[keep]
    K = np.eye(3)
    for axis in (0, 1):
        A = np.stack([points[:, axis] / points[:, 2], np.ones(len(points))], axis=1)
        (focal, centre), *_ = np.linalg.lstsq(A, pixels[:, axis], rcond=None)
        K[axis, axis], K[axis, 2] = focal, centre
    projected = points[:, :2] / points[:, 2:3] @ K[:2, :2].T + K[:2, 2]
    rms = float(np.sqrt(np.mean(np.sum((projected - pixels) ** 2, axis=1))))
    return K, rms
