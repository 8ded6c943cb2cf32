"""The scene: one textured room per setup and its three Kinect-like sensors, with the room pre-rendered.

World frame: x, y horizontal, z up, mm; the floor is z = 0. A *setup* ``S…`` is one
room (floor/wall/ceiling textures, back wall and side walls, light) with three
Kinect-like sensors ``C001…C003`` on an arc around the acting area at azimuths
−45°, 0°, +45° (as NTU RGB+D records each setup with three cameras). A sensor has a
fixed pose (height 0.6–1.8 m, tilted towards the acting area, slight roll), its own
RGB intrinsics (640×480 px, fx 520–600 px) and depth intrinsics (256×212 px, fx
176–190 px), sharing the optical centre (colour–depth misalignment treated as zero,
§5.1.1). The room (textured planes, vignetting) is ray-traced once per sensor at full
resolution and cached: colour for the RGB camera, z (mm) for the depth camera.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from depthpi.camera import Camera
from depthpi.data.synthetic.colours import hsv, texture_floor, texture_wall
from depthpi.data.synthetic.config import SyntheticConfig


@dataclass(frozen=True)
class Room:
    """A setup's room (world frame, mm): walls at y = wall_y and x = ±wall_x, the ceiling,
    the sensors' arc radius and base height, the light, and one texture per plane."""

    wall_y: float
    wall_x: float
    ceiling: float
    cam_dist: float
    cam_height: float
    light: np.ndarray  # unit, world, towards the light
    ambient: float
    diffuse: float
    textures: dict     # plane name -> (uint8 image, texel mm)


@lru_cache(maxsize=64)
def _room(cfg: SyntheticConfig, setup: int) -> Room:
    """The room of ``setup``: a pure function of (cfg.seed, setup)."""
    rng = np.random.default_rng([cfg.seed, 201, setup])
    cam_height = rng.uniform(*cfg.camera_height)
    elevation, azimuth = rng.uniform(np.radians(30), np.radians(70)), rng.uniform(0, 2 * np.pi)
    light = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])
    ceiling = rng.uniform(2700, 3300)
    textures = {
        "floor": (texture_floor(rng), 10.0),
        "back": (texture_wall(rng, 12000, ceiling), 20.0),
        "side": (texture_wall(rng, 12000, ceiling), 20.0),
        "front": (texture_wall(rng, 12000, ceiling), 20.0),
    }
    ceil = np.ones((64, 64, 3), np.float32) * hsv(0.1, 0.05, rng.uniform(0.75, 0.95))
    ceil[::16] *= 0.8
    ceil[:, ::16] *= 0.8
    textures["ceiling"] = ((ceil * 255).astype(np.uint8), 40.0)
    return Room(wall_y=rng.uniform(2000, 3400), wall_x=rng.uniform(3000, 4200), ceiling=ceiling,
                cam_dist=rng.uniform(2400, 3200), cam_height=cam_height, light=light,
                ambient=rng.uniform(0.35, 0.5), diffuse=rng.uniform(0.45, 0.65), textures=textures)


@dataclass(frozen=True)
class Sensor:
    """One Kinect-like sensor: its full-frame cameras, its room, and the room as it sees it."""

    rgb: Camera          # full colour frame
    depth: Camera        # full depth frame (same R, t)
    room: Room
    bg_rgb: np.ndarray   # (H, W, 3) uint8 room as seen by the colour camera
    bg_depth: np.ndarray  # (h, w) float32 z of the room, depth camera


def _parse_camera(camera: str) -> tuple[int, int]:
    """(setup, camera number) of a camera id ``"S###C###"``."""
    try:
        return int(camera[1:4]), int(camera[5:8])
    except ValueError:
        raise ValueError(f"camera id {camera!r}: expected 'S###C###'") from None


def _room_planes(room: Room) -> list:
    """(name, normal n, offset d with n·p = d, in-plane axes u, v) of the room's planes."""
    e = np.eye(3)
    return [("floor", e[2], 0.0, e[0], e[1]),
            ("ceiling", e[2], room.ceiling, e[0], e[1]),
            ("back", e[1], room.wall_y, e[0], e[2]),
            ("front", e[1], -(room.cam_dist + 1500), -e[0], e[2]),
            ("side", e[0], room.wall_x, e[1], e[2]),
            ("side", e[0], -room.wall_x, -e[1], e[2])]


