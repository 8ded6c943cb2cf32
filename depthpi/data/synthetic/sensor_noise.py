"""What the sensors add to a clean render: RGB sensor noise and Kinect-like depth noise and invalid pixels.

Depth (uint16 mm, 0 = invalid): noise σ(z) = a + b·z² (z in m; default 1 mm +
1.425 mm·z², Khoshelham & Elberink's Kinect model), rounding to 1 mm. Invalid: the far
side of depth discontinuities (both directions) plus a 1-pixel IR shadow band left of
foreground edges, half of the near-side (mixed) edge pixels at random, anything outside
``depth_range`` (0.5–6 m: parts of the far walls drop out), random dropout blobs
(radius 1–4 px) and isolated pixels, and anything outside the sensor frame.

RGB: additive Gaussian noise (σ in 8-bit levels) from a fixed tile, of which each sample
takes a random window.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from depthpi.data.synthetic.config import SyntheticConfig


@lru_cache(maxsize=4)
def noise_tile(size: int, sigma: float) -> np.ndarray:
    """A fixed (size, size, 3) int16 tile of Gaussian noise; samples take random windows of it."""
    return np.round(np.random.default_rng(12345).standard_normal((size, size, 3)) * sigma).astype(np.int16)


def sensor_depth(rng: np.random.Generator, z: np.ndarray, inside: np.ndarray, cfg: SyntheticConfig) -> np.ndarray:
    """Noise-free depth ``z`` (h, w) float32 mm → Kinect-like (h, w) uint16 mm, 0 for invalid pixels.

    ``inside`` (h, w) bool marks pixels inside the sensor's frame; the others are invalid.
    """
    h, w = z.shape
    invalid = ~inside
    # depth discontinuities: the far side of each jump is invalid (flying pixels)
    thr = np.float32(40) + np.float32(0.03) * z
    left, right = z[:, :-1], z[:, 1:]
    jump_h = np.abs(right - left) > np.minimum(thr[:, :-1], thr[:, 1:])
    far_left = jump_h & (left > right)   # foreground on the right: IR shadow to the left
    invalid[:, :-1] |= far_left
    invalid[:, 1:] |= jump_h & (right > left)
    invalid[:, :-2] |= far_left[:, 1:]   # one more pixel of shadow band
    up, down = z[:-1], z[1:]
    jump_v = np.abs(down - up) > np.minimum(thr[:-1], thr[1:])
    invalid[:-1] |= jump_v & (up > down)
    invalid[1:] |= jump_v & (down > up)
    # mixed pixels on the near side of a jump: about half are dropped (ragged silhouettes)
    near_side = np.zeros((h, w), bool)
    near_side[:, :-1] |= jump_h & (left < right)
    near_side[:, 1:] |= jump_h & (right < left)
    near_side[:-1] |= jump_v & (up < down)
    near_side[1:] |= jump_v & (down < up)
    rows, cols = np.nonzero(near_side)
    drop = rng.random(rows.size) < 0.5
    invalid[rows[drop], cols[drop]] = True
    near, far = cfg.depth_range
    invalid |= (z < near) | (z > far)
    # dropouts: small blobs and isolated pixels
    blobs = np.zeros((h, w), np.uint8)
    for _ in range(rng.poisson(cfg.depth_dropout_blobs)):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        axes = rng.uniform(1, 4, 2)
        cv2.ellipse(blobs, (int(cx), int(cy)), (int(axes[0]), int(axes[1])), rng.uniform(0, 180), 0, 360, 1, -1)
    invalid |= blobs.astype(bool)
    invalid |= rng.random((h, w), np.float32) < cfg.depth_dropout_pixels
    a, b = cfg.depth_noise
    metres = z * np.float32(1e-3)
    sigma = np.float32(a) + np.float32(b) * metres * metres
    noisy = z + sigma * rng.standard_normal((h, w), np.float32)
    noisy = np.clip(noisy, 0, far)
    noisy[invalid] = 0
    return np.round(noisy).astype(np.uint16)
