"""Human3.6M camera files as users have them → :class:`H36MCamera` in depthpi's convention.

depthpi's convention (:class:`depthpi.camera.Camera`): ``p_cam = R (p_world − t)``, R the
world→camera rotation, **t the camera centre** in world mm; camera axes x right, y down,
z forward. Four layouts are read, recognised from the file's structure, not its name:
depthpi's own JSON, karfly's ``camera-parameters.json`` (there ``t`` is not the centre),
3d-pose-baseline's ``cameras.h5`` (or its JSON dump) and VideoPose3D's tables as JSON.
Distortion is stored in OpenCV's order (k1, k2, p1, p2, k3).

Every camera is checked (:func:`check_camera`: a rotation, a plausible centre, aimed at the
capture space, upright, plausible K); the file is untrusted (bounded in size and nesting),
and a refusal names the file, subject/camera and field. docs/datasets.md ("Camera files")
gives each layout field by field, the distortion formulas and the check thresholds.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from depthpi.camera import Camera
from depthpi.data.converters.common import ConverterError

# The four Human3.6M cameras in the dataset's order (camera1..camera4 of cameras.h5) and
# their frame sizes (width, height) as VideoPose3D lists them.
CAMERA_IDS = ("54138969", "55011271", "58860488", "60457274")
IMAGE_SIZES = {"54138969": (1000, 1002), "55011271": (1000, 1000), "58860488": (1000, 1000),
               "60457274": (1000, 1002)}
DEFAULT_SIZE = (1000, 1002)
CENTRE_RANGE_MM = (2000.0, 10000.0)
MAX_AXIS_TO_ORIGIN_DEG = 20.0
MAX_TILT_DEG = 22.0
FOCAL_RANGE_WIDTHS = (0.5, 3.0)
INTRINSIC_KEYS = ("intrinsics", "intrinsic", "h36m_cameras_intrinsic_params")
EXTRINSIC_KEYS = ("extrinsics", "extrinsic", "h36m_cameras_extrinsic_params")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
MAX_FILE_BYTES = 4 << 20   # the published files hold a few KiB
MAX_NESTING = 32           # the layouts nest 6 levels at most
MAX_FRAME_PX = 100_000


@dataclass(frozen=True)
class H36MCamera:
    """One calibrated Human3.6M camera.

    Attributes:
        camera: K (3, 3) px, R (3, 3) world→camera, t (3,) camera centre in world mm.
        dist: (5,) OpenCV distortion (k1, k2, p1, p2, k3).
        size: (width, height) of the frames, px.
    """

    camera: Camera
    dist: np.ndarray
    size: tuple[int, int]

    def record(self) -> dict:
        """JSON form (manifest parameters), in depthpi's own layout."""
        return {"K": self.camera.K.tolist(), "R": self.camera.R.tolist(), "t": self.camera.t.tolist(),
                "dist": np.asarray(self.dist).tolist(), "size": list(self.size)}


@dataclass
class _Raw:
    """A camera as read, before the checks: R world→camera, C centre mm, and where it came from."""

    subject: str
    camera_id: str
    K: np.ndarray
    R: np.ndarray
    centre: np.ndarray
    dist: np.ndarray
    size: tuple[int, int] | None
    centre_field: str            # the field the centre came from, for messages
    centre_is_translation: bool  # True when the file held p_cam = R p + t's t
    rotation_field: str = "R"


