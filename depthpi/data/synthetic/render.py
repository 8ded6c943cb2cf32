"""The embedded synthetic RGB-D data set: articulated humans in procedurally built rooms.

It lets the whole teacher/student system run without downloading a data set. Every
sample is a pure function of ``(cfg.seed, split, index)``
(``np.random.default_rng([seed, split_id, index])``).

World and identities
    World frame: x, y horizontal, z up, mm; the floor is z = 0. A *setup* ``S…`` is one
    room (floor/wall/ceiling textures, back wall and side walls, light) with three
    Kinect-like sensors ``C001…C003`` on an arc around the acting area at azimuths
    −45°, 0°, +45° (as NTU RGB+D records each setup with three cameras). A sensor has a
    fixed pose (height 0.6–1.8 m, tilted towards the acting area, slight roll), its own
    RGB intrinsics (640×480, fx 520–600) and depth intrinsics (256×212, fx 176–190),
    sharing the optical centre (colour–depth misalignment treated as zero, §5.1.1).
    A *subject* ``P…`` has a fixed identity drawn from (seed, subject): height 1.45–2.0 m,
    bone lengths proportional to it with ±3 % per-bone variation, limb/torso thickness,
    skin/hair/clothing colours. The left sleeve, trouser leg and shoe are blended towards
    a per-subject accent colour, so left and right are distinguishable in RGB.

Splits (as Table 5.2 splits NTU RGB+D)
    train: subjects P007 P008 P015–P028 P037–P040, setups S003–S007, S009–S017;
    test:  subjects P001–P003 P009–P011 P029–P032, setups S001 S002 S008;
    unlabeled: the remaining NTU subject ids P004–P006 P012–P014 P033–P036 and, by
    default (``unlabeled_cameras="own"``), their own setups S018–S020 — a third data set
    like PKU-MMD in the thesis; ``"train"`` uses the train cameras instead. No subject
    and no camera is in both train and test.

Poses
    Eight families (standing, walking, arms_raised, bending, sitting, crouching, lunge,
    kicking) give joint angles (spine flexion/side bend/twist, neck, shoulder
    flexion/abduction/twist, elbow, hip flexion/abduction/rotation, knee, ankle) that are
    clipped to anatomical limits; forward kinematics on the subject's bones; uniformly
    random yaw; the lowest body point is put on the floor. The person stands 2–5 m from
    the camera (horizontal distance), within the field of view; a pose that would leave
    the frame is moved back (up to 8 tries).

Rendering (directly into the crop cameras)
    The body is 18 primitives: 15 capsules (limbs, hands, feet, neck, shoulder and hip
    bars) and 3 ellipsoids (chest, abdomen, head). The person's box is computed from the
    projected primitives first, the RGB crop camera is ``Camera.crop`` of the sensor
    (square, ``crop_margin`` × the box, resized to ``crop_size``), the depth crop camera
    is the same region in the depth sensor at native resolution (integer window, scale
    1). Each pixel of a crop casts an exact ray–primitive intersection (vectorised over
    the primitive's screen window) and a **z-buffer** resolves occlusion between body
    parts and with the room (so feet meet the floor correctly). RGB: Lambert shading
    with a directional light and a hemispheric ambient term, hair/face regions on the
    head, a print on the shirt front, a soft contact shadow on the floor, slight optical
    blur, sensor noise. The room (textured planes, vignetting) is rendered once per
    sensor at full resolution and cached; each crop warps from it.

Depth (uint16 mm, 0 = invalid)
    Stored as z along the optical axis (``depth_kind="z"``, as Kinect v2 reports; set
    ``"distance"`` for radial distance). Noise σ(z) = a + b·z² (z in m; default
    1 mm + 1.425 mm·z², Khoshelham & Elberink's Kinect model), rounding to 1 mm. Invalid:
    the far side of depth discontinuities (both directions) plus a 1-pixel IR shadow band
    left of foreground edges, half of the near-side (mixed) edge pixels at random, anything outside ``depth_range`` (0.5–6 m: parts of the far
    walls drop out), random dropout blobs (radius 1–4 px) and isolated pixels, and
    anything outside the sensor frame. Depth carries the metric scale RGB lacks (RGB has
    the height/distance ambiguity: subjects of 1.45–2.0 m at 2–5 m).

A crop pixel that lies outside the sensor's full frame is black (RGB) and 0 (depth),
as a real crop padded at the border would be.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from depthpi.camera import Camera
from depthpi.data.schema import Sample, SampleMeta
from depthpi.skeleton import H36M_17

SPLIT_IDS = {"train": 0, "test": 1, "unlabeled": 2}
FAMILIES = ("standing", "walking", "arms_raised", "bending", "sitting", "crouching", "lunge", "kicking")
_J = {name: i for i, name in enumerate(H36M_17.joint_names)}
_INF = np.float32(1e12)

# Table 5.2 of the thesis (NTU RGB+D).
NTU_TRAIN_SUBJECTS = (7, 8, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 37, 38, 39, 40)
NTU_TEST_SUBJECTS = (1, 2, 3, 9, 10, 11, 29, 30, 31, 32)
NTU_TRAIN_SETUPS = (3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17)
NTU_TEST_SETUPS = (1, 2, 8)


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic set. Lengths in mm, sizes (width, height) in pixels.

    Attributes:
        seed: world seed; identities, rooms, sensors and samples all derive from it.
        rgb_size, rgb_focal: colour sensor resolution and range of fx (fy = fx ± 0.5 %).
        depth_size, depth_focal: depth sensor resolution and range of its fx.
        crop_size: side of the stored (square) RGB crop.
        crop_margin: crop side / long side of the tight person box.
        person_distance: horizontal camera–person distance range.
        camera_height: sensor height range.
        body_height: subject height range (standing, floor to head top).
        depth_range: valid sensor range; outside it depth is 0.
        depth_noise: (a, b) of σ(z) = a + b·z², σ in mm, z in m.
        depth_dropout_blobs: mean number of dropout blobs per depth crop.
        depth_dropout_pixels: probability of an isolated invalid pixel.
        depth_kind: ``"z"`` (optical-axis depth) or ``"distance"`` (radial).
        rgb_noise: σ of additive RGB sensor noise, in 8-bit levels.
        *_subjects, *_setups: subject and setup numbers of each split; a camera id is
            ``S{setup:03d}C{c:03d}`` for c in 1 … cameras_per_setup.
        unlabeled_cameras: ``"own"`` (unlabeled_setups) or ``"train"`` (train cameras).
    """

    seed: int = 0
    rgb_size: tuple[int, int] = (640, 480)
    rgb_focal: tuple[float, float] = (520.0, 600.0)
    depth_size: tuple[int, int] = (256, 212)
    depth_focal: tuple[float, float] = (176.0, 190.0)
    crop_size: int = 288
    crop_margin: float = 1.4
    person_distance: tuple[float, float] = (2000.0, 5000.0)
    camera_height: tuple[float, float] = (600.0, 1800.0)
    body_height: tuple[float, float] = (1450.0, 2000.0)
    depth_range: tuple[float, float] = (500.0, 6000.0)
    depth_noise: tuple[float, float] = (1.0, 1.425)
    depth_dropout_blobs: float = 3.0
    depth_dropout_pixels: float = 0.003
    depth_kind: str = "z"
    rgb_noise: float = 2.5
    train_subjects: tuple[int, ...] = NTU_TRAIN_SUBJECTS
    test_subjects: tuple[int, ...] = NTU_TEST_SUBJECTS
    unlabeled_subjects: tuple[int, ...] = (4, 5, 6, 12, 13, 14, 33, 34, 35, 36)
    train_setups: tuple[int, ...] = NTU_TRAIN_SETUPS
    test_setups: tuple[int, ...] = NTU_TEST_SETUPS
    unlabeled_setups: tuple[int, ...] = (18, 19, 20)
    cameras_per_setup: int = 3
    unlabeled_cameras: str = "own"

    def __post_init__(self):
        if self.depth_kind not in ("z", "distance"):
            raise ValueError(f"SyntheticConfig.depth_kind: 'z' or 'distance', got {self.depth_kind!r}")
        if self.unlabeled_cameras not in ("own", "train"):
            raise ValueError(f"SyntheticConfig.unlabeled_cameras: 'own' or 'train', got {self.unlabeled_cameras!r}")
        if not 1 <= self.cameras_per_setup <= 3:
            raise ValueError(f"SyntheticConfig.cameras_per_setup: 1 to 3, got {self.cameras_per_setup}")
        for name in ("train_subjects", "test_subjects", "unlabeled_subjects", "train_setups", "test_setups"):
            if not getattr(self, name):
                raise ValueError(f"SyntheticConfig.{name}: empty")
        if set(self.train_subjects) & set(self.test_subjects):
            raise ValueError("SyntheticConfig: train_subjects and test_subjects overlap: "
                             f"{sorted(set(self.train_subjects) & set(self.test_subjects))}")
        if set(self.train_setups) & set(self.test_setups):
            raise ValueError("SyntheticConfig: train_setups and test_setups overlap: "
                             f"{sorted(set(self.train_setups) & set(self.test_setups))}")
        if self.unlabeled_cameras == "own" and not self.unlabeled_setups:
            raise ValueError("SyntheticConfig.unlabeled_setups: empty while unlabeled_cameras='own'")
        if self.crop_size < 16 or self.crop_margin < 1.0:
            raise ValueError(f"SyntheticConfig: crop_size >= 16 and crop_margin >= 1 needed, "
                             f"got {self.crop_size}, {self.crop_margin}")


