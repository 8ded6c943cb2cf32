"""Procedural colours and textures: HSV colours of skin, clothes and rooms; wall and floor textures.

Textures are uint8 RGB images whose pixels (texels) cover a fixed size on the plane
(``texel``, mm): walls 20 mm (row 0 at the top), the floor 10 mm.
"""
from __future__ import annotations

import colorsys

import cv2
import numpy as np


def hsv(h: float, s: float, v: float) -> np.ndarray:
    """(3,) float32 RGB in [0, 1] of hue ``h`` (turns, wrapped), saturation ``s`` and value ``v``."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


def texture_wall(rng: np.random.Generator, width: float, height: float, texel: float = 20.0) -> np.ndarray:
    """A (height/texel, width/texel, 3) uint8 wall: tinted paint, doors, posters, shelves, a skirting board."""
    h, w = int(height / texel), int(width / texel)
    base = hsv(rng.uniform(), rng.uniform(0.03, 0.35), rng.uniform(0.45, 0.95))
    img = np.ones((h, w, 3), np.float32) * base
    low = cv2.resize(rng.normal(0, 1, (3, 8)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    img *= (1 + 0.07 * low)[..., None]
    for _ in range(rng.integers(3, 9)):  # doors, posters, cabinets, windows, shelves
        kind = rng.integers(3)
        bw = rng.uniform(400, 1800) / texel
        bh = (rng.uniform(1800, 2200) if kind == 0 else rng.uniform(300, 1400)) / texel
        x = rng.uniform(0, w - bw)
        y = h - bh if kind != 1 else rng.uniform(0.1 * h, h - bh - 0.1 * h)
        colour = hsv(rng.uniform(), rng.uniform(0.05, 0.9), rng.uniform(0.1, 0.95))
        p0, p1 = (int(x), int(max(y, 0))), (int(x + bw), int(min(y + bh, h - 1)))
        cv2.rectangle(img, p0, p1, colour.tolist(), -1)
        if kind == 1 and rng.uniform() < 0.6:  # poster with a picture: a few colour bands
            for k in range(rng.integers(2, 5)):
                cv2.rectangle(img, (p0[0] + 2, p0[1] + 2 + k * (p1[1] - p0[1]) // 5),
                              (p1[0] - 2, p0[1] + (k + 1) * (p1[1] - p0[1]) // 5),
                              hsv(rng.uniform(), rng.uniform(0.3, 1), rng.uniform(0.2, 1)).tolist(), -1)
        cv2.rectangle(img, p0, p1, (base * 0.45).tolist(), 1)
    board = max(2, int(rng.uniform(60, 120) / texel))
    img[h - board:] = hsv(rng.uniform(), rng.uniform(0, 0.5), rng.uniform(0.1, 0.8))
    img *= 1 + rng.normal(0, 0.025, (h, w, 1)).astype(np.float32)
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def texture_floor(rng: np.random.Generator, size: float = 4800.0, texel: float = 10.0) -> np.ndarray:
    """A (size/texel, size/texel, 3) uint8 floor tile (wrapped when sampled): tiles, planks or carpet."""
    n = int(size / texel)
    kind = rng.integers(3)
    c1 = hsv(rng.uniform(), rng.uniform(0.05, 0.6), rng.uniform(0.25, 0.9))
    c2 = hsv(rng.uniform(), rng.uniform(0.05, 0.6), rng.uniform(0.15, 0.9))
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    if kind == 0:  # tiles: checker with grout
        tile = size / rng.choice([8, 10, 12, 16])
        t = tile / texel
        checker = ((xx // t + yy // t) % 2)[..., None]
        img = c1 * (1 - checker) + c2 * checker
        grout = ((xx % t) < 1.5) | ((yy % t) < 1.5)
        img[grout] = c1 * 0.5 + 0.3
    elif kind == 1:  # planks
        width = n / rng.choice([16, 20, 24, 30])
        board = (yy // width).astype(np.int64)
        shift = (board * 37 % 11) * n / 11
        length = n / 3
        plank = board * 7 + ((xx + shift) // length).astype(np.int64)
        shades = rng.uniform(0.75, 1.2, plank.max() + 1).astype(np.float32)
        img = c1 * shades[plank][..., None]
        grain = cv2.resize(rng.normal(0, 1, (n, 16)).astype(np.float32), (n, n))
        img *= (1 + 0.06 * grain)[..., None]
        img[((yy % width) < 1.2) | (((xx + shift) % length) < 1.2)] *= 0.55
    else:  # carpet / concrete: coloured noise at two scales
        img = np.ones((n, n, 3), np.float32) * c1
        low = cv2.resize(rng.normal(0, 1, (12, 12)).astype(np.float32), (n, n), interpolation=cv2.INTER_CUBIC)
        img *= (1 + 0.1 * low)[..., None]
        img *= 1 + rng.normal(0, 0.08, (n, n, 1)).astype(np.float32)
    return np.clip(img * 255, 0, 255).astype(np.uint8)