def _trace_room(room: Room, cam: Camera, width: int, height: int, textured: bool):
    """z of the room per pixel, and (optionally) its shaded colour."""
    xn, yn = cam.normalised_coordinates(height, width)
    rays = np.stack([xn, yn, np.ones_like(xn)], -1) @ cam.R  # world directions with camera z = 1
    best = np.full((height, width), np.inf)
    colour = np.zeros((height, width, 3), np.float32) if textured else None
    for name, n, d, u, v in _room_planes(room):
        denom = rays @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            s = (d - n @ cam.t) / denom
        hit = (s > 0) & (s < best)
        if not hit.any():
            continue
        best = np.where(hit, s, best)
        if textured:
            points = cam.t + s[..., None] * rays
            image, texel = room.textures[name]
            mx = ((points @ u) / texel).astype(np.float32)
            my = ((points @ v) / texel).astype(np.float32)
            if name in ("back", "side", "front"):  # texture row 0 at the ceiling
                my = (image.shape[0] - 1 - my).astype(np.float32)
            sampled = cv2.remap(image, np.nan_to_num(mx), np.nan_to_num(my), cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_WRAP).astype(np.float32) / 255
            inward = n if n @ cam.t > d else -n  # the plane's normal on the camera's side
            light = room.ambient + room.diffuse * max(0.0, float(inward @ room.light)) * 0.8
            colour[hit] = sampled[hit] * light
    return best.astype(np.float32), colour


@lru_cache(maxsize=96)
def sensor_of(cfg: SyntheticConfig, camera: str) -> Sensor:
    """The sensor ``camera`` (e.g. ``"S003C001"``): a pure function of (cfg.seed, camera), cached."""
    setup, number = _parse_camera(camera)
    room = _room(cfg, setup)
    rng = np.random.default_rng([cfg.seed, 301, setup, number])
    W, H = cfg.rgb_size
    fx = rng.uniform(*cfg.rgb_focal)
    K = np.array([[fx, 0, (W - 1) / 2 + rng.normal(0, 4)], [0, fx * (1 + rng.normal(0, 0.003)), (H - 1) / 2 + rng.normal(0, 4)],
                  [0, 0, 1]])
    Wd, Hd = cfg.depth_size
    fd = rng.uniform(*cfg.depth_focal)
    Kd = np.array([[fd, 0, (Wd - 1) / 2 + rng.normal(0, 1.5)], [0, fd, (Hd - 1) / 2 + rng.normal(0, 1.5)], [0, 0, 1]])
    azimuth = np.radians((-45.0, 0.0, 45.0)[number - 1] + rng.normal(0, 4))
    centre = np.array([-room.cam_dist * np.sin(azimuth), -room.cam_dist * np.cos(azimuth),
                       np.clip(room.cam_height + rng.normal(0, 40), *cfg.camera_height)])
    target = np.array([rng.normal(0, 200), rng.normal(0, 200), rng.uniform(800, 1150)])
    forward = target - centre
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rgb = Camera(K, np.stack([right, down, forward]), centre).roll(np.radians(rng.normal(0, 1.5)))
    depth = Camera(Kd, rgb.R, rgb.t)
    _, bg_colour = _trace_room(room, rgb, W, H, textured=True)
    xn, yn = rgb.normalised_coordinates(H, W)
    vignette = 1 - 0.22 * (xn ** 2 + yn ** 2) / (np.max(xn ** 2) + np.max(yn ** 2))
    bg_rgb = np.clip(bg_colour * vignette[..., None] * 255, 0, 255).astype(np.uint8)
    bg_rgb = cv2.GaussianBlur(bg_rgb, (3, 3), 0.6)
    bg_depth, _ = _trace_room(room, depth, Wd, Hd, textured=False)
    return Sensor(rgb, depth, room, bg_rgb, bg_depth)