def _split_id(split: str) -> int:
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLIT_IDS)}")
    return SPLIT_IDS[split]


def subjects_of(split: str, cfg: SyntheticConfig | None = None) -> list[str]:
    """Subject ids (``"P007"``) of a split."""
    cfg = cfg or SyntheticConfig()
    _split_id(split)
    numbers = {"train": cfg.train_subjects, "test": cfg.test_subjects, "unlabeled": cfg.unlabeled_subjects}[split]
    return [f"P{n:03d}" for n in numbers]


def cameras_of(split: str, cfg: SyntheticConfig | None = None) -> list[str]:
    """Camera ids (``"S003C001"``) of a split."""
    cfg = cfg or SyntheticConfig()
    _split_id(split)
    if split == "unlabeled":
        setups = cfg.unlabeled_setups if cfg.unlabeled_cameras == "own" else cfg.train_setups
    else:
        setups = cfg.train_setups if split == "train" else cfg.test_setups
    return [f"S{s:03d}C{c:03d}" for s in setups for c in range(1, cfg.cameras_per_setup + 1)]


# ----------------------------------------------------------------------------------------
# small geometry helpers
def _rx(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


# ----------------------------------------------------------------------------------------
# subjects
# Bone lengths as fractions of the standing height (they sum to 1 along the vertical chain
# ankle height + shin + thigh + lower spine + upper spine + neck-to-head-top).
_BONES = {"ankle_h": 0.045, "shin": 0.245, "thigh": 0.245, "hip_half": 0.055, "spine_lo": 0.12,
          "spine_hi": 0.165, "sho_half": 0.10, "sho_drop": 0.015, "upper_arm": 0.17, "forearm": 0.145,
          "hand": 0.10, "foot": 0.13, "head": 0.18}
_VERTICAL = ("ankle_h", "shin", "thigh", "spine_lo", "spine_hi", "head")
# Radii as fractions of the height, before the subject's thickness factors.
_RADII = {"upper_arm": 0.025, "forearm": 0.020, "hand": 0.016, "thigh": 0.042, "shin": 0.030,
          "foot": 0.020, "neck": 0.026, "sho_bar": 0.030, "hip_bar": 0.045}
_CHEST = (0.095, 0.060, 0.100)  # lateral, forward, up
_BELLY = (0.085, 0.058, 0.090)
_HEAD = (0.050, 0.058, 0.065)


@dataclass(frozen=True)
class SubjectIdentity:
    """A subject's fixed body and appearance (mm; colours RGB floats in [0, 1])."""

    name: str
    height: float
    bones: dict
    radii: dict
    torso_scale: float
    colours: dict
    hair_line: float


@lru_cache(maxsize=256)
def subject_identity(subject: str, cfg: SyntheticConfig) -> SubjectIdentity:
    """The identity of ``subject`` (e.g. ``"P007"``): a pure function of (cfg.seed, subject)."""
    number = int(subject.lstrip("P"))
    rng = np.random.default_rng([cfg.seed, 101, number])
    height = rng.uniform(*cfg.body_height)
    bones = {k: v * np.exp(rng.normal(0, 0.03)) for k, v in _BONES.items()}
    for pair in (("upper_arm", "forearm"), ("thigh", "shin")):  # limbs keep rough proportion
        mean = np.mean([bones[k] / _BONES[k] for k in pair])
        for k in pair:
            bones[k] = 0.5 * bones[k] + 0.5 * _BONES[k] * mean
    scale = height / sum(bones[k] for k in _VERTICAL)
    bones = {k: float(v * scale) for k, v in bones.items()}
    limbs, legs = np.exp(rng.normal(0, 0.12, 2))
    torso = float(np.clip(np.exp(rng.normal(0, 0.1)), 0.82, 1.25))
    radii = {}
    for k, v in _RADII.items():
        factor = legs if k in ("thigh", "shin", "hip_bar") else limbs
        radii[k] = float(v * height * np.clip(factor, 0.8, 1.3))
    skin = _hsv(rng.uniform(0.02, 0.09), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95))
    hair = _hsv(rng.uniform(0.0, 0.12), rng.uniform(0.2, 0.7), rng.uniform(0.08, 0.55))
    shirt_h = rng.uniform()
    shirt = _hsv(shirt_h, rng.uniform(0.1, 0.85), rng.uniform(0.3, 0.95))
    accent = _hsv(shirt_h + rng.uniform(0.3, 0.7), rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))
    trousers = _hsv(rng.uniform(), rng.uniform(0.1, 0.7), rng.uniform(0.12, 0.6))
    shoes = _hsv(rng.uniform(), rng.uniform(0.0, 0.6), rng.uniform(0.08, 0.85))
    long_sleeves = bool(rng.uniform() < 0.6)
    mix = lambda a, b, w: (1 - w) * a + w * b  # noqa: E731
    colours = {
        "skin": skin, "hair": hair, "shirt": shirt, "chest": shirt, "head": skin, "print": accent,
        "lsleeve": mix(shirt, accent, 0.6), "rsleeve": shirt,
        "lforearm": mix(shirt, accent, 0.6) if long_sleeves else skin, "rforearm": shirt if long_sleeves else skin,
        "ltrousers": mix(trousers, accent, 0.45), "rtrousers": trousers,
        "lshoe": mix(shoes, accent, 0.6), "rshoe": shoes, "belt": trousers * 0.7,
    }
    return SubjectIdentity(subject, float(height), bones, radii, torso, colours, float(rng.uniform(0.1, 0.5)))


