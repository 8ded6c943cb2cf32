"""Pinhole camera geometry (thesis §4.1.1, §4.1.4): NumPy only, no torch.

Conventions (docs/design.md): millimetres; ``p_cam = R (p_world - t)``; x right, y down,
z forward; pixel centres at integer coordinates (OpenCV's convention, so ``cv2`` warps
agree with :meth:`Camera.project` to sub-pixel precision).

Every augmentation edits a camera and returns a *new* one (cameras are immutable), and
the image is reprojected once from the source camera to the final one.
Geometry runs in float64: a crop of a 1920-pixel frame zoomed to 257 pixels loses
sub-pixel accuracy in float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.sqrt(v @ v)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # np.cross costs ~15 µs of argument handling for two 3-vectors; this runs per sample.
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


@dataclass(frozen=True)
class Camera:
    """A calibrated pinhole camera.

    Attributes:
        K: (3, 3) intrinsics in pixels.
        R: (3, 3) world→camera rotation (rows are the camera axes in world coordinates).
            A horizontally flipped camera has det(R) = -1.
        t: (3,) camera centre in world coordinates, mm.
    """

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray

    def __post_init__(self):
        for name, shape in (("K", (3, 3)), ("R", (3, 3)), ("t", (3,))):
            value = np.asarray(getattr(self, name), np.float64)
            if value.shape != shape:
                raise ValueError(f"Camera.{name}: expected shape {shape}, got {value.shape}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"Camera.{name}: non-finite values {value.tolist()}")
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    @classmethod
    def _derived(cls, K: np.ndarray, R: np.ndarray, t: np.ndarray) -> Camera:
        """A camera computed from a validated one: skips the input checks (hot path)."""
        camera = object.__new__(cls)
        for name, value in (("K", K), ("R", R), ("t", t)):
            value = np.asarray(value, np.float64)
            value.setflags(write=False)
            object.__setattr__(camera, name, value)
        return camera

    @cached_property
    def K_inv(self) -> np.ndarray:
        """(3, 3) inverse intrinsics."""
        return np.linalg.inv(self.K)

    @classmethod
    def from_intrinsics(cls, K: np.ndarray) -> Camera:
        """Camera at the world origin looking down the world axes: world = camera frame."""
        return cls(K=np.asarray(K, np.float64), R=np.eye(3), t=np.zeros(3))

    @classmethod
    def from_fov(cls, fov_deg: float, width: int, height: int) -> Camera:
        """Camera at the world origin with a horizontal field of view of ``fov_deg``."""
        f = 0.5 * width / np.tan(np.radians(fov_deg) / 2)
        K = np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]])
        return cls.from_intrinsics(K)

    # --- projections -------------------------------------------------------------
    def world_to_camera(self, points: np.ndarray) -> np.ndarray:
        """points: (..., 3) world mm → (..., 3) camera mm."""
        return (np.asarray(points, np.float64) - self.t) @ self.R.T

    def camera_to_world(self, points: np.ndarray) -> np.ndarray:
        """points: (..., 3) camera mm → (..., 3) world mm."""
        return np.asarray(points, np.float64) @ self.R + self.t

    def camera_to_image(self, points: np.ndarray) -> np.ndarray:
        """points: (..., 3) camera mm → (..., 2) pixels. Points behind the camera give NaN."""
        points = np.asarray(points, np.float64)
        z = points[..., 2:3]
        with np.errstate(divide="ignore", invalid="ignore"):
            normalised = np.where(z > 0, points[..., :2] / z, np.nan)
        return normalised @ self.K[:2, :2].T + self.K[:2, 2]

    def project(self, points: np.ndarray) -> np.ndarray:
        """points: (..., 3) world mm → (..., 2) pixels."""
        return self.camera_to_image(self.world_to_camera(points))

    def image_to_camera(self, pixels: np.ndarray, z: np.ndarray | float = 1.0) -> np.ndarray:
        """pixels: (..., 2), z: (...) depth along the optical axis, mm → (..., 3) camera mm."""
        pixels = np.asarray(pixels, np.float64)
        homogeneous = np.concatenate([pixels, np.ones_like(pixels[..., :1])], axis=-1)
        rays = homogeneous @ self.K_inv.T
        return rays * np.asarray(z, np.float64)[..., None]

    def unproject(self, pixels: np.ndarray, z: np.ndarray | float) -> np.ndarray:
        """pixels: (..., 2), z: (...) mm along the optical axis → (..., 3) world mm."""
        return self.camera_to_world(self.image_to_camera(pixels, z))

    def normalised_coordinates(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(x̂, ŷ), each (height, width): ``(u - cx) / fx`` and ``(v - cy) / fy`` per pixel."""
        u = (np.arange(width) - self.K[0, 2]) / self.K[0, 0]
        v = (np.arange(height) - self.K[1, 2]) / self.K[1, 1]
        return np.broadcast_to(u[None, :], (height, width)), np.broadcast_to(v[:, None], (height, width))

    # --- edits (each returns a new camera) ----------------------------------------
    @property
    def up_world(self) -> np.ndarray:
        """(3,) the camera's up direction in world coordinates (−y axis; y points down)."""
        return -self.R[1]

    def turn_towards(self, pixel: np.ndarray, up_world: np.ndarray | None = None) -> Camera:
        """Rotate about the camera centre so ``pixel`` lands on the principal point.

        Eq. 4.1–4.6: the new optical axis points through ``pixel``; the new camera keeps
        the up-vector ``w`` (default: this camera's own up direction) in its y–z plane,
        i.e. zero roll relative to it. K is unchanged.
        """
        w = self.up_world if up_world is None else np.asarray(up_world, np.float64)
        a_center = self.R.T @ (self.K_inv @ np.array([pixel[0], pixel[1], 1.0]))
        z_axis = _unit(a_center)
        x_axis = _unit(_cross(z_axis, w))  # eq. 4.3; with y down, this points right
        y_axis = _unit(_cross(z_axis, x_axis))
        if np.linalg.det(self.R) < 0:  # a flipped camera stays flipped
            x_axis = -x_axis
        return Camera._derived(self.K, np.stack([x_axis, y_axis, z_axis]), self.t)

    def roll(self, angle: float) -> Camera:
        """Rotate about the optical axis by ``angle`` radians (eq. 4.19)."""
        c, s = np.cos(angle), np.sin(angle)
        rotation = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
        return Camera._derived(self.K, rotation @ self.R, self.t)

    def horizontal_flip(self) -> Camera:
        """Mirror the image about the vertical line u = cx (eq. 4.20: negate R's first row)."""
        return Camera._derived(self.K, self.R * np.array([[-1.0], [1.0], [1.0]]), self.t)

    def zoom(self, factor: float) -> Camera:
        """Scale the focal lengths about the principal point (eq. 4.21)."""
        K = self.K.copy()
        K[:2, :2] *= factor
        return Camera._derived(K, self.R, self.t)

    def crop(self, x0: float, y0: float, scale: float = 1.0) -> Camera:
        """The camera of ``image[y0:, x0:]`` resized by ``scale`` (pixel centres kept).

        A pixel u of the original image maps to ``(u - x0) * scale`` (pixel centres at
        integers, so the resize is about the centre of the crop's first pixel).
        """
        K = self.K.copy()
        K[0, 2] -= x0
        K[1, 2] -= y0
        K[:2] *= scale
        return Camera._derived(K, self.R, self.t)

    def with_principal_point(self, cx: float, cy: float) -> Camera:
        K = self.K.copy()
        K[0, 2], K[1, 2] = cx, cy
        return Camera._derived(K, self.R, self.t)

    # --- between cameras --------------------------------------------------------
    def homography_to(self, other: Camera) -> np.ndarray:
        """(3, 3) H mapping this camera's pixels to ``other``'s (same centre; eq. 4.7).

        ``[u', v', 1] ~ H [u, v, 1]`` with ``H = K' R' Rᵀ K⁻¹``. Exact only when both
        cameras share the centre t; cameras of one sensor pair (RGB, depth) are treated
        as sharing it, as thesis §5.1.1 does.
        """
        return other.K @ (other.R @ self.R.T) @ self.K_inv


def reproject_image(image: np.ndarray, src: Camera, dst: Camera, size: tuple[int, int],
                    interpolation: str = "linear", border_value: float = 0) -> np.ndarray:
    """Render what ``dst`` would see of ``image`` taken by ``src`` (same camera centre).

    Args:
        image: (H, W) or (H, W, C) source image.
        src, dst: cameras sharing a centre.
        size: (height, width) of the output.
        interpolation: ``"linear"`` for colour; ``"nearest"`` for depth and masks —
            nearest never blends values across depth edges or with invalid (zero)
            pixels, so every output depth is one the sensor actually measured.
    Returns:
        (height, width[, C]) image of the same dtype; pixels seen by no source pixel are
        ``border_value``.
    """
    flags = {"linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}
    if interpolation not in flags:
        raise ValueError(f"interpolation must be one of {sorted(flags)}, got {interpolation!r}")
    dst_to_src = dst.homography_to(src)
    height, width = size
    return cv2.warpPerspective(image, dst_to_src, (width, height),
                               flags=flags[interpolation] | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)
