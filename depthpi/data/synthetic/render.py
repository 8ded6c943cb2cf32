"""Rendering one sample: placing the person, the crop cameras, RGB and depth crops, and the labels.

Every sample is a pure function of ``(cfg.seed, split, index)``: a subject, camera and pose
family of the split, the person 2–5 m from the camera within the field of view. Rendering
goes directly into the crop cameras (RGB: ``Camera.crop`` of the sensor; depth: the same
region at the depth sensor's native resolution). Depth is stored in mm as z along the
optical axis (``depth_kind=z``) or radial ``distance``; pixels outside the sensor's frame
are black (RGB) and 0 (depth).

docs/datasets.md ("The synthetic set") describes each step.
"""
from __future__ import annotations

import cv2
import numpy as np

from depthpi.camera import Camera
from depthpi.data.schema import Sample, SampleMeta
from depthpi.data.synthetic.body import Prims, posed_body, rz, subject_identity
from depthpi.data.synthetic.config import DepthKind, SyntheticConfig, cameras_of, split_id, subjects_of
from depthpi.data.synthetic.poses import FAMILIES, pose_angles
from depthpi.data.synthetic.raster import EMPTY_Z, projected_box, rasterise, shade
from depthpi.data.synthetic.scene import Sensor, sensor_of
from depthpi.data.synthetic.sensor_noise import noise_tile, sensor_depth
from depthpi.skeleton import H36M_17


def _place(rng: np.random.Generator, cfg: SyntheticConfig, sensor: Sensor, body: Prims):
    """Yaw and floor position of the person; retried so the body stays inside the frame."""
    room, cam = sensor.room, sensor.rgb
    yaw = rng.uniform(0, 2 * np.pi)
    Rz = rz(yaw)
    forward = cam.R[2].copy()
    forward[2] = 0
    forward /= np.linalg.norm(forward)
    half_fov = np.arctan(cfg.rgb_size[0] / 2 / cam.K[0, 0])
    distance = rng.uniform(*cfg.person_distance)
    angle = rng.uniform(-0.6, 0.6) * half_fov
    lift = -body.lowest()
    W, H = cfg.rgb_size
    for _ in range(8):
        direction = rz(angle) @ forward
        limits = [cfg.person_distance[1]]  # stay 700 mm inside the room
        for axis, bound in ((0, room.wall_x - 700), (0, -(room.wall_x - 700)), (1, room.wall_y - 700)):
            if direction[axis] * bound > 0:
                limits.append((bound - cam.t[axis]) / direction[axis])
        distance = float(min(distance, *limits))
        ground = cam.t + distance * direction
        offset = np.array([ground[0], ground[1], lift])
        prims = body.moved(Rz, offset)
        box = projected_box(prims.seen_by(cam), cam.K)
        if box[0] >= 2 and box[1] >= 2 and box[2] <= W - 3 and box[3] <= H - 3:
            break
        distance = min(distance * 1.12, cfg.person_distance[1])
        angle *= 0.6
    return Rz, offset, prims, distance, yaw


def render_sample(split: str, index: int, cfg: SyntheticConfig | None = None) -> Sample:
    """Render sample ``index`` of ``split`` ("train", "test" or "unlabeled")."""
    return render_sample_debug(split, index, cfg)[0]