# ----------------------------------------------------------------------------------------
# poses
_LIMITS = {  # degrees
    "spine_flex": (-25, 95), "spine_lat": (-30, 30), "spine_twist": (-40, 40),
    "neck_flex": (-40, 50), "neck_lat": (-30, 30), "neck_twist": (-60, 60),
    "sh_flex": (-50, 180), "sh_abd": (-15, 170), "sh_twist": (-40, 70), "elbow": (0, 150),
    "hip_flex": (-30, 125), "hip_abd": (-15, 50), "hip_rot": (-40, 40), "knee": (0, 150), "ankle": (-30, 40),
}


def _pose_angles(rng: np.random.Generator, family: str) -> dict:
    """Joint angles (radians) of one pose of ``family``, clipped to anatomical limits."""
    U = rng.uniform
    a = {"spine_flex": U(-8, 12), "spine_lat": rng.normal(0, 5), "spine_twist": rng.normal(0, 10),
         "neck_flex": U(-15, 25), "neck_lat": rng.normal(0, 8), "neck_twist": rng.normal(0, 25)}
    for s in "lr":
        a.update({f"{s}sh_flex": U(-20, 35), f"{s}sh_abd": U(3, 25), f"{s}sh_twist": U(-20, 40),
                  f"{s}elbow": U(5, 70), f"{s}hip_flex": U(-8, 12), f"{s}hip_abd": U(0, 12),
                  f"{s}hip_rot": rng.normal(0, 8), f"{s}knee": U(0, 15), f"{s}ankle": rng.normal(0, 5)})
    sides = ("l", "r") if U() < 0.5 else ("r", "l")  # (first, second) for asymmetric families
    if family == "walking":
        phase, amp = U(0, 2 * np.pi), U(15, 35)
        for s, psi in (("r", phase), ("l", phase + np.pi)):
            a[f"{s}hip_flex"] = amp * np.sin(psi) + 5
            a[f"{s}knee"] = 5 + U(35, 60) * max(0.0, np.cos(psi - 0.6))
            a[f"{s}sh_flex"] = -0.8 * amp * np.sin(psi + np.pi) * U(0.6, 1.2)
            a[f"{s}elbow"] = U(10, 45)
            a[f"{s}hip_abd"] = U(0, 6)
    elif family == "arms_raised":
        for s in "lr":
            if U() < 0.75:
                if U() < 0.5:
                    a[f"{s}sh_flex"], a[f"{s}sh_abd"] = U(60, 180), U(0, 40)
                else:
                    a[f"{s}sh_flex"], a[f"{s}sh_abd"] = U(-10, 30), U(60, 170)
                a[f"{s}elbow"] = U(0, 100)
    elif family == "bending":
        a["spine_flex"] = U(35, 90)
        a["neck_flex"] = U(-35, 10)
        for s in "lr":
            a[f"{s}sh_flex"] = a["spine_flex"] * U(0.6, 1.15) + rng.normal(0, 12)
            a[f"{s}elbow"], a[f"{s}knee"], a[f"{s}hip_flex"] = U(0, 50), U(0, 30), U(0, 20)
    elif family == "sitting":
        a["spine_flex"] = U(-10, 25)
        for s in "lr":
            a[f"{s}hip_flex"], a[f"{s}knee"], a[f"{s}hip_abd"] = U(75, 105), U(70, 115), U(0, 20)
            a[f"{s}sh_flex"], a[f"{s}elbow"] = U(0, 55), U(30, 110)
    elif family == "crouching":
        a["spine_flex"] = U(20, 55)
        for s in "lr":
            a[f"{s}hip_flex"], a[f"{s}knee"], a[f"{s}hip_abd"] = U(90, 125), U(105, 150), U(5, 30)
            a[f"{s}sh_flex"], a[f"{s}elbow"] = U(20, 85), U(10, 90)
            a[f"{s}ankle"] = U(10, 35)
    elif family == "lunge":
        front, back = sides
        a[f"{front}hip_flex"], a[f"{front}knee"] = U(50, 95), U(50, 100)
        a[f"{back}hip_flex"], a[f"{back}knee"] = U(-30, -10), U(0, 40)
        a[f"{back}ankle"] = U(10, 40)
        a["spine_flex"] = U(-5, 20)
        if U() < 0.5:
            for s in "lr":
                a[f"{s}sh_flex"], a[f"{s}sh_abd"], a[f"{s}elbow"] = U(40, 170), U(0, 60), U(0, 60)
    elif family == "kicking":
        kick, stand = sides
        a[f"{kick}hip_flex"], a[f"{kick}knee"] = U(30, 95), U(0, 70)
        a[f"{stand}knee"] = U(0, 20)
        a["spine_flex"] = U(-15, 10)
        for s in "lr":
            a[f"{s}sh_abd"], a[f"{s}sh_flex"] = U(15, 75), U(-10, 45)
    elif family != "standing":
        raise ValueError(f"unknown pose family {family!r}; known: {', '.join(FAMILIES)}")
    out = {}
    for (key, value), noise in zip(a.items(), rng.normal(0, 3, len(a)).tolist()):
        lo, hi = _LIMITS[key[1:] if key[0] in "lr" and key[1:] in _LIMITS else key]
        out[key] = np.radians(min(max(float(value) + noise, lo), hi))
    return out


