"""Kinect v2 skeletons (NTU RGB+D, PKU-MMD): text parsers, camera frame, 25 → 17 joints.

Kinect camera space (metres, x to the sensor's left, y up, z along its view) maps into
ours (mm, x right, y down, z forward) by the 180° rotation about z
(:func:`kinect_to_camera`), never a reflection. The SDK's frames are mirror images;
whether a source's are is measured from its 2D–3D pairs (:func:`fit_kinect_intrinsics`),
and converters store unmirrored crops with anatomical left/right labels. The 25 joints
map to H36M_17 by name (:data:`KINECT_TO_H36M`; head and head top are formed from Neck and
Head); a mapped joint is valid when every joint it is formed from is tracked.

The full mapping table and the mirroring argument are in docs/datasets.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from depthpi.data.depth import fit_intrinsics
from depthpi.skeleton import H36M_17

KINECT_JOINTS = (
    "SpineBase", "SpineMid", "Neck", "Head", "ShoulderLeft", "ElbowLeft", "WristLeft", "HandLeft",
    "ShoulderRight", "ElbowRight", "WristRight", "HandRight", "HipLeft", "KneeLeft", "AnkleLeft",
    "FootLeft", "HipRight", "KneeRight", "AnkleRight", "FootRight", "SpineShoulder", "HandTipLeft",
    "ThumbLeft", "HandTipRight", "ThumbRight")
K = {name: i for i, name in enumerate(KINECT_JOINTS)}

# Direct correspondences (H36M_17 name → Kinect joint); head and htop are formed below.
KINECT_TO_H36M = {
    "pelv": "SpineBase", "rhip": "HipRight", "rkne": "KneeRight", "rank": "AnkleRight",
    "lhip": "HipLeft", "lkne": "KneeLeft", "lank": "AnkleLeft", "spin": "SpineMid",
    "neck": "SpineShoulder", "lsho": "ShoulderLeft", "lelb": "ElbowLeft", "lwri": "WristLeft",
    "rsho": "ShoulderRight", "relb": "ElbowRight", "rwri": "WristRight",
}
HEAD_MIX = 0.5        # head = Neck + HEAD_MIX · (Head − Neck)
HEAD_TOP_EXTRA = 0.5  # htop = Head + HEAD_TOP_EXTRA · (Head − Neck)

# Kinect v2 nominal frame sizes (width, height).
RGB_SIZE = (1920, 1080)
DEPTH_SIZE = (512, 424)

_ROTATION = np.diag([-1.0, -1.0, 1.0])  # Kinect camera space → depthpi camera frame (det +1)


def kinect_to_camera(points_m: np.ndarray) -> np.ndarray:
    """(..., 3) Kinect camera space, metres → (..., 3) depthpi camera frame, mm."""
    return np.asarray(points_m, np.float64) @ _ROTATION.T * 1000.0


def kinect_to_h36m17(points: np.ndarray, tracked: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(25, 3) Kinect joints (any frame, any unit) → (17, 3) H36M_17 joints and (17,) validity.

    Args:
        points: (25, 3) joints in KINECT_JOINTS order.
        tracked: (25,) bool, joint tracked (state 2); default all tracked.
    """
    points = np.asarray(points, np.float64)
    tracked = np.ones(25, bool) if tracked is None else np.asarray(tracked, bool)
    out = np.zeros((17, 3))
    valid = np.zeros(17, bool)
    finite = np.isfinite(points).all(1)
    ok = tracked & finite
    for name, kname in KINECT_TO_H36M.items():
        j = H36M_17.index(name)
        out[j] = points[K[kname]]
        valid[j] = ok[K[kname]]
    neck, head = points[K["Neck"]], points[K["Head"]]
    both = ok[K["Neck"]] & ok[K["Head"]]
    out[H36M_17.index("head")] = neck + HEAD_MIX * (head - neck)
    out[H36M_17.index("htop")] = head + HEAD_TOP_EXTRA * (head - neck)
    valid[H36M_17.index("head")] = valid[H36M_17.index("htop")] = both
    return out, valid