def render_sample_debug(split: str, index: int, cfg: SyntheticConfig | None = None) -> tuple[Sample, dict]:
    """:func:`render_sample` plus noise-free internals for tests and inspection.

    Returns the sample and a dict with ``depth_true`` (float32 mm, the depth crop before
    noise and dropouts, z or distance as configured), ``z_rgb`` (float32 z-buffer of the
    body in the RGB crop, 1e12 where no body), ``person_rgb`` / ``person_depth`` (bool
    masks of body pixels in each crop), ``identity``, ``distance`` and ``joints`` (world
    mm, also for unlabelled samples).
    """
    cfg = cfg or SyntheticConfig()
    rng = np.random.default_rng([cfg.seed, split_id(split), index])
    subjects, cameras = subjects_of(split, cfg), cameras_of(split, cfg)
    subject = subjects[rng.integers(len(subjects))]
    camera = cameras[rng.integers(len(cameras))]
    family = FAMILIES[rng.integers(len(FAMILIES))]
    ident = subject_identity(subject, cfg)
    sensor = sensor_of(cfg, camera)
    room, cam = sensor.room, sensor.rgb

    joints_body, prims_body = posed_body(ident, pose_angles(rng, family))
    Rz, offset, prims, distance, yaw = _place(rng, cfg, sensor, prims_body)
    joints = joints_body @ Rz.T + offset

    # ---- crop cameras
    box = projected_box(prims.seen_by(cam), cam.K)
    S = cfg.crop_size
    side = cfg.crop_margin * max(box[2] - box[0], box[3] - box[1])
    scale = S / side
    centre = (box[:2] + box[2:]) / 2
    x0, y0 = centre - (S - 1) / (2 * scale)
    crop = cam.crop(x0, y0, scale)
    W, H = cfg.rgb_size
    # depth window: the RGB crop's extent (pixel edges) in the depth sensor, native resolution
    edges = np.array([[x0 - 0.5 / scale, y0 - 0.5 / scale], [x0 + (S - 0.5) / scale, y0 + (S - 0.5) / scale]])
    dcam = sensor.depth
    edges_d = (edges - cam.K[:2, 2]) / np.diag(cam.K)[:2] * np.diag(dcam.K)[:2] + dcam.K[:2, 2]
    xd0, yd0 = np.floor(edges_d[0] + 0.5).astype(int)
    xd1, yd1 = np.ceil(edges_d[1] - 0.5).astype(int)
    wd, hd = xd1 - xd0 + 1, yd1 - yd0 + 1
    dcrop = dcam.crop(float(xd0), float(yd0), 1.0)

    # ---- RGB: room warped from the cached full frame, then the body z-buffered over it.
    # The room is a convex box around both camera and person, so every body surface is in
    # front of the room along any ray: the z-buffer starts empty and resolves body parts.
    to_full = np.array([[1 / scale, 0, x0], [0, 1 / scale, y0]])
    rgb = cv2.warpAffine(sensor.bg_rgb, to_full, (S, S), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT)
    _contact_shadow(rgb, rng, crop, joints, ident.height)
    prims_cam = prims.seen_by(crop)
    zbuf = np.full((S, S), EMPTY_Z, np.float32)
    ids, X, Y = rasterise(prims_cam, crop.K, S, S, zbuf)
    light_cam, up_cam = cam.R @ room.light, cam.R @ np.array([0, 0, 1.0])
    shade(rgb, prims_cam, ids, zbuf, X, Y, ident.colours, light_cam, up_cam,
           room.ambient, room.diffuse, ident.hair_line)
    rgb = cv2.convertScaleAbs(rgb, alpha=rng.uniform(0.85, 1.15))  # exposure
    rgb = cv2.GaussianBlur(rgb, (3, 3), 0.5)  # optics
    oy, ox = rng.integers(0, S, 2)
    rgb = cv2.add(rgb, noise_tile(2 * S, cfg.rgb_noise)[oy:oy + S, ox:ox + S], dtype=cv2.CV_8U)
    person_rgb = ids >= 0
    (r0, r1), (c0, c1) = _inside_range(S, y0, scale, H), _inside_range(S, x0, scale, W)
    for mask in (rgb, person_rgb):  # outside the sensor's frame: black, no person
        mask[:r0], mask[r1:], mask[:, :c0], mask[:, c1:] = 0, 0, 0, 0

    # ---- depth
    Wd, Hd = cfg.depth_size
    zd = np.full((hd, wd), EMPTY_Z, np.float32)
    sx0, sy0, sx1, sy1 = max(xd0, 0), max(yd0, 0), min(xd1 + 1, Wd), min(yd1 + 1, Hd)
    if sx0 < sx1 and sy0 < sy1:
        zd[sy0 - yd0:sy1 - yd0, sx0 - xd0:sx1 - xd0] = sensor.bg_depth[sy0:sy1, sx0:sx1]
    ids_d, Xd, Yd = rasterise(prims.seen_by(dcrop), dcrop.K, wd, hd, zd)
    if cfg.depth_kind == DepthKind.distance:
        zd = zd * np.sqrt(Xd * Xd + Yd * Yd + 1)
    inside_d = np.zeros((hd, wd), bool)
    inside_d[sy0 - yd0:sy1 - yd0, sx0 - xd0:sx1 - xd0] = True
    depth = sensor_depth(rng, zd, inside_d, cfg)
    depth_true = np.where(inside_d, zd, 0).astype(np.float32)

    # ---- labels
    xs, ys = np.flatnonzero(person_rgb.any(0)), np.flatnonzero(person_rgb.any(1))
    if xs.size:
        bbox = np.array([xs[0] - 0.5, ys[0] - 0.5, xs[-1] - xs[0] + 1.0, ys[-1] - ys[0] + 1.0])
    else:  # cannot happen with the fit check; fall back to the projected box
        b = (box - np.array([x0, y0, x0, y0])) * scale
        bbox = np.array([b[0], b[1], b[2] - b[0], b[3] - b[1]])
    uv = cam.project(joints)
    in_frame = np.all(np.isfinite(uv), 1) & (uv[:, 0] >= -0.5) & (uv[:, 0] <= W - 0.5) \
        & (uv[:, 1] >= -0.5) & (uv[:, 1] <= H - 0.5)
    labeled = split != "unlabeled"
    meta = SampleMeta(
        dataset="synthetic", subject=subject, camera=camera, action=family, frame=int(index), labeled=labeled,
        rgb_K=crop.K.copy(), depth_K=dcrop.K.copy(), R=cam.R.copy(), t=cam.t.copy(),
        joints=joints if labeled else None,
        joint_valid=in_frame if labeled else np.zeros(len(joints), bool),
        bbox=bbox, skeleton=H36M_17.name,
        extra={"distance_mm": round(distance, 1), "height_mm": round(ident.height, 1),
               "yaw_deg": round(float(np.degrees(yaw)), 2)} if labeled else {})
    sample = Sample(key=f"synth_{split}_{index:08d}", rgb=rgb, depth=depth, meta=meta)
    debug = {"depth_true": depth_true, "z_rgb": zbuf, "person_rgb": person_rgb,
             "person_depth": (ids_d >= 0) & inside_d, "identity": ident, "distance": distance, "joints": joints}
    return sample, debug