@dataclass(frozen=True)
class _Prims:
    """The body as primitives: the first ``ne`` are ellipsoids, the others capsules.

    Attributes:
        ends: (n, 2, 3) capsule end points (an ellipsoid: its centre, twice).
        radius: (n,) capsule radius (an ellipsoid: its largest radius).
        axes: (ne, 3, 3) ellipsoid axes as columns (lateral, forward, up).
        radii: (ne, 3) ellipsoid radii along those axes.
        names: (n,) colour names.
    """

    ends: np.ndarray
    radius: np.ndarray
    axes: np.ndarray
    radii: np.ndarray
    names: tuple

    @property
    def ne(self) -> int:
        return len(self.axes)

    def moved(self, rotation: np.ndarray, offset: np.ndarray) -> _Prims:
        """Rotate about the origin, then translate (body → world)."""
        return _Prims(self.ends @ rotation.T + offset, self.radius, rotation @ self.axes, self.radii, self.names)

    def seen_by(self, cam: Camera) -> _Prims:
        """World → camera coordinates."""
        return _Prims((self.ends - cam.t) @ cam.R.T, self.radius, cam.R @ self.axes, self.radii, self.names)

    def lowest(self) -> float:
        """Lowest z of the body surface (exact for capsules and ellipsoids)."""
        caps = np.min(self.ends[self.ne:, :, 2] - self.radius[self.ne:, None])
        ells = np.min(self.ends[:self.ne, 0, 2] - np.sqrt(np.sum((self.axes[:, 2, :] * self.radii) ** 2, 1)))
        return float(min(caps, ells))


