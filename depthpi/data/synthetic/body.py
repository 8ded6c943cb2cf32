"""The procedural body model: subject identities, forward kinematics, and the body as primitives.

A *subject* ``P…`` has a fixed identity drawn from (seed, subject): height 1.45–2.0 m,
bone lengths proportional to it with ±3 % per-bone variation, limb/torso thickness,
skin/hair/clothing colours. The left sleeve, trouser leg and shoe are blended towards
a per-subject accent colour, so left and right are distinguishable in RGB.

Forward kinematics turns joint angles (radians, from :mod:`.poses`) into the 17 H36M
joints (mm) in the body frame (x right, y forward, z up) and into 18 primitives:
15 capsules (limbs, hands, feet, neck, shoulder and hip bars) and 3 ellipsoids (chest,
abdomen, head), which :class:`Prims` moves into the world and into a camera's frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from depthpi.camera import Camera
from depthpi.data.synthetic.colours import hsv
from depthpi.data.synthetic.config import SyntheticConfig
from depthpi.skeleton import H36M_17

_J = {name: i for i, name in enumerate(H36M_17.joint_names)}


def rx(a: float) -> np.ndarray:
    """(3, 3) rotation by ``a`` radians about the x axis."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def ry(a: float) -> np.ndarray:
    """(3, 3) rotation by ``a`` radians about the y axis."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def rz(a: float) -> np.ndarray:
    """(3, 3) rotation by ``a`` radians about the z axis."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


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
    skin = hsv(rng.uniform(0.02, 0.09), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95))
    hair = hsv(rng.uniform(0.0, 0.12), rng.uniform(0.2, 0.7), rng.uniform(0.08, 0.55))
    shirt_h = rng.uniform()
    shirt = hsv(shirt_h, rng.uniform(0.1, 0.85), rng.uniform(0.3, 0.95))
    accent = hsv(shirt_h + rng.uniform(0.3, 0.7), rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))
    trousers = hsv(rng.uniform(), rng.uniform(0.1, 0.7), rng.uniform(0.12, 0.6))
    shoes = hsv(rng.uniform(), rng.uniform(0.0, 0.6), rng.uniform(0.08, 0.85))
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


@dataclass(frozen=True)
class Prims:
    """The body as primitives: the first ``ne`` are ellipsoids, the others capsules (mm, any frame).

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
        """Number of ellipsoids."""
        return len(self.axes)

    def moved(self, rotation: np.ndarray, offset: np.ndarray) -> Prims:
        """Rotate about the origin, then translate (body → world)."""
        return Prims(self.ends @ rotation.T + offset, self.radius, rotation @ self.axes, self.radii, self.names)

    def seen_by(self, cam: Camera) -> Prims:
        """World → camera coordinates."""
        return Prims((self.ends - cam.t) @ cam.R.T, self.radius, cam.R @ self.axes, self.radii, self.names)

    def lowest(self) -> float:
        """Lowest z of the body surface (exact for capsules and ellipsoids)."""
        caps = np.min(self.ends[self.ne:, :, 2] - self.radius[self.ne:, None])
        ells = np.min(self.ends[:self.ne, 0, 2] - np.sqrt(np.sum((self.axes[:, 2, :] * self.radii) ** 2, 1)))
        return float(min(caps, ells))


def posed_body(ident: SubjectIdentity, ang: dict) -> tuple[np.ndarray, Prims]:
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
    R1 = rz(half("spine_twist")) @ rx(-half("spine_flex")) @ ry(half("spine_lat"))
    spine = pelvis + R1 @ [0, 0, b["spine_lo"]]
    R2 = R1 @ rz(half("spine_twist")) @ rx(-half("spine_flex")) @ ry(half("spine_lat"))
    neck = spine + R2 @ [0, 0, b["spine_hi"]]
    Rh = R2 @ rz(ang["neck_twist"]) @ rx(-ang["neck_flex"]) @ ry(ang["neck_lat"])
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
        Rs = R2 @ ry(-sign * ang[f"{s}sh_abd"]) @ rx(ang[f"{s}sh_flex"]) @ rz(sign * ang[f"{s}sh_twist"])
        elbow = sho[s] + Rs @ [0, 0, -b["upper_arm"]]
        Re = Rs @ rx(ang[f"{s}elbow"])
        wrist = elbow + Re @ [0, 0, -b["forearm"]]
        hand_end = wrist + Re @ rx(0.15) @ [0, 0, -0.8 * b["hand"]]
        J[_J[f"{s}sho"]], J[_J[f"{s}elb"]], J[_J[f"{s}wri"]] = sho[s], elbow, wrist
        caps.append((sho[s], elbow, r["upper_arm"], f"{s}sleeve"))
        caps.append((elbow, wrist, r["forearm"], f"{s}forearm"))
        caps.append((wrist + Re @ [0, 0, -0.25 * b["hand"]], hand_end, r["hand"], "skin"))

        hip = pelvis + [sign * b["hip_half"], 0, 0]
        Rl = ry(-sign * ang[f"{s}hip_abd"]) @ rx(ang[f"{s}hip_flex"]) @ rz(sign * ang[f"{s}hip_rot"])
        knee = hip + Rl @ [0, 0, -b["thigh"]]
        Rk = Rl @ rx(-ang[f"{s}knee"])
        ankle = knee + Rk @ [0, 0, -b["shin"]]
        Ra = Rk @ rx(ang[f"{s}ankle"])
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
    prims = Prims(ends, radius, np.array([e[1] for e in ells]), np.array([e[2] for e in ells]),
                   tuple(e[3] for e in ells) + tuple(c[3] for c in caps))
    return J, prims