# --- NTU RGB+D .skeleton text files -------------------------------------------------
@dataclass
class Body:
    """One tracked body of one frame.

    Attributes:
        body_id: Kinect tracking id (string, as in the file).
        joints: (25, 12) float: x y z (m), depthX depthY, colorX colorY, orientation
            w x y z, tracking state.
    """

    body_id: str
    joints: np.ndarray

    @property
    def xyz(self) -> np.ndarray:
        return self.joints[:, 0:3]

    @property
    def tracked(self) -> np.ndarray:
        return self.joints[:, 11] == 2

    @property
    def usable(self) -> bool:
        """All 25 joints finite with z > 0 (a body the sensor actually placed)."""
        return bool(np.isfinite(self.joints).all() and (self.joints[:, 2] > 0).all())


@dataclass
class SkeletonFile:
    """A parsed ``.skeleton`` file.

    Attributes:
        frames: per frame, the list of well-formed bodies.
        frame_errors: frame index → reason, for frames where some line was malformed
            (bodies with a malformed line are dropped; the frame keeps the others).
        declared_frames: the count on the first line.
        error: set when the file could not be parsed past some point (truncated file,
            malformed count line); ``frames`` then holds the frames read before it.
    """

    frames: list[list[Body]] = field(default_factory=list)
    frame_errors: dict[int, str] = field(default_factory=dict)
    declared_frames: int = 0
    error: str | None = None


def parse_ntu_skeleton(text: str) -> SkeletonFile:
    """Parse the NTU RGB+D ``.skeleton`` text format (never raises on bad content).

    Layout: frame count; per frame a body count; per body a 10-value info line (bodyID
    clipedEdges handLeftConfidence handLeftState handRightConfidence handRightState
    isResticted leanX leanY trackingState), a joint count (25) and one 12-value line per
    joint (x y z depthX depthY colorX colorY orientationW X Y Z trackingState).
    """
    lines = text.splitlines()
    result = SkeletonFile()
    pos = 0

    def next_line() -> str:
        nonlocal pos
        if pos >= len(lines):
            raise EOFError
        pos += 1
        return lines[pos - 1].strip()

    def count(line: str, what: str) -> int:
        try:
            value = int(float(line.split()[0]))
        except (ValueError, IndexError):
            raise ValueError(f"line {pos}: malformed {what} {line[:40]!r}") from None
        if value < 0 or value > 1000:
            raise ValueError(f"line {pos}: implausible {what} {value}")
        return value

    try:
        result.declared_frames = count(next_line(), "frame count")
    except EOFError:
        result.error = "empty file"
        return result
    except ValueError as err:
        result.error = str(err)
        return result
    try:
        for f in range(result.declared_frames):
            bodies = []
            for _ in range(count(next_line(), "body count")):
                info = next_line().split()
                body_id = info[0] if info else "?"
                n_joints = count(next_line(), "joint count")
                rows, bad = [], None
                for _ in range(n_joints):
                    line = next_line()
                    try:
                        row = [float(v) for v in line.split()]
                    except ValueError:
                        row = []
                    if len(row) != 12:
                        bad = bad or f"line {pos}: malformed joint line {line[:40]!r}"
                    rows.append(row)
                if len(info) != 10:
                    bad = bad or f"line {pos - n_joints - 1}: malformed body info line"
                if n_joints != 25:
                    bad = bad or f"body with {n_joints} joints (expected 25)"
                if bad:
                    result.frame_errors[f] = bad
                    continue
                bodies.append(Body(body_id, np.array(rows, np.float64)))
            result.frames.append(bodies)
    except EOFError:
        result.error = f"truncated after {len(result.frames)} of {result.declared_frames} frames"
    except ValueError as err:
        result.error = f"{err}; unreadable from frame {len(result.frames)} on"
    return result


