"""The physical Kinect v2 sensors behind NTU RGB+D's camera setups, and the one PKU-MMD gets.

:func:`cluster_sensors` groups NTU's per-setup fits into sensors (complete linkage: every
two setups of a sensor have colour K's within :data:`SAME_SENSOR_RGB_PX` and depth K's
within :data:`SAME_SENSOR_DEPTH_PX` of each other over the central half of the frame, and
the same mirroring), refits each sensor's K on its setups' pooled pairs and reports the
residual a single pooled K would leave. :func:`depth_agreement_mm` scores a sensor for a
PKU-MMD view: the mean difference, capped at :data:`DEPTH_ERROR_CAP_MM`, between the depth
at the projected joints and their z.

Why the setups are grouped and how PKU's sensor is chosen: docs/datasets.md.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np

from depthpi.camera import Camera
from depthpi.data.converters.kinect import DEPTH_SIZE, RGB_SIZE, fit_kinect_intrinsics, kinect_reprojection_rms

SAME_SENSOR_RGB_PX = 8.0
SAME_SENSOR_DEPTH_PX = 3.0
DEPTH_ERROR_CAP_MM = 300.0
STREAMS = (("rgb", RGB_SIZE), ("depth", DEPTH_SIZE))


def ray_discrepancy_px(K_a: np.ndarray, K_b: np.ndarray, size: tuple[int, int]) -> float:
    """Largest distance (px) between where two intrinsics put the same ray, over the central
    half of a frame of ``size`` (width, height): the pixel ``q`` of K_a lands at
    ``K_b K_a⁻¹ q`` under K_b. The central half is where the skeleton pairs that fix the fits
    lie, so a principal point shift counts in full and a focal length's noise only half."""
    width, height = size
    lo, hi = np.array([width, height]) / 4.0, np.array([width, height]) * 3.0 / 4.0
    corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [lo[0], hi[1]], [hi[0], hi[1]]], np.float64)
    rays = Camera.from_intrinsics(K_a).image_to_camera(corners)
    moved = Camera.from_intrinsics(K_b).camera_to_image(rays)
    return float(np.linalg.norm(moved - corners, axis=1).max())   # the map is affine: extremes at corners


def setup_distance(fit_a: dict, fit_b: dict) -> float:
    """≤ 1 when two per-setup fits can be one sensor (module docstring), larger otherwise."""
    if bool(fit_a["mirrored"]) != bool(fit_b["mirrored"]):
        return float("inf")
    rgb = ray_discrepancy_px(np.asarray(fit_a["rgb_K"]), np.asarray(fit_b["rgb_K"]), RGB_SIZE)
    depth = ray_discrepancy_px(np.asarray(fit_a["depth_K"]), np.asarray(fit_b["depth_K"]), DEPTH_SIZE)
    return max(rgb / SAME_SENSOR_RGB_PX, depth / SAME_SENSOR_DEPTH_PX)


def group_setups(fits: dict[str, dict]) -> list[list[str]]:
    """Setups (with a successful fit) grouped by sensor, complete linkage; deterministic order."""
    names = sorted(s for s, fit in fits.items() if "error" not in fit)
    distance = {(a, b): setup_distance(fits[a], fits[b]) for a, b in combinations(names, 2)}
    groups = [[name] for name in names]

    def linkage(g: list[str], h: list[str]) -> float:
        return max(distance[tuple(sorted((a, b)))] for a in g for b in h)

    while len(groups) > 1:
        (i, j), best = min((((i, j), linkage(groups[i], groups[j])) for i, j in combinations(range(len(groups)), 2)),
                           key=lambda item: item[1])
        if best > 1.0:
            break
        groups[i] = sorted(groups[i] + groups[j])
        del groups[j]
    return sorted(groups)


def _fit_stream(pairs: list[tuple[np.ndarray, np.ndarray]], width: int) -> dict:
    points = np.concatenate([p for p, _ in pairs])
    pixels = np.concatenate([q for _, q in pairs])
    return fit_kinect_intrinsics(points, pixels, width)