def _inside_range(n: int, start: float, scale: float, full: int) -> tuple[int, int]:
    """[i0, i1) of crop pixels i whose full-frame position start + i / scale is inside [−0.5, full − 0.5]."""
    pos = start + np.arange(n) / scale
    inside = np.flatnonzero((pos >= -0.5) & (pos <= full - 0.5))
    return (int(inside[0]), int(inside[-1]) + 1) if inside.size else (0, 0)


def _contact_shadow(image: np.ndarray, rng: np.random.Generator, crop: Camera, joints: np.ndarray,
                    height: float) -> None:
    """Darken a soft ellipse on the floor under the person (a cue of ground contact and scale)."""
    lank, rank, pelv = (joints[H36M_17.index(name)] for name in ("lank", "rank", "pelv"))
    centre = (lank + rank + pelv) / 3
    radius = 0.22 * height * rng.uniform(0.8, 1.2)
    a = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    ring = np.stack([centre[0] + radius * np.cos(a), centre[1] + 0.8 * radius * np.sin(a), np.zeros_like(a)], 1)
    uv = crop.project(ring)
    if not np.all(np.isfinite(uv)):
        return
    h, w = image.shape[:2]
    x0, y0 = np.floor(np.maximum(uv.min(0) - 4, 0)).astype(int)
    x1, y1 = np.ceil(np.minimum(uv.max(0) + 5, [w, h])).astype(int)
    if x0 >= x1 or y0 >= y1:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.float32)
    cv2.fillConvexPoly(mask, np.round((uv - [x0, y0]) * 4).astype(np.int32), 1.0, cv2.LINE_AA, 2)
    mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, 0.08 * (x1 - x0)))
    region = image[y0:y1, x0:x1]
    region[:] = region * (1 - 0.4 * mask)[..., None]