def _body(ident: SubjectIdentity, ang: dict) -> tuple[np.ndarray, _Prims]:
    """Forward kinematics in the body frame (x right, y forward, z up; pelvis above origin).

    Returns joints (17, 3) and the body's primitives.
    """
    b, r, H = ident.bones, ident.radii, ident.height
    J = np.zeros((17, 3))
    ells: list = []
    caps: list = []
    pelvis = np.array([0.0, 0.0, b["ankle_h"] + b["shin"] + b["thigh"]])
    J[_J["pelv"]] = pelvis
    half = lambda k: ang[k] / 2  # noqa: E731
    R1 = _rz(half("spine_twist")) @ _rx(-half("spine_flex")) @ _ry(half("spine_lat"))
    spine = pelvis + R1 @ [0, 0, b["spine_lo"]]
    R2 = R1 @ _rz(half("spine_twist")) @ _rx(-half("spine_flex")) @ _ry(half("spine_lat"))
    neck = spine + R2 @ [0, 0, b["spine_hi"]]
    Rh = R2 @ _rz(ang["neck_twist"]) @ _rx(-ang["neck_flex"]) @ _ry(ang["neck_lat"])
    J[_J["spin"]], J[_J["neck"]] = spine, neck
    J[_J["head"]] = neck + Rh @ np.array([0, 0.3, 0.53]) * b["head"]
    J[_J["htop"]] = neck + Rh @ np.array([0, 0.0, 1.0]) * b["head"]
    ts = ident.torso_scale
    ells.append((neck + R2 @ [0, 0, -0.09 * H], R2, np.array(_CHEST) * H * [ts, ts, 1], "chest"))
    ells.append((pelvis + R1 @ [0, 0, 0.075 * H], R1, np.array(_BELLY) * H * [ts, ts, 1], "shirt"))
    head_r = np.array(_HEAD) * b["head"] / _BONES["head"]
    ells.append((neck + Rh @ [0, 0.01 * H, b["head"] - head_r[2]], Rh, head_r, "head"))
    caps.append((neck - R2 @ [0, 0, 0.02 * H], neck + Rh @ [0, 0, 0.35 * b["head"]], r["neck"], "skin"))
    sho = {}
    for s, sign in (("l", -1.0), ("r", 1.0)):
        sho[s] = neck + R2 @ [sign * b["sho_half"], 0, -b["sho_drop"]]
        Rs = R2 @ _ry(-sign * ang[f"{s}sh_abd"]) @ _rx(ang[f"{s}sh_flex"]) @ _rz(sign * ang[f"{s}sh_twist"])
        elbow = sho[s] + Rs @ [0, 0, -b["upper_arm"]]
        Re = Rs @ _rx(ang[f"{s}elbow"])
        wrist = elbow + Re @ [0, 0, -b["forearm"]]
        hand_end = wrist + Re @ _rx(0.15) @ [0, 0, -0.8 * b["hand"]]
        J[_J[f"{s}sho"]], J[_J[f"{s}elb"]], J[_J[f"{s}wri"]] = sho[s], elbow, wrist
        caps.append((sho[s], elbow, r["upper_arm"], f"{s}sleeve"))
        caps.append((elbow, wrist, r["forearm"], f"{s}forearm"))
        caps.append((wrist + Re @ [0, 0, -0.25 * b["hand"]], hand_end, r["hand"], "skin"))

        hip = pelvis + [sign * b["hip_half"], 0, 0]
        Rl = _ry(-sign * ang[f"{s}hip_abd"]) @ _rx(ang[f"{s}hip_flex"]) @ _rz(sign * ang[f"{s}hip_rot"])
        knee = hip + Rl @ [0, 0, -b["thigh"]]
        Rk = Rl @ _rx(-ang[f"{s}knee"])
        ankle = knee + Rk @ [0, 0, -b["shin"]]
        Ra = Rk @ _rx(ang[f"{s}ankle"])
        heel = ankle + Ra @ np.array([0, -0.25, -0.35]) * b["foot"]
        toe = ankle + Ra @ np.array([0, 0.85, -0.3]) * b["foot"]
        J[_J[f"{s}hip"]], J[_J[f"{s}kne"]], J[_J[f"{s}ank"]] = hip, knee, ankle
        caps.append((hip, knee, r["thigh"], f"{s}trousers"))
        caps.append((knee, ankle, r["shin"], f"{s}trousers"))
        caps.append((heel, toe, r["foot"], f"{s}shoe"))
    caps.append((sho["l"], sho["r"], r["sho_bar"], "shirt"))
    caps.append((J[_J["lhip"]], J[_J["rhip"]], r["hip_bar"], "belt"))
    ends = np.array([[c, c] for c, _, _, _ in ells] + [[A, B] for A, B, _, _ in caps])
    radius = np.array([np.max(rr) for _, _, rr, _ in ells] + [rr for _, _, rr, _ in caps])
    prims = _Prims(ends, radius, np.array([e[1] for e in ells]), np.array([e[2] for e in ells]),
                   tuple(e[3] for e in ells) + tuple(c[3] for c in caps))
    return J, prims