# --- PKU-MMD skeleton text files ---------------------------------------------------
def parse_pku_skeleton(text: str) -> tuple[list[list[np.ndarray]], dict[int, str]]:
    """Parse a PKU-MMD skeleton file: one line per frame of 150 numbers.

    Each line holds two bodies × 25 joints × (x y z) in Kinect camera space (metres); an
    absent body is all zeros. Returns per frame the list of present bodies ((25, 3)
    arrays) and frame index → reason for malformed lines (those frames get no body).
    """
    frames, errors = [], {}
    for f, line in enumerate(text.splitlines()):
        try:
            values = np.array([float(v) for v in line.split()], np.float64)
        except ValueError:
            values = np.zeros(0)
        if values.size != 150 or not np.isfinite(values).all():
            errors[f] = f"line {f + 1}: malformed skeleton line ({values.size} numbers, expected 150)"
            frames.append([])
            continue
        bodies = [b for b in values.reshape(2, 25, 3) if np.any(b != 0) and (b[:, 2] > 0).all()]
        frames.append(bodies)
    return frames, errors


# --- intrinsics (eq. 5.1–5.2) in our frame, mirroring measured -----------------------
def fit_kinect_intrinsics(points_m: np.ndarray, pixels: np.ndarray, width: int) -> dict:
    """Fit pinhole intrinsics of a Kinect image stream from skeleton 2D–3D pairs.

    Args:
        points_m: (M, 3) Kinect camera-space joints, metres.
        pixels: (M, 2) their positions in the raw (as shipped) image, e.g. colorX/colorY.
        width: raw image width (for the horizontal flip).
    Returns:
        ``{"K": (3, 3) for the *stored* (unmirrored) image and our camera frame,
        "rms": px, "mirrored": bool, "pairs": M}``. ``mirrored`` is measured: the raw
        image is a mirror image iff u grows with Kinect x (x points to the sensor's left).
    """
    points_m = np.asarray(points_m, np.float64)
    pixels = np.asarray(pixels, np.float64)
    raw_K, _ = fit_intrinsics(points_m, pixels)
    mirrored = bool(raw_K[0, 0] > 0)
    ours = kinect_to_camera(points_m)
    pix = pixels.copy()
    if mirrored:
        pix[:, 0] = width - 1 - pix[:, 0]
    K_fit, rms = fit_intrinsics(ours, pix)
    if K_fit[0, 0] <= 0 or K_fit[1, 1] <= 0:
        raise ValueError(f"fitted focal lengths not positive ({K_fit[0, 0]:.1f}, {K_fit[1, 1]:.1f}): "
                         "the image is vertically flipped or the pairs are inconsistent")
    return {"K": K_fit, "rms": rms, "mirrored": mirrored, "pairs": int(len(points_m))}


def kinect_reprojection_rms(K: np.ndarray, points_m: np.ndarray, pixels: np.ndarray, width: int,
                            mirrored: bool) -> float:
    """RMS pixel error of ``K`` (as :func:`fit_kinect_intrinsics` returns it) on 2D–3D pairs.

    Args:
        K: (3, 3) intrinsics of the stored (unmirrored) image, our camera frame.
        points_m: (M, 3) Kinect camera-space joints, metres.
        pixels: (M, 2) their positions in the raw (as shipped) image.
        width: raw image width; ``mirrored``: whether the raw image is a mirror image.
    """
    ours = kinect_to_camera(points_m)
    pix = np.asarray(pixels, np.float64).copy()
    if mirrored:
        pix[:, 0] = width - 1 - pix[:, 0]
    projected = ours[:, :2] / ours[:, 2:3] @ np.asarray(K)[:2, :2].T + np.asarray(K)[:2, 2]
    return float(np.sqrt(np.mean(np.sum((projected - pix) ** 2, axis=1))))