class _Fields:
    """Typed access to one camera entry's fields; every failure names the field and the shape."""

    def __init__(self, path: Path, where: str, entry):
        if not isinstance(entry, dict):
            raise ConverterError(f"camera file {path}: {where}: expected an object of camera fields, "
                                 f"got {_describe(entry)}")
        self.path, self.where, self.entry = path, where, entry

    def error(self, name: str, problem: str) -> ConverterError:
        return ConverterError(f"camera file {self.path}: {self.where}: field {name!r}: {problem}")

    def array(self, name: str, shape: tuple[int, ...], expected: str, *alternatives: str) -> np.ndarray:
        key = next((k for k in (name, *alternatives) if k in self.entry), None)
        if key is None:
            present = ", ".join(sorted(map(str, self.entry))) or "none"
            raise self.error(name, f"missing; expected {expected} (fields present: {present})")
        try:
            value = np.asarray(self.entry[key], np.float64)
        except (TypeError, ValueError):
            raise self.error(key, f"not numeric; expected {expected}") from None
        if value.size != int(np.prod(shape)):
            raise self.error(key, f"has shape {value.shape}; expected {expected}")
        if not np.isfinite(value).all():
            raise self.error(key, f"holds non-finite values; expected {expected}")
        return value.reshape(shape)

    def optional(self, name: str, shape: tuple[int, ...], expected: str) -> np.ndarray | None:
        return self.array(name, shape, expected) if name in self.entry else None

    def pixels(self, name: str, shape: tuple[int, ...], expected: str) -> tuple[int, ...]:
        """Whole numbers of pixels (a frame's width and height), 1 to 100000."""
        values = self.array(name, shape, expected).ravel()
        if not all(v == int(v) and 1 <= v <= MAX_FRAME_PX for v in values):
            raise self.error(name, f"{values.tolist()}; expected {expected}: whole numbers 1-{MAX_FRAME_PX}")
        return tuple(int(v) for v in values)

    def camera_id(self, name: str = "id") -> str:
        value = self.entry[name]
        if isinstance(value, bool) or not isinstance(value, (str, int)) or not 0 < len(str(value)) <= 64:
            raise self.error(name, f"{_describe(value)}; expected a camera id such as '54138969'")
        return str(value)


def _describe(value) -> str:
    if isinstance(value, dict):
        keys = list(value)[:6]
        return f"an object with keys {keys}" + (" …" if len(value) > 6 else "")
    if isinstance(value, list):
        return f"a list of {len(value)}" + (f" ({_describe(value[0])} first)" if value else "")
    return f"{type(value).__name__} {str(value)[:40]!r}"