# ----------------------------------------------------------------------------------------
# rooms and sensors
@dataclass(frozen=True)
class _Room:
    wall_y: float
    wall_x: float
    ceiling: float
    cam_dist: float
    cam_height: float
    light: np.ndarray  # unit, world, towards the light
    ambient: float
    diffuse: float
    textures: dict     # plane name -> (uint8 image, texel mm)


def _texture_wall(rng: np.random.Generator, width: float, height: float, texel: float = 20.0) -> np.ndarray:
    h, w = int(height / texel), int(width / texel)
    base = _hsv(rng.uniform(), rng.uniform(0.03, 0.35), rng.uniform(0.45, 0.95))
    img = np.ones((h, w, 3), np.float32) * base
    low = cv2.resize(rng.normal(0, 1, (3, 8)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    img *= (1 + 0.07 * low)[..., None]
    for _ in range(rng.integers(3, 9)):  # doors, posters, cabinets, windows, shelves
        kind = rng.integers(3)
        bw = rng.uniform(400, 1800) / texel
        bh = (rng.uniform(1800, 2200) if kind == 0 else rng.uniform(300, 1400)) / texel
        x = rng.uniform(0, w - bw)
        y = h - bh if kind != 1 else rng.uniform(0.1 * h, h - bh - 0.1 * h)
        colour = _hsv(rng.uniform(), rng.uniform(0.05, 0.9), rng.uniform(0.1, 0.95))
        p0, p1 = (int(x), int(max(y, 0))), (int(x + bw), int(min(y + bh, h - 1)))
        cv2.rectangle(img, p0, p1, colour.tolist(), -1)
        if kind == 1 and rng.uniform() < 0.6:  # poster with a picture: a few colour bands
            for k in range(rng.integers(2, 5)):
                cv2.rectangle(img, (p0[0] + 2, p0[1] + 2 + k * (p1[1] - p0[1]) // 5),
                              (p1[0] - 2, p0[1] + (k + 1) * (p1[1] - p0[1]) // 5),
                              _hsv(rng.uniform(), rng.uniform(0.3, 1), rng.uniform(0.2, 1)).tolist(), -1)
        cv2.rectangle(img, p0, p1, (base * 0.45).tolist(), 1)
    board = max(2, int(rng.uniform(60, 120) / texel))
    img[h - board:] = _hsv(rng.uniform(), rng.uniform(0, 0.5), rng.uniform(0.1, 0.8))
    img *= 1 + rng.normal(0, 0.025, (h, w, 1)).astype(np.float32)
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def _texture_floor(rng: np.random.Generator, size: float = 4800.0, texel: float = 10.0) -> np.ndarray:
    n = int(size / texel)
    kind = rng.integers(3)
    c1 = _hsv(rng.uniform(), rng.uniform(0.05, 0.6), rng.uniform(0.25, 0.9))
    c2 = _hsv(rng.uniform(), rng.uniform(0.05, 0.6), rng.uniform(0.15, 0.9))
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


@lru_cache(maxsize=64)
def _room(cfg: SyntheticConfig, setup: int) -> _Room:
    rng = np.random.default_rng([cfg.seed, 201, setup])
    cam_height = rng.uniform(*cfg.camera_height)
    elevation, azimuth = rng.uniform(np.radians(30), np.radians(70)), rng.uniform(0, 2 * np.pi)
    light = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])
    ceiling = rng.uniform(2700, 3300)
    textures = {
        "floor": (_texture_floor(rng), 10.0),
        "back": (_texture_wall(rng, 12000, ceiling), 20.0),
        "side": (_texture_wall(rng, 12000, ceiling), 20.0),
        "front": (_texture_wall(rng, 12000, ceiling), 20.0),
    }
    ceil = np.ones((64, 64, 3), np.float32) * _hsv(0.1, 0.05, rng.uniform(0.75, 0.95))
    ceil[::16] *= 0.8
    ceil[:, ::16] *= 0.8
    textures["ceiling"] = ((ceil * 255).astype(np.uint8), 40.0)
    return _Room(wall_y=rng.uniform(2000, 3400), wall_x=rng.uniform(3000, 4200), ceiling=ceiling,
                 cam_dist=rng.uniform(2400, 3200), cam_height=cam_height, light=light,
                 ambient=rng.uniform(0.35, 0.5), diffuse=rng.uniform(0.45, 0.65), textures=textures)


@dataclass(frozen=True)
class _Sensor:
    rgb: Camera          # full colour frame
    depth: Camera        # full depth frame (same R, t)
    room: _Room
    bg_rgb: np.ndarray   # (H, W, 3) uint8 room as seen by the colour camera
    bg_depth: np.ndarray  # (h, w) float32 z of the room, depth camera


def _parse_camera(camera: str) -> tuple[int, int]:
    try:
        return int(camera[1:4]), int(camera[5:8])
    except ValueError:
        raise ValueError(f"camera id {camera!r}: expected 'S###C###'") from None


def _room_planes(room: _Room) -> list:
    """(name, normal n, offset d with n·p = d, in-plane axes u, v) of the room's planes."""
    e = np.eye(3)
    return [("floor", e[2], 0.0, e[0], e[1]),
            ("ceiling", e[2], room.ceiling, e[0], e[1]),
            ("back", e[1], room.wall_y, e[0], e[2]),
            ("front", e[1], -(room.cam_dist + 1500), -e[0], e[2]),
            ("side", e[0], room.wall_x, e[1], e[2]),
            ("side", e[0], -room.wall_x, -e[1], e[2])]


def _trace_room(room: _Room, cam: Camera, width: int, height: int, textured: bool):
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
def _sensor(cfg: SyntheticConfig, camera: str) -> _Sensor:
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
    return _Sensor(rgb, depth, room, bg_rgb, bg_depth)


@lru_cache(maxsize=4)
def _noise_tile(size: int, sigma: float) -> np.ndarray:
    """A fixed (size, size, 3) int16 tile of Gaussian noise; samples take random windows of it."""
    return np.round(np.random.default_rng(12345).standard_normal((size, size, 3)) * sigma).astype(np.int16)


# ----------------------------------------------------------------------------------------
# rasterisation
def _spheres(prims: _Prims, K: np.ndarray, pad: float):
    """Projected bounding spheres: u, v, radius in pixels, each (n, 2)."""
    z = prims.ends[..., 2]
    u = K[0, 0] * prims.ends[..., 0] / z + K[0, 2]
    v = K[1, 1] * prims.ends[..., 1] / z + K[1, 2]
    r = prims.radius[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        rad = pad * K[0, 0] * r / np.where(z - r > 1, z - r, np.nan)
    return u, v, rad


def _projected_box(prims: _Prims, K: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) around the projected primitives."""
    u, v, rad = _spheres(prims, K, 1.0)
    return np.array([np.min(u - rad), np.min(v - rad), np.max(u + rad), np.max(v + rad)])


def _rasterise(prims: _Prims, K: np.ndarray, width: int, height: int, zbuf: np.ndarray):
    """Z-buffer the primitives (camera coordinates) into ``zbuf`` in place.

    Every pixel of a primitive's screen window casts the exact ray–capsule or
    ray–ellipsoid intersection; the nearest surface wins. Rays are (X, Y, 1) with X, Y
    the normalised image coordinates, so the ray parameter is z itself.
    Returns ids (h, w) int8 (−1: room), X (1, w), Y (h, 1).
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
            s[h < 0] = _INF
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
                s_cap[hc < 0] = _INF
                np.copyto(s, s_cap, where=on_cap)
            s[miss] = _INF
        zw = zbuf[y0:y1, x0:x1]
        closer = s < zw
        np.copyto(zw, s, where=closer)
        np.copyto(ids[y0:y1, x0:x1], np.int8(k), where=closer)
    return ids, X, Y


def _shade(image: np.ndarray, prims: _Prims, ids: np.ndarray, zbuf: np.ndarray, X, Y, colours: dict,
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


# ----------------------------------------------------------------------------------------
# sampling
def _place(rng: np.random.Generator, cfg: SyntheticConfig, sensor: _Sensor, body: _Prims):
    """Yaw and floor position of the person; retried so the body stays inside the frame."""
    room, cam = sensor.room, sensor.rgb
    yaw = rng.uniform(0, 2 * np.pi)
    Rz = _rz(yaw)
    forward = cam.R[2].copy()
    forward[2] = 0
    forward /= np.linalg.norm(forward)
    half_fov = np.arctan(cfg.rgb_size[0] / 2 / cam.K[0, 0])
    distance = rng.uniform(*cfg.person_distance)
    angle = rng.uniform(-0.6, 0.6) * half_fov
    lift = -body.lowest()
    W, H = cfg.rgb_size
    for _ in range(8):
        direction = _rz(angle) @ forward
        limits = [cfg.person_distance[1]]  # stay 700 mm inside the room
        for axis, bound in ((0, room.wall_x - 700), (0, -(room.wall_x - 700)), (1, room.wall_y - 700)):
            if direction[axis] * bound > 0:
                limits.append((bound - cam.t[axis]) / direction[axis])
        distance = float(min(distance, *limits))
        ground = cam.t + distance * direction
        offset = np.array([ground[0], ground[1], lift])
        prims = body.moved(Rz, offset)
        box = _projected_box(prims.seen_by(cam), cam.K)
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
    rng = np.random.default_rng([cfg.seed, _split_id(split), index])
    subjects, cameras = subjects_of(split, cfg), cameras_of(split, cfg)
    subject = subjects[rng.integers(len(subjects))]
    camera = cameras[rng.integers(len(cameras))]
    family = FAMILIES[rng.integers(len(FAMILIES))]
    ident = subject_identity(subject, cfg)
    sensor = _sensor(cfg, camera)
    room, cam = sensor.room, sensor.rgb

    joints_body, prims_body = _body(ident, _pose_angles(rng, family))
    Rz, offset, prims, distance, yaw = _place(rng, cfg, sensor, prims_body)
    joints = joints_body @ Rz.T + offset

    # ---- crop cameras
    box = _projected_box(prims.seen_by(cam), cam.K)
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
    zbuf = np.full((S, S), _INF, np.float32)
    ids, X, Y = _rasterise(prims_cam, crop.K, S, S, zbuf)
    light_cam, up_cam = cam.R @ room.light, cam.R @ np.array([0, 0, 1.0])
    _shade(rgb, prims_cam, ids, zbuf, X, Y, ident.colours, light_cam, up_cam,
           room.ambient, room.diffuse, ident.hair_line)
    rgb = cv2.convertScaleAbs(rgb, alpha=rng.uniform(0.85, 1.15))  # exposure
    rgb = cv2.GaussianBlur(rgb, (3, 3), 0.5)  # optics
    oy, ox = rng.integers(0, S, 2)
    rgb = cv2.add(rgb, _noise_tile(2 * S, cfg.rgb_noise)[oy:oy + S, ox:ox + S], dtype=cv2.CV_8U)
    person_rgb = ids >= 0
    (r0, r1), (c0, c1) = _inside_range(S, y0, scale, H), _inside_range(S, x0, scale, W)
    for mask in (rgb, person_rgb):  # outside the sensor's frame: black, no person
        mask[:r0], mask[r1:], mask[:, :c0], mask[:, c1:] = 0, 0, 0, 0

    # ---- depth
    Wd, Hd = cfg.depth_size
    zd = np.full((hd, wd), _INF, np.float32)
    sx0, sy0, sx1, sy1 = max(xd0, 0), max(yd0, 0), min(xd1 + 1, Wd), min(yd1 + 1, Hd)
    if sx0 < sx1 and sy0 < sy1:
        zd[sy0 - yd0:sy1 - yd0, sx0 - xd0:sx1 - xd0] = sensor.bg_depth[sy0:sy1, sx0:sx1]
    ids_d, Xd, Yd = _rasterise(prims.seen_by(dcrop), dcrop.K, wd, hd, zd)
    if cfg.depth_kind == "distance":
        zd = zd * np.sqrt(Xd * Xd + Yd * Yd + 1)
    inside_d = np.zeros((hd, wd), bool)
    inside_d[sy0 - yd0:sy1 - yd0, sx0 - xd0:sx1 - xd0] = True
    depth = _sensor_depth(rng, zd, inside_d, cfg)
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
    centre = (joints[_J["lank"]] + joints[_J["rank"]] + joints[_J["pelv"]]) / 3
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


def _sensor_depth(rng: np.random.Generator, z: np.ndarray, inside: np.ndarray, cfg: SyntheticConfig) -> np.ndarray:
    """Noise-free depth (mm) → Kinect-like uint16 depth with 0 for invalid pixels."""
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
