"""Rasterising and shading the body's primitives in a camera: exact ray casts into a z-buffer.

Each pixel of a crop casts an exact ray–primitive intersection (capsules and ellipsoids,
camera coordinates in mm, vectorised over the primitive's screen window in px) and a
**z-buffer** (z in mm; ``EMPTY_Z`` where nothing was hit) resolves occlusion between
body parts and with the room (so feet meet the floor correctly). Shading: Lambert with a
directional light and a hemispheric ambient term, hair/face regions on the head, a
print on the shirt front.
"""
from __future__ import annotations

import numpy as np

from depthpi.data.synthetic.body import Prims

EMPTY_Z = np.float32(1e12)  # z-buffer value (mm) of a pixel no surface covers


def _spheres(prims: Prims, K: np.ndarray, pad: float):
    """Projected bounding spheres: u, v, radius in pixels, each (n, 2)."""
    z = prims.ends[..., 2]
    u = K[0, 0] * prims.ends[..., 0] / z + K[0, 2]
    v = K[1, 1] * prims.ends[..., 1] / z + K[1, 2]
    r = prims.radius[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        rad = pad * K[0, 0] * r / np.where(z - r > 1, z - r, np.nan)
    return u, v, rad


def projected_box(prims: Prims, K: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) around the projected primitives."""
    u, v, rad = _spheres(prims, K, 1.0)
    return np.array([np.min(u - rad), np.min(v - rad), np.max(u + rad), np.max(v + rad)])


def rasterise(prims: Prims, K: np.ndarray, width: int, height: int, zbuf: np.ndarray):
    """Z-buffer the primitives (camera coordinates) into ``zbuf`` in place.

    Every pixel of a primitive's screen window casts the exact ray–capsule or
    ray–ellipsoid intersection; the nearest surface wins. Rays are (X, Y, 1) with X, Y
    the normalised image coordinates, so the ray parameter is z itself.
    Returns ids (h, w) int8 (−1: no body), X (1, w), Y (h, 1).
    """
    f32 = np.float32
    X = ((np.arange(width) - K[0, 2]) / K[0, 0]).astype(f32)[None, :]
    Y = ((np.arange(height) - K[1, 2]) / K[1, 1]).astype(f32)[:, None]
    rdrd = X * X + Y * Y + f32(1)
    ids = np.full((height, width), -1, np.int8)
    u, v, rad = _spheres(prims, K, 1.15)
    rad = rad + 1.5
    valid = np.all(np.isfinite(rad), 1)
    u0 = np.maximum(np.floor(np.min(u - rad, 1)), 0)
    u1 = np.minimum(np.ceil(np.max(u + rad, 1)) + 1, width)
    v0 = np.maximum(np.floor(np.min(v - rad, 1)), 0)
    v1 = np.minimum(np.ceil(np.max(v + rad, 1)) + 1, height)
    valid &= (u0 < u1) & (v0 < v1)
    wins = np.stack([v0, v1, u0, u1], 1)
    wins = np.where(valid[:, None], wins, 0).astype(int).tolist()
    ne = prims.ne
    # ellipsoids: camera point p ↦ unit-sphere coordinates M (p − c)
    M = np.transpose(prims.axes / prims.radii[:, None, :], (0, 2, 1))
    mc = np.einsum("kij,kj->ki", M, prims.ends[:ne, 0])
    ell_params = [(Mk.tolist(), mck.tolist(), float(mck @ mck - 1)) for Mk, mck in zip(M, mc)]
    # capsules
    A, B = prims.ends[ne:, 0], prims.ends[ne:, 1]
    axis = B - A
    length = np.linalg.norm(axis, axis=1)
    unit = axis / length[:, None]
    baoa = -np.sum(unit * A, 1)
    r2 = prims.radius[ne:] ** 2
    AA, BB = np.sum(A * A, 1), np.sum(B * B, 1)
    k0 = AA - baoa ** 2 - r2
    cap_params = list(zip(unit.tolist(), A.tolist(), B.tolist(), length.tolist(), baoa.tolist(), k0.tolist(),
                          (AA - r2).tolist(), (BB - r2).tolist()))
    for k in range(len(prims.names)):
        if not valid[k]:
            continue
        y0, y1, x0, x1 = wins[k]
        Xw, Yw, rr = X[:, x0:x1], Y[y0:y1], rdrd[y0:y1, x0:x1]
        if k < ne:
            (m0, m1, m2), (c0, c1, c2), cc = ell_params[k]
            a0 = m0[0] * Xw + (m0[1] * Yw + m0[2])
            a1 = m1[0] * Xw + (m1[1] * Yw + m1[2])
            a2 = m2[0] * Xw + (m2[1] * Yw + m2[2])
            aa = a0 * a0 + a1 * a1 + a2 * a2
            bb = a0 * c0 + a1 * c1 + a2 * c2
            h = bb * bb - aa * cc
            s = (bb - np.sqrt(np.maximum(h, 0))) / aa
            s[h < 0] = EMPTY_Z
        else:
            (ux, uy, uz), Ak, Bk, L, bo, kk0, cA, cB = cap_params[k - ne]
            bard = ux * Xw + (uy * Yw + uz)
            rdA = Ak[0] * Xw + (Ak[1] * Yw + Ak[2])
            k2 = np.maximum(rr - bard * bard, f32(1e-12))
            nk1 = rdA + bo * bard
            h = nk1 * nk1 - k2 * kk0
            miss = h < 0
            s = (nk1 - np.sqrt(np.maximum(h, 0))) / k2
            y = bo + s * bard
            on_cap = (y <= 0) | (y >= L)
            if on_cap.any():  # the ray meets the infinite cylinder beyond an end: try that end's sphere
                rdB = Bk[0] * Xw + (Bk[1] * Yw + Bk[2])
                end_a = y <= 0
                bc = np.where(end_a, rdA, rdB)
                hc = bc * bc - rr * np.where(end_a, f32(cA), f32(cB))
                s_cap = (bc - np.sqrt(np.maximum(hc, 0))) / rr
                s_cap[hc < 0] = EMPTY_Z
                np.copyto(s, s_cap, where=on_cap)
            s[miss] = EMPTY_Z
        zw = zbuf[y0:y1, x0:x1]
        closer = s < zw
        np.copyto(zw, s, where=closer)
        np.copyto(ids[y0:y1, x0:x1], np.int8(k), where=closer)
    return ids, X, Y


def shade(image: np.ndarray, prims: Prims, ids: np.ndarray, zbuf: np.ndarray, X, Y, colours: dict,
           light_cam: np.ndarray, up_cam: np.ndarray, ambient: float, diffuse: float, hair_line: float) -> None:
    """Lambert shading (directional light + hemispheric ambient) of the visible body pixels.

    Writes into ``image`` (uint8 RGB); the head gets hair and face regions and the chest
    a print on its front (cues of the facing direction).
    """
    rows, cols = np.nonzero(ids >= 0)
    if rows.size == 0:
        return
    k = ids[rows, cols].astype(np.intp)
    z = zbuf[rows, cols]
    P = np.stack([X[0, cols] * z, Y[rows, 0] * z, z], 1)
    ne = prims.ne
    base = np.array([colours[name] for name in prims.names], np.float32)[k]
    # capsules (all pixels first, ellipsoid pixels overwritten below)
    kc = np.maximum(k, ne)
    A = prims.ends[kc, 0]
    axis = prims.ends[kc, 1] - A
    q = P - A
    t = np.clip(np.einsum("ij,ij->i", q, axis) / np.einsum("ij,ij->i", axis, axis), 0, 1)
    normal = q - t[:, None] * axis
    for e in range(ne):
        sel = np.flatnonzero(k == e)
        if sel.size == 0:
            continue
        M = (prims.axes[e] / prims.radii[e]).T
        local = (P[sel] - prims.ends[e, 0]) @ M.T  # unit-sphere coordinates (lateral, forward, up)
        normal[sel] = local @ M
        if prims.names[e] == "head":
            hair = (local[:, 2] > hair_line) | (local[:, 1] < -0.25) | ((local[:, 2] > -0.1) & (local[:, 1] < 0.2))
            base[sel] = np.where(hair[:, None], colours["hair"], colours["skin"])
        elif prims.names[e] == "chest":
            front = (local[:, 1] > 0.55) & (np.abs(local[:, 0]) < 0.45) & (local[:, 2] > -0.3) & (local[:, 2] < 0.5)
            base[sel[front]] = colours["print"]
    normal /= np.sqrt(np.einsum("ij,ij->i", normal, normal))[:, None] + 1e-9
    light = ambient * (0.8 + 0.2 * (normal @ up_cam)) + diffuse * np.maximum(normal @ light_cam, 0)
    image[rows, cols] = np.clip(base * (255 * light)[:, None], 0, 255).astype(np.uint8)