def _intrinsics(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """(4,) unit quaternion (w, x, y, z) → (3, 3) rotation matrix."""
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


# --- one reader per layout: each yields _Raw cameras ------------------------------------
def _read_own(path: Path, record: dict) -> Iterator[_Raw]:
    for subject, per_camera in record.items():
        if not isinstance(per_camera, dict):
            raise ConverterError(f"camera file {path}: {subject}: expected {{camera id: {{R, t, K or f and c}}}} "
                                 f"(depthpi's layout), got {_describe(per_camera)}")
        for camera_id, entry in per_camera.items():
            f = _Fields(path, f"{subject}/{camera_id}", entry)
            if "K" in entry:
                K = f.array("K", (3, 3), "3x3 intrinsics in px")
            else:
                (fx, fy), (cx, cy) = f.array("f", (2,), "[fx, fy] px (or K)"), f.array("c", (2,), "[cx, cy] px")
                K = _intrinsics(fx, fy, cx, cy)
            size = f.pixels("size", (2,), "[width, height] px") if "size" in entry else None
            dist = f.optional("dist", (5,), "[k1, k2, p1, p2, k3] (OpenCV order)")
            yield _Raw(subject, str(camera_id), K, f.array("R", (3, 3), "3x3 world->camera rotation"),
                       f.array("t", (3,), "camera centre [x, y, z] in world mm", "T"),
                       np.zeros(5) if dist is None else dist, size, "t", False)


def _read_karfly(path: Path, intrinsics: dict, extrinsics: dict) -> Iterator[_Raw]:
    for subject, per_camera in extrinsics.items():
        if not isinstance(per_camera, dict):
            raise ConverterError(f"camera file {path}: extrinsics/{subject}: expected {{camera id: {{R, t}}}}, "
                                 f"got {_describe(per_camera)}")
        for camera_id, entry in per_camera.items():
            if camera_id not in intrinsics:
                raise ConverterError(f"camera file {path}: extrinsics/{subject}/{camera_id}: camera {camera_id} "
                                     f"has no entry under intrinsics (present: {', '.join(intrinsics)})")
            inner = _Fields(path, f"intrinsics/{camera_id}", intrinsics[camera_id])
            outer = _Fields(path, f"extrinsics/{subject}/{camera_id}", entry)
            R = outer.array("R", (3, 3), "3x3 world->camera rotation")
            t = outer.array("t", (3,), "translation [[x], [y], [z]] mm of p_cam = R p + t")
            yield _Raw(subject, str(camera_id), inner.array("calibration_matrix", (3, 3), "3x3 intrinsics in px"),
                       R, -R.T @ t, inner.array("distortion", (5,), "[k1, k2, p1, p2, k3]"), None, "t", True)


def _read_h5_layout(path: Path, record: dict) -> Iterator[_Raw]:
    for subject_key, per_camera in record.items():
        match = re.fullmatch(r"subject(\d+)", subject_key)
        if not match or not isinstance(per_camera, dict):
            raise ConverterError(f"camera file {path}: {subject_key}: expected subject<N> holding camera1..camera4 "
                                 f"(cameras.h5 layout), got {_describe(per_camera)}")
        subject = f"S{match[1]}"
        for camera_key, entry in per_camera.items():
            f = _Fields(path, f"{subject_key}/{camera_key}", entry)
            camera_id = _h5_camera_id(path, subject_key, camera_key, entry)
            (fx, fy), (cx, cy) = f.array("f", (2,), "[[fx], [fy]] px"), f.array("c", (2,), "[[cx], [cy]] px")
            k, p = f.array("k", (3,), "[[k1], [k2], [k3]]"), f.array("p", (2,), "[[p1], [p2]]")
            R_stored = f.array("R", (3, 3), "3x3 camera->world rotation (as cameras.h5 stores it)")
            yield _Raw(subject, camera_id, _intrinsics(fx, fy, cx, cy), R_stored.T,
                       f.array("T", (3,), "camera centre [[x], [y], [z]] in world mm"),
                       np.array([k[0], k[1], p[0], p[1], k[2]]), None, "T", False)


def _h5_camera_id(path: Path, subject_key: str, camera_key: str, entry: dict) -> str:
    name = entry.get("Name")
    if name is not None:
        text = _name_text(_Fields(path, f"{subject_key}/{camera_key}", entry), name)
        if text.strip("\x00").strip():
            return text.strip("\x00").strip()
    match = re.fullmatch(r"camera(\d)", camera_key)
    if not match or not 1 <= int(match[1]) <= len(CAMERA_IDS):
        raise ConverterError(f"camera file {path}: {subject_key}/{camera_key}: expected camera1..camera4 "
                             f"or a Name field holding the camera id")
    return CAMERA_IDS[int(match[1]) - 1]


def _name_text(f: _Fields, name) -> str:
    """cameras.h5's ``Name``: character codes (or a string) spelling the camera id."""
    if isinstance(name, str):
        codes = [name]
    else:
        try:
            codes = np.asarray(name, dtype=object).ravel().tolist()
        except (ValueError, TypeError):
            codes = None
    if codes is None or not 0 < len(codes) <= 64:
        raise f.error("Name", f"{_describe(name)}; expected up to 64 character codes spelling the camera id")
    if all(isinstance(c, str) for c in codes):
        return "".join(codes)
    if not all(isinstance(c, (int, float)) and not isinstance(c, bool) and np.isfinite(c) and c == int(c)
               and 0 <= c < 0x110000 for c in codes):
        raise f.error("Name", f"{_describe(name)}; expected character codes: whole numbers 0-1114111 "
                              f"(e.g. 53, 52, ... for '54...')")
    return "".join(chr(int(c)) for c in codes)


def _videopose_entry(path: Path, where: str, subject: str, entry: dict) -> _Raw | None:
    """One merged VideoPose3D entry (intrinsics and extrinsics); None for the empty {} of S2–S4."""
    if isinstance(entry, dict) and set(entry) <= {"id"}:
        return None
    f = _Fields(path, where, entry)
    if "id" not in entry or "focal_length" not in entry:
        raise f.error("id" if "id" not in entry else "focal_length",
                      "missing: an extrinsics-only entry; expected VideoPose3D's merged entry {id, center, "
                      "focal_length, radial_distortion, tangential_distortion, orientation, translation}, or the "
                      "two tables as {\"intrinsics\": [...], \"extrinsics\": {\"S9\": [...]}}")
    q = f.array("orientation", (4,), "unit quaternion [w, x, y, z] rotating camera->world")
    if abs(np.linalg.norm(q) - 1) > 1e-3:
        raise f.error("orientation", f"norm {np.linalg.norm(q):.4f}; expected a unit quaternion [w, x, y, z]")
    (fx, fy), (cx, cy) = (f.array("focal_length", (2,), "[fx, fy] px"), f.array("center", (2,), "[cx, cy] px"))
    k = f.array("radial_distortion", (3,), "[k1, k2, k3]")
    p2, p1 = f.array("tangential_distortion", (2,), "[p2, p1] (VideoPose3D's order)")
    size = None
    if "res_w" in entry or "res_h" in entry:
        size = (f.pixels("res_w", (1,), "width px")[0], f.pixels("res_h", (1,), "height px")[0])
    return _Raw(subject, f.camera_id(), _intrinsics(fx, fy, cx, cy), _quaternion_to_matrix(q).T,
                f.array("translation", (3,), "camera centre [x, y, z] in world mm"),
                np.array([k[0], k[1], p1, p2, k[2]]), size, "translation", False, "orientation")


def _read_videopose_tables(path: Path, intrinsics: list, extrinsics: dict) -> Iterator[_Raw]:
    for subject, entries in extrinsics.items():
        if not isinstance(entries, list):
            raise ConverterError(f"camera file {path}: extrinsics/{subject}: expected a list of {len(intrinsics)} "
                                 f"{{orientation, translation}} in the order of the intrinsics list (VideoPose3D), "
                                 f"got {_describe(entries)}")
        if len(entries) != len(intrinsics):
            raise ConverterError(f"camera file {path}: extrinsics/{subject}: {len(entries)} entries; expected "
                                 f"{len(intrinsics)}, one per intrinsics entry (matched by position)")
        for i, (inner, outer) in enumerate(zip(intrinsics, entries)):
            if not isinstance(inner, dict) or not isinstance(outer, dict):
                raise ConverterError(f"camera file {path}: extrinsics/{subject}[{i}]: expected objects, got "
                                     f"{_describe(outer)} and intrinsics[{i}] {_describe(inner)}")
            raw = _videopose_entry(path, f"extrinsics/{subject}[{i}]", subject, {**inner, **outer} if outer else {})
            if raw is not None:
                yield raw


def _read_videopose_merged(path: Path, record: dict) -> Iterator[_Raw]:
    for subject, entries in record.items():
        if not isinstance(entries, (dict, list)):
            raise ConverterError(f"camera file {path}: {subject}: expected a list (or a camera-id mapping) of "
                                 f"VideoPose3D entries, got {_describe(entries)}")
        items = entries.items() if isinstance(entries, dict) else enumerate(entries)
        for key, entry in items:
            if isinstance(entries, dict) and isinstance(entry, dict):
                entry = {"id": key, **entry}
            where = f"{subject}[{key}]" if isinstance(key, int) else f"{subject}/{key}"
            raw = _videopose_entry(path, where, subject, entry)
            if raw is not None:
                yield raw


# --- layout detection --------------------------------------------------------------------
LAYOUTS = ("depthpi", "camera-parameters.json", "cameras.h5", "VideoPose3D")


def _pick(record: dict, names: tuple[str, ...]):
    return next((record[k] for k in record if str(k).lower() in names), None)


def _first_camera_entry(per_subject) -> dict | None:
    if not isinstance(per_subject, (dict, list)):
        return None  # the reader of the layout refuses it, naming the subject
    values = per_subject.values() if isinstance(per_subject, dict) else per_subject
    return next((v for v in values if isinstance(v, dict) and v), None)


def detect_layout(path: Path, record) -> tuple[str, Iterator[_Raw]]:
    """The layout of a parsed camera file (module docstring) and its cameras as read."""
    expected = ("expected one of: depthpi's {S9: {camera id: {R, t, K}}}; camera-parameters.json's "
                "{intrinsics: {camera id: ...}, extrinsics: {S9: ...}}; cameras.h5's {subject9: {camera1: "
                "{R, T, f, c, k, p}}}; VideoPose3D's {intrinsics: [...], extrinsics: {S9: [...]}}")
    if not isinstance(record, dict) or not record:
        raise ConverterError(f"camera file {path}: top level is {_describe(record)}; {expected}")
    intrinsics, extrinsics = _pick(record, INTRINSIC_KEYS), _pick(record, EXTRINSIC_KEYS)
    if intrinsics is not None or extrinsics is not None:
        if intrinsics is None or extrinsics is None or not isinstance(extrinsics, dict):
            raise ConverterError(f"camera file {path}: needs both an intrinsics and an extrinsics part "
                                 f"(keys present: {', '.join(map(str, record))}); {expected}")
        if isinstance(intrinsics, list):
            return "VideoPose3D", _read_videopose_tables(path, intrinsics, extrinsics)
        if isinstance(intrinsics, dict) and all(isinstance(v, dict) for v in intrinsics.values()):
            return "camera-parameters.json", _read_karfly(path, intrinsics, extrinsics)
        raise ConverterError(f"camera file {path}: intrinsics is {_describe(intrinsics)}; expected {{camera id: "
                             f"{{calibration_matrix, distortion}}}} (camera-parameters.json) or a list of {{id, "
                             f"center, focal_length, ...}} (VideoPose3D)")
    keys = [str(k) for k in record]
    if all(re.fullmatch(r"subject\d+", k) for k in keys):
        return "cameras.h5", _read_h5_layout(path, record)
    if not all(re.fullmatch(r"S\d+", k) for k in keys):
        raise ConverterError(f"camera file {path}: top-level keys {keys[:6]} are neither subjects (S9, S11) nor "
                             f"subject9, ... nor intrinsics/extrinsics; {expected}")
    first = next((e for e in map(_first_camera_entry, record.values()) if e), None)
    if first is not None and ({"orientation", "translation"} & set(first)):
        return "VideoPose3D", _read_videopose_merged(path, record)
    return "depthpi", _read_own(path, record)


def _read_file(path: Path):
    """The file's content: a dict from JSON, or nested dicts of arrays from HDF5."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConverterError(f"camera file {path}: {size} bytes; a camera file holds a few KiB (at most "
                                 f"{MAX_FILE_BYTES} accepted)")
        data = Path(path).read_bytes()
    except OSError as err:
        raise ConverterError(f"camera file {path}: not readable ({err.strerror or err}); pass intrinsics_file=... "
                             f"(accepted files: {', '.join(LAYOUTS)}, see {__name__})") from None
    if data.startswith(HDF5_MAGIC):
        record = _read_hdf5(path)
    else:
        try:
            record = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConverterError(f"camera file {path}: neither JSON nor HDF5 ({err})") from None
        except RecursionError:
            raise ConverterError(f"camera file {path}: nested deeper than JSON can be read; camera files nest "
                                 f"at most {MAX_NESTING} levels") from None
    _check_nesting(path, record)
    return record


def _check_nesting(path: Path, record) -> None:
    """Refuse containers nested deeper than :data:`MAX_NESTING` (checked without recursion)."""
    stack = [(record, 1, "")]
    while stack:
        value, depth, where = stack.pop()
        if depth > MAX_NESTING:
            raise ConverterError(f"camera file {path}: {where or 'top level'}: nested {depth} levels deep; camera "
                                 f"files nest at most {MAX_NESTING}")
        children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, child in children:
            if isinstance(child, (dict, list)):
                inner = f"{where}/{key}".lstrip("/") if depth < 8 else where  # the path, while it stays short
                stack.append((child, depth + 1, inner))


def _read_hdf5(path: Path) -> dict:
    try:
        import h5py
    except ImportError:
        raise ConverterError(f"camera file {path}: HDF5 (cameras.h5): reading it needs h5py (pip install h5py), "
                             f"or dump it to JSON with the same nesting subject<N>/camera<M>/{{R, T, f, c, k, p, "
                             f"Name}}") from None

    def walk(group) -> dict:
        return {key: walk(item) if isinstance(item, h5py.Group) else np.asarray(item[()]).tolist()
                for key, item in group.items()}

    with h5py.File(path, "r") as handle:
        return walk(handle)


# --- checks -------------------------------------------------------------------------------
def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def _geometry_problem(R: np.ndarray, centre: np.ndarray) -> str | None:
    """Why a centre and an orthonormal R cannot be a Human3.6M camera, or None."""
    distance = float(np.linalg.norm(centre))
    lo, hi = CENTRE_RANGE_MM
    if not lo <= distance <= hi:
        hint = " (a centre in metres?)" if lo / 1000 <= distance <= hi / 1000 else ""
        return (f"camera centre {np.round(centre, 1).tolist()} lies {distance:.1f} mm from the capture-space "
                f"origin; expected {lo:.0f}-{hi:.0f} mm{hint}")
    off_axis = _angle_deg(R[2], -centre)
    if off_axis > MAX_AXIS_TO_ORIGIN_DEG:
        return (f"camera at {np.round(centre).tolist()} mm looks {off_axis:.0f} deg away from the capture-space "
                f"origin; expected under {MAX_AXIS_TO_ORIGIN_DEG:.0f} deg")
    tilt = _angle_deg(R[1], np.array([0.0, 0.0, -1.0]))
    if tilt > MAX_TILT_DEG:
        return (f"the image's down direction is {tilt:.0f} deg from the world's -z (Human3.6M's world has z up); "
                f"expected under {MAX_TILT_DEG:.0f} deg")
    return None


def _rotation_problem(R: np.ndarray) -> str | None:
    error = float(np.abs(R @ R.T - np.eye(3)).max())
    det = float(np.linalg.det(R))
    if error > 1e-3 or abs(det - 1) > 1e-3:
        return f"max |R Rᵀ − I| = {error:.3g}, det {det:.4f}; expected an orthonormal 3x3 rotation with det +1"
    return None


def _geometry_diagnosis(raw: _Raw, problem: str) -> str:
    """The refusal for a camera that is not where a Human3.6M camera is, with the likely cause
    when another reading of the same numbers passes (transposed R; translation vs centre)."""
    value = -raw.R @ raw.centre if raw.centre_is_translation else raw.centre   # the number in the file
    transposed_centre = -raw.R @ value if raw.centre_is_translation else value
    if _geometry_problem(raw.R.T, transposed_centre) is None:
        return (f"field {raw.rotation_field!r}: {problem}; with the transposed rotation it passes: the file seems "
                f"to hold the camera->world rotation, expected world->camera")
    field = raw.centre_field
    if raw.centre_is_translation and _geometry_problem(raw.R, value) is None:
        return (f"field {field!r}: {problem}; read as the translation of p_cam = R p + t it fails, but it passes "
                f"as the camera centre itself: this file's {field!r} looks like a centre")
    if not raw.centre_is_translation and _geometry_problem(raw.R, -raw.R.T @ value) is None:
        centre = np.round(-raw.R.T @ value).tolist()
        return (f"field {field!r}: {problem}; read as the centre it fails, but −Rᵀ·{field} = {centre} passes: "
                f"{field!r} looks like the translation t of p_cam = R p + t (as in camera-parameters.json), not "
                f"the camera centre. Store the centre −Rᵀt as {field!r}, or pass the original file")
    return f"field {field!r}: {problem}"


def check_camera(path: Path, raw: _Raw) -> H36MCamera:
    """Checks of the module docstring; the camera in depthpi's convention, or a ConverterError."""
    where = f"camera file {path}: {raw.subject}/{raw.camera_id}"
    problem = _rotation_problem(raw.R)
    if problem:
        raise ConverterError(f"{where}: field {raw.rotation_field!r}: {problem}")
    problem = _geometry_problem(raw.R, raw.centre)
    if problem:
        raise ConverterError(f"{where}: {_geometry_diagnosis(raw, problem)}")
    size = raw.size or IMAGE_SIZES.get(raw.camera_id, DEFAULT_SIZE)
    width, height = size
    K = raw.K
    if np.abs(K[2] - [0.0, 0.0, 1.0]).max() > 1e-9 or K[1, 0] != 0:
        raise ConverterError(f"{where}: intrinsics: K {K.tolist()}; expected [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]")
    lo, hi = (FOCAL_RANGE_WIDTHS[0] * width, FOCAL_RANGE_WIDTHS[1] * width)
    if not (lo <= K[0, 0] <= hi and lo <= K[1, 1] <= hi):
        raise ConverterError(f"{where}: focal length ({K[0, 0]:.4g}, {K[1, 1]:.4g}) px; expected {lo:.0f}-{hi:.0f} px "
                             f"for a {width}-px-wide frame (pixels, not normalised units)")
    if not (0 <= K[0, 2] <= width - 1 and 0 <= K[1, 2] <= height - 1):
        raise ConverterError(f"{where}: principal point ({K[0, 2]:.4g}, {K[1, 2]:.4g}) px lies outside the "
                             f"{width}x{height} frame; expected pixels, not normalised units")
    camera = Camera(K, raw.R, raw.centre)
    return H36MCamera(camera, np.asarray(raw.dist, np.float64), (int(width), int(height)))


def load_cameras(path: Path) -> tuple[str, dict[tuple[str, str], H36MCamera]]:
    """Read and check a camera file of any accepted layout.

    Returns:
        The layout's name (:data:`LAYOUTS`) and {(subject, camera id): H36MCamera}.
    Raises:
        ConverterError: naming the file, subject/camera, field and what was expected.
    """
    path = Path(path)
    layout, raws = detect_layout(path, _read_file(path))
    cameras: dict[tuple[str, str], H36MCamera] = {}
    for raw in raws:
        key = (raw.subject, raw.camera_id)
        if key in cameras:
            raise ConverterError(f"camera file {path}: {raw.subject}/{raw.camera_id} appears twice")
        cameras[key] = check_camera(path, raw)
    if not cameras:
        raise ConverterError(f"camera file {path}: no camera in it ({layout} layout)")
    return layout, cameras
