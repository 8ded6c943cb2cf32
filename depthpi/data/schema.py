"""The stored sample: what one shard entry holds, how it is encoded and validated.

One key = three tar members (docs/design.md, "One sample, from shard to loss"):
- ``rgb.jpg``: RGB crop around the person, uint8; intrinsics ``rgb_K`` are the crop's.
- ``depth.png``: uint16 depth in mm, 0 = invalid (absent for RGB-only test sets).
- ``json``: metadata, see :class:`SampleMeta`.

Decoding only ever interprets member bytes by type (JPEG, PNG, JSON): nothing in a shard
can run code.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from depthpi.skeleton import SKELETONS

JPEG_QUALITY = 95


class SampleError(ValueError):
    """A stored sample that cannot be used; names the key, the field and the reason."""

    def __init__(self, key: str, field_name: str, reason: str, shard: str | None = None):
        self.key, self.field, self.reason, self.shard = key, field_name, reason, shard
        where = f" in shard {shard}" if shard else ""
        super().__init__(f"sample {key!r}{where}: field {field_name!r}: {reason}")


@dataclass
class SampleMeta:
    """Metadata of one stored sample.

    Attributes:
        dataset: source data set name (``"synthetic"``, ``"ntu"``, ``"pku"``, ``"h36m"``).
        subject, camera, action: identifiers used for splits and per-group metrics.
        frame: frame index in the source video.
        labeled: whether ``joints`` holds ground truth (False: unlabelled RGB-D pair).
        rgb_K: (3, 3) intrinsics of the stored RGB crop, px.
        depth_K: (3, 3) intrinsics of the stored depth crop, px (None without depth).
        R: (3, 3) world→camera rotation. t: (3,) camera centre, world mm.
        joints: (J, 3) world mm, or None when unlabelled.
        joint_valid: (J,) bool, joint annotated and trustworthy.
        bbox: (4,) person box x, y, w, h in stored-RGB-crop pixels.
        skeleton: joint-set name (see :mod:`depthpi.skeleton`).
        extra: converter-specific fields kept verbatim.
    """

    dataset: str
    subject: str
    camera: str
    action: str
    frame: int
    labeled: bool
    rgb_K: np.ndarray
    depth_K: np.ndarray | None
    R: np.ndarray
    t: np.ndarray
    joints: np.ndarray | None
    joint_valid: np.ndarray
    bbox: np.ndarray
    skeleton: str = "h36m_17"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        record = asdict(self)
        for name, value in record.items():
            if isinstance(value, np.ndarray):
                record[name] = value.tolist()
        return json.dumps(record, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, key: str) -> SampleMeta:
        try:
            record = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SampleError(key, "json", f"not valid JSON ({err})") from None
        if not isinstance(record, dict):
            raise SampleError(key, "json", f"expected a JSON object of metadata, got {type(record).__name__}")
        missing = [f for f in _REQUIRED if f not in record]
        if missing:
            raise SampleError(key, missing[0], f"missing (required: {', '.join(_REQUIRED)})")
        record = {k: v for k, v in record.items() if k in _FIELDS}
        meta = cls(**record)
        meta._coerce(key)
        return meta

    def _coerce(self, key: str) -> None:
        """Turn JSON lists into arrays of the documented shapes and check that the values are
        usable: finite in float32 (what the pipeline computes in), a known skeleton, intrinsics
        with positive focal lengths, a rotation, joints in front of and near the camera.

        Raises:
            SampleError: naming the field and what was expected.
        """
        if not isinstance(self.skeleton, str) or self.skeleton not in SKELETONS:
            raise SampleError(key, "skeleton", f"unknown skeleton {self.skeleton!r} (known: {sorted(SKELETONS)})")
        joints_count = SKELETONS[self.skeleton].num_joints
        self.rgb_K = _intrinsics(key, "rgb_K", self.rgb_K)
        self.depth_K = None if self.depth_K is None else _intrinsics(key, "depth_K", self.depth_K)
        self.R = _rotation(key, _array(key, "R", self.R, (3, 3)))
        self.t = _array(key, "t", self.t, (3,), bound=MAX_WORLD_MM)
        self.bbox = _array(key, "bbox", self.bbox, (4,), bound=MAX_PIXELS)
        valid = np.asarray(self.joint_valid)
        if valid.shape != (joints_count,) or valid.dtype.kind not in "bi":
            raise SampleError(key, "joint_valid", f"expected {joints_count} booleans for skeleton {self.skeleton}, "
                                                  f"got shape {valid.shape} of {valid.dtype}")
        self.joint_valid = valid.astype(bool)
        if self.labeled:
            if self.joints is None:
                raise SampleError(key, "joints", "null but the sample is labeled")
            self.joints = _array(key, "joints", self.joints, (joints_count, 3), bound=MAX_WORLD_MM)
            self._check_joints_near_camera(key)
        elif self.joints is not None:
            self.joints = np.asarray(self.joints, np.float64)
        if self.bbox[2] <= 0 or self.bbox[3] <= 0:
            raise SampleError(key, "bbox", f"width and height must be > 0, got {self.bbox.tolist()}")

    def _check_joints_near_camera(self, key: str) -> None:
        """The root in front of the camera and every valid joint within MAX_CAMERA_DISTANCE_MM of it."""
        cam = (self.joints - self.t) @ self.R.T
        root = cam[SKELETONS[self.skeleton].root]
        if not root[2] > 0:
            raise SampleError(key, "joints", f"the root joint is not in front of the camera (z = {root[2]:.0f} mm)")
        far = np.linalg.norm(cam, axis=1)[self.joint_valid]
        if far.size and far.max() > MAX_CAMERA_DISTANCE_MM:
            raise SampleError(key, "joints", f"a valid joint is {far.max() / 1000:.1f} m from the camera (expected "
                                             f"within {MAX_CAMERA_DISTANCE_MM / 1000:.0f} m: wrong units or frame?)")


_FIELDS = tuple(SampleMeta.__dataclass_fields__)
_REQUIRED = ("dataset", "subject", "camera", "action", "frame", "labeled", "rgb_K", "depth_K",
             "R", "t", "joints", "joint_valid", "bbox")


MAX_WORLD_MM = 1e6  # coordinates beyond a kilometre are a unit or encoding error
MAX_PIXELS = 1e5
MAX_CAMERA_DISTANCE_MM = 20_000.0  # people are seen from a few metres; 20 m leaves room for any rig


def _array(key: str, name: str, value, shape: tuple[int, ...], bound: float | None = None) -> np.ndarray:
    """float64 array of ``shape``, finite also once cast to float32 and, with ``bound``, within ±bound."""
    try:
        array = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise SampleError(key, name, f"expected numbers of shape {shape}") from None
    if array.shape != shape:
        raise SampleError(key, name, f"expected shape {shape}, got {array.shape}")
    with np.errstate(over="ignore"):
        finite = np.isfinite(array.astype(np.float32))
    if not np.all(finite):
        raise SampleError(key, name, "contains NaN or infinite values (in float32, the dtype the pipeline uses)")
    if bound is not None and np.abs(array).max() > bound:
        raise SampleError(key, name, f"a value of magnitude {np.abs(array).max():.3g} is implausible (expected "
                                     f"within ±{bound:.0e})")
    return array


def _intrinsics(key: str, name: str, value) -> np.ndarray:
    """A 3×3 pinhole K with positive focal lengths and a last row (0, 0, 1)."""
    K = _array(key, name, value, (3, 3), bound=MAX_PIXELS)
    if not (K[0, 0] > 0 and K[1, 1] > 0) or not np.allclose(K[2], [0, 0, 1]) or K[1, 0] != 0:
        raise SampleError(key, name, f"expected [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0, "
                                     f"got {K.tolist()}")
    return K


def _rotation(key: str, R: np.ndarray) -> np.ndarray:
    """R must be a proper rotation (orthonormal, det +1) to within float32 rounding of JSON."""
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-4) or not np.linalg.det(R) > 0:
        raise SampleError(key, "R", f"expected a rotation (orthonormal, det +1), got det {np.linalg.det(R):.4f} "
                                    f"and |R Rᵀ − I| up to {np.abs(R @ R.T - np.eye(3)).max():.2g}")
    return R


@dataclass
class Sample:
    """One stored sample, decoded.

    Attributes:
        key: unique key within the split (also the tar member prefix).
        rgb: (H, W, 3) uint8 RGB crop.
        depth: (h, w) uint16 depth in mm (0 = invalid), or None.
        meta: see :class:`SampleMeta`.
        extras: members beyond the schema, undecoded (e.g. a paired teacher-feature
            shard's ``feat.npy`` and ``view.json``).
    """

    key: str
    rgb: np.ndarray
    depth: np.ndarray | None
    meta: SampleMeta
    extras: dict[str, bytes] = field(default_factory=dict)


def encode_sample(sample: Sample) -> dict[str, bytes]:
    """Sample → tar members ``{"__key__", "rgb.jpg", "depth.png", "json"}`` (webdataset form)."""
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(sample.rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise SampleError(sample.key, "rgb", "JPEG encoding failed")
    members = {"__key__": sample.key, "rgb.jpg": jpg.tobytes(), "json": sample.meta.to_json()}
    if sample.depth is not None:
        if sample.depth.dtype != np.uint16:
            raise SampleError(sample.key, "depth", f"expected uint16 mm, got {sample.depth.dtype}")
        ok, png = cv2.imencode(".png", sample.depth, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise SampleError(sample.key, "depth", "PNG encoding failed")
        members["depth.png"] = png.tobytes()
    return members


def decode_sample(members: dict[str, Any]) -> Sample:
    """Tar members (bytes) → :class:`Sample`; raises :class:`SampleError` naming the fault."""
    key = members.get("__key__", "?")
    shard = members.get("__url__")
    try:
        meta = SampleMeta.from_json(_member(members, "json", key), key)
        rgb = _decode_image(_member(members, "rgb.jpg", key), key, "rgb.jpg", _IMREAD_RGB)
        if _IMREAD_RGB == cv2.IMREAD_COLOR:  # OpenCV < 4.10 decodes to BGR only
            rgb = cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB)
        _check_box_meets_image(key, meta.bbox, rgb.shape)
        depth = None
        if "depth.png" in members:
            depth = _decode_image(members["depth.png"], key, "depth.png", cv2.IMREAD_UNCHANGED)
            if depth.dtype != np.uint16 or depth.ndim != 2:
                raise SampleError(key, "depth.png", f"expected 2-D uint16, got {depth.dtype} {depth.shape}")
        elif meta.depth_K is not None:
            raise SampleError(key, "depth.png", "missing although depth_K is set")
    except SampleError as err:
        err.shard = shard
        raise SampleError(err.key, err.field, err.reason, shard) from None
    extras = {k: v for k, v in members.items() if k not in _SCHEMA_MEMBERS and not k.startswith("__")}
    return Sample(key=key, rgb=rgb, depth=depth, meta=meta, extras=extras)


def _check_box_meets_image(key: str, bbox: np.ndarray, shape: tuple[int, ...]) -> None:
    x, y, w, h = bbox
    height, width = shape[:2]
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise SampleError(key, "bbox", f"the box {bbox.tolist()} lies outside the {width}×{height} stored crop")


_SCHEMA_MEMBERS = ("rgb.jpg", "depth.png", "json")
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", cv2.IMREAD_COLOR)  # decode straight to RGB: one pass fewer


def _member(members: dict[str, Any], name: str, key: str) -> bytes:
    if name not in members:
        raise SampleError(key, name, f"member missing (have: {sorted(k for k in members if not k.startswith('__'))})")
    return members[name]


def _decode_image(data: bytes, key: str, name: str, flags: int) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise SampleError(key, name, "image bytes could not be decoded (corrupt or truncated)")
    return image