def sensor_record(setups: list[str], pairs: dict[str, dict]) -> dict:
    """A sensor's K refitted on its setups' pooled pairs, with its residuals (px).

    Args:
        setups: the sensor's setups.
        pairs: setup → {"rgb": (points_m (M, 3), raw pixels (M, 2)), "depth": (...)}.
    """
    record: dict = {"setups": list(setups), "pairs": 0}
    for stream, size in STREAMS:
        fit = _fit_stream([pairs[s][stream] for s in setups], size[0])
        per_setup = {s: kinect_reprojection_rms(fit["K"], *pairs[s][stream], size[0], fit["mirrored"])
                     for s in setups}
        worst = max(per_setup, key=per_setup.get)
        record.update({f"{stream}_K": fit["K"].tolist(), f"{stream}_rms": fit["rms"],
                       f"{stream}_worst_setup": {"setup": worst, "rms": per_setup[worst]}})
        record["mirrored"] = fit["mirrored"]
        record["pairs"] = max(record["pairs"], fit["pairs"])
    return record


def cluster_sensors(fits: dict[str, dict], pairs: dict[str, dict]) -> tuple[dict[str, dict], dict]:
    """Sensors ("0", "1", ...) from per-setup fits, and the residuals of one pooled K.

    Returns:
        sensor id → :func:`sensor_record`, and ``{"rgb_rms", "depth_rms", "setups"}`` of a
        single K fitted over every setup of the majority mirroring (empty without fits).
    """
    groups = group_setups(fits)
    sensors = {str(i): sensor_record(group, pairs) for i, group in enumerate(groups)}
    fitted = [s for group in groups for s in group]
    if not fitted:
        return sensors, {}
    mirrored = np.mean([bool(fits[s]["mirrored"]) for s in fitted]) >= 0.5
    same = [s for s in fitted if bool(fits[s]["mirrored"]) == mirrored]
    pooled = {"setups": len(same)}
    for stream, size in STREAMS:
        pooled[f"{stream}_rms"] = _fit_stream([pairs[s][stream] for s in same], size[0])["rms"]
    return sensors, pooled


def describe_sensor(sensor_id: str, record: dict) -> str:
    """One summary line: the sensor, its setups, K and residuals."""
    rgb, depth = np.asarray(record["rgb_K"]), np.asarray(record["depth_K"])
    setups = record["setups"]
    shown = ", ".join(setups[:6]) + (f", … ({len(setups)} setups)" if len(setups) > 6 else "")
    return (f"sensor {sensor_id} [{shown}]: rgb f ({rgb[0, 0]:.1f}, {rgb[1, 1]:.1f}) c ({rgb[0, 2]:.1f}, "
            f"{rgb[1, 2]:.1f}) rms {record['rgb_rms']:.3f} px (worst setup {record['rgb_worst_setup']['rms']:.3f}); "
            f"depth f ({depth[0, 0]:.1f}, {depth[1, 1]:.1f}) c ({depth[0, 2]:.1f}, {depth[1, 2]:.1f}) rms "
            f"{record['depth_rms']:.3f} px (worst setup {record['depth_worst_setup']['rms']:.3f})")


# --- PKU-MMD: which sensor ---------------------------------------------------------------
def depth_agreement_mm(depth_K: np.ndarray, mirrored: bool, frames: list[tuple[np.ndarray, np.ndarray]]
                       ) -> tuple[float, int]:
    """Mean |depth at the projected joint − joint z| (mm, each capped) and the joints counted.

    Args:
        depth_K: (3, 3) depth intrinsics of the unmirrored frame, our camera frame.
        mirrored: whether the raw depth frames are mirror images.
        frames: (raw depth (H, W) uint16 mm, joints (J, 3) mm in our camera frame) pairs.
    """
    camera = Camera.from_intrinsics(depth_K)
    errors = []
    for depth, joints in frames:
        image = depth[:, ::-1] if mirrored else depth
        pixels = np.round(camera.camera_to_image(joints))
        height, width = image.shape
        inside = np.isfinite(pixels).all(1)
        inside &= (pixels[:, 0] >= 0) & (pixels[:, 0] < width) & (pixels[:, 1] >= 0) & (pixels[:, 1] < height)
        u, v = pixels[inside, 0].astype(int), pixels[inside, 1].astype(int)
        measured = image[v, u].astype(np.float64)
        seen = measured > 0
        errors.append(np.minimum(np.abs(measured[seen] - joints[inside][seen, 2]), DEPTH_ERROR_CAP_MM))
    errors = np.concatenate(errors) if errors else np.zeros(0)
    return (float(errors.mean()) if errors.size else float("inf")), int(errors.size)

