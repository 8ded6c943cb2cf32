"""NTU RGB+D (60 and 120) → depthpi shards (thesis §5.1).

Lists the sequences of the skeleton folder, splits them (:func:`split_of`: the thesis'
Table 5.2 split or the standard protocols), fits colour and depth intrinsics per camera
setup from the skeletons' 2D–3D pairs (eq. 5.1–5.2; mirroring measured, setups grouped
into sensors by :mod:`.kinect_sensors`, all written to ``OUT/intrinsics.ntu.json``), and
converts every ``every``-th frame through :class:`.kinect_recordings.KinectConverter`: one
sample per person, labelled with the Kinect skeleton mapped to H36M_17 or with a poses
file's record. World = our RGB camera frame (R = I, t = 0).

The raw layout, the options and the intrinsics file are described in docs/datasets.md.
"""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from depthpi.data.converters.common import ConverterError, Job, Summary, check_every, make_sample, safe_key
from depthpi.data.converters.kinect import (DEPTH_SIZE, RGB_SIZE, SkeletonFile, fit_kinect_intrinsics,
                                            kinect_to_camera, kinect_to_h36m17, parse_ntu_skeleton)
from depthpi.data.converters.kinect_recordings import (KinectConverter, KinectIntrinsics, Person, poses_of_jobs,
                                                       read_intrinsics_file)
from depthpi.data.converters.kinect_sensors import (SAME_SENSOR_DEPTH_PX, SAME_SENSOR_RGB_PX, cluster_sensors,
                                                    describe_sensor)
from depthpi.data.schema import Sample
from depthpi.io import atomic_write_json

SOURCE = "ntu"
NAME_RE = re.compile(r"^S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})$")
SKELETON_DIR, RGB_DIR = "nturgb+d_skeletons", "nturgb+d_rgb"
DEPTH_DIRS = {"full": ("nturgb+d_depth", "Depth-{:08d}.png"), "masked": ("nturgb+d_depth_masked", "MDepth-{:08d}.png")}
DEFAULT_EVERY = 5            # 30 fps → 6 samples/s; consecutive samples differ visibly
DEFAULT_VIDEOS_PER_SHARD = 50

# Thesis Table 5.2.
THESIS_TRAIN_SUBJECTS = {7, 8, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 37, 38, 39, 40}
THESIS_TEST_SUBJECTS = {1, 2, 3, 9, 10, 11, 29, 30, 31, 32}
THESIS_TRAIN_SETUPS = {3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17}  # cameras C001–C003 each
THESIS_TEST_SETUPS = {1, 2, 8}
# Standard protocols (Shahroudy et al. 2016; Liu et al. 2019).
XSUB_TRAIN = {1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38}
XSUB120_TRAIN = XSUB_TRAIN | {45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84,
                              85, 86, 89, 91, 92, 93, 94, 95, 97, 98, 100, 103}
XVIEW_TRAIN_CAMERAS = {2, 3}
SPLIT_SCHEMES = ("thesis", "xsub", "xview", "xsub120", "xset120")


def parse_name(name: str) -> dict[str, int] | None:
    match = NAME_RE.match(name)
    if not match:
        return None
    return dict(zip(("setup", "camera", "subject", "replication", "action"), map(int, match.groups())))


def split_of(name: str, scheme: str = "thesis") -> str | None:
    """'train', 'test' or None (left out) for a sequence name under a split scheme."""
    ids = parse_name(name)
    if ids is None:
        return None
    s, c, p = ids["setup"], ids["camera"], ids["subject"]
    if scheme == "thesis":
        if p in THESIS_TRAIN_SUBJECTS and s in THESIS_TRAIN_SETUPS:
            return "train"
        if p in THESIS_TEST_SUBJECTS and s in THESIS_TEST_SETUPS:
            return "test"
        return None
    if scheme == "xsub":
        return None if s > 17 else ("train" if p in XSUB_TRAIN else "test")
    if scheme == "xview":
        return None if s > 17 else ("train" if c in XVIEW_TRAIN_CAMERAS else "test")
    if scheme == "xsub120":
        return "train" if p in XSUB120_TRAIN else "test"
    if scheme == "xset120":
        return "train" if s % 2 == 0 else "test"
    raise ConverterError(f"split_scheme {scheme!r}: expected one of {', '.join(SPLIT_SCHEMES)}")


# --- the missing-skeletons list ---------------------------------------------------------
def read_missing_list(path: Path, summary: Summary) -> set[str]:
    """The sample names of a missing-skeletons list (e.g. the dataset's
    ``NTU_RGBD_samples_with_missing_skeletons.txt``).

    The shipped lists open with two prose lines ("302 of the captured samples ...");
    only lines that are a sample name (``SsssCcccPpppRrrrAaaa``, optionally with a
    ``.skeleton`` suffix) are kept, and the others are counted in a summary note.
    """
    try:
        lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines()]
    except OSError as err:
        raise ConverterError(f"missing_list {path}: unreadable ({err.strerror or err})") from None
    names = {line.removesuffix(".skeleton") for line in lines}
    kept = {name for name in names if NAME_RE.match(name)}
    ignored = sum(1 for line in lines if line and not NAME_RE.match(line.removesuffix(".skeleton")))
    if not kept:
        raise ConverterError(f"missing_list {path}: no sample names (expected one SsssCcccPpppRrrrAaaa per line)")
    summary.notes.append(f"missing_list {Path(path).name}: {len(kept)} sample names"
                         + (f" ({ignored} other lines ignored)" if ignored else ""))
    return kept


# --- intrinsics -------------------------------------------------------------------------
def _pairs_of_file(path: str, max_frames: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xyz m, depthXY, colorXY) of the tracked joints of up to ``max_frames`` frames."""
    try:
        skeleton = parse_ntu_skeleton(Path(path).read_text(errors="replace"))
    except OSError:
        return np.zeros((0, 3)), np.zeros((0, 2)), np.zeros((0, 2))
    frames = skeleton.frames
    step = max(1, len(frames) // max_frames)
    rows = [body.joints[body.tracked] for bodies in frames[::step] for body in bodies if body.usable]
    if not rows:
        return np.zeros((0, 3)), np.zeros((0, 2)), np.zeros((0, 2))
    joints = np.concatenate(rows)
    return joints[:, 0:3], joints[:, 3:5], joints[:, 5:7]


MAX_PAIRS_KEPT = 3000  # per setup and stream, for the sensor fits (kinect_sensors)


def _fit_setup(paths: list[str]) -> tuple[dict, dict]:
    """The setup's fit record and its 2D–3D pairs per stream ({"rgb": (points_m, pixels), ...},
    thinned to :data:`MAX_PAIRS_KEPT`)."""
    parts = [_pairs_of_file(p) for p in paths]
    xyz = np.concatenate([p[0] for p in parts])
    result, kept = {"pairs": int(len(xyz))}, {}
    if len(xyz) < 20:
        result["error"] = f"only {len(xyz)} tracked 2D-3D pairs in {len(paths)} skeleton files"
        return result, kept
    for stream, pixels, width, lo_hi in (("rgb", np.concatenate([p[2] for p in parts]), RGB_SIZE[0], RGB_SIZE),
                                         ("depth", np.concatenate([p[1] for p in parts]), DEPTH_SIZE[0], DEPTH_SIZE)):
        inside = np.isfinite(pixels).all(1) & (np.abs(pixels) < 4 * max(lo_hi)).all(1)
        try:
            fit = fit_kinect_intrinsics(xyz[inside], pixels[inside], width)
        except ValueError as err:
            result["error"] = f"{stream} fit failed: {err}"
            return result, {}
        result[f"{stream}_K"] = fit["K"].tolist()
        result[f"{stream}_rms"] = fit["rms"]
        result[f"{stream}_mirrored"] = fit["mirrored"]
        step = max(1, int(inside.sum()) // MAX_PAIRS_KEPT)
        kept[stream] = (xyz[inside][::step], pixels[inside][::step])
    if result["rgb_mirrored"] != result["depth_mirrored"]:
        result["error"] = "colour and depth disagree on mirroring"
    result["mirrored"] = result["rgb_mirrored"]
    result["files"] = len(paths)
    return result, kept


def fit_setups(skeleton_paths: dict[str, list[Path]], fit_videos: int, workers: int
               ) -> tuple[dict[str, dict], dict[str, dict]]:
    """setup (SsssCccc) → fit record, and setup → its kept 2D–3D pairs; up to ``fit_videos``
    skeleton files per setup."""
    chosen = {setup: [str(p) for p in sorted(paths)[:fit_videos]] for setup, paths in sorted(skeleton_paths.items())}
    if workers > 1 and len(chosen) > 1:
        with ProcessPoolExecutor(min(workers, len(chosen)), mp_context=get_context("spawn")) as pool:
            results = list(pool.map(_fit_setup, chosen.values()))
    else:
        results = [_fit_setup(paths) for paths in chosen.values()]
    fits = {setup: record for setup, (record, _) in zip(chosen, results)}
    pairs = {setup: kept for setup, (record, kept) in zip(chosen, results) if "error" not in record}
    return fits, pairs


def load_intrinsics_file(path: Path) -> dict:
    """``{"rgb_K", "depth_K", "mirrored"}`` global and/or ``{"setups": {"S001C001": {...}}}``."""
    record = read_intrinsics_file(path, "rgb_K, depth_K or setups")
    for entry in [record, *record.get("setups", {}).values()]:
        for key in ("rgb_K", "depth_K"):
            if key in entry and np.asarray(entry[key]).shape != (3, 3):
                raise ConverterError(f"intrinsics_file {path}: {key} must be 3x3")
    return record


def fitted_intrinsics_record(fits: dict[str, dict], pairs: dict[str, dict], summary: Summary) -> dict:
    """The ``intrinsics.ntu.json`` record: per-setup fits, the sensors they group into
    (:mod:`.kinect_sensors`) with their residuals, and what one pooled K would cost; the
    same figures as summary notes."""
    sensors, pooled = cluster_sensors(fits, pairs)
    for sensor_id, sensor in sensors.items():
        for setup in sensor["setups"]:
            fits[setup]["sensor"] = sensor_id
        summary.notes.append(describe_sensor(sensor_id, sensor))
    if pooled:
        summary.notes.append(f"one K over all {pooled['setups']} setups instead would leave rgb rms "
                             f"{pooled['rgb_rms']:.3f} px, depth rms {pooled['depth_rms']:.3f} px")
    return {"sensors": sensors, "pooled_residuals": pooled, "setups": fits,
            "sensor_rule": f"one sensor: colour K within {SAME_SENSOR_RGB_PX:g} px and depth K within "
                           f"{SAME_SENSOR_DEPTH_PX:g} px of each other over the central half of the frame, "
                           f"same mirroring",
            "convention": "K of the stored (unmirrored) frames in depthpi's camera frame; mirrored = raw frames "
                          "are mirror images (flipped by the converter); rms in px"}


# --- the converter ----------------------------------------------------------------------
@dataclass(kw_only=True)
class NTUConverter(KinectConverter):
    intrinsics: dict[str, dict]
    source: str = SOURCE

    def _people_of_frame(self, f: int, name: str, skeleton: SkeletonFile, skeleton_name: str,
                         summary: Summary) -> list[Person]:
        """Frame ``f``'s people: the poses file's, when one is given, else the usable skeleton bodies."""
        if self.poses is not None:
            return self.poses_file_people(name, f, summary)
        if f >= len(skeleton.frames):
            summary.skip_frame("skeleton file truncated or unreadable", f"{skeleton_name} ({skeleton.error})")
            return []
        bodies = [b for b in skeleton.frames[f] if b.usable]
        if f in skeleton.frame_errors:
            summary.skip_frame("malformed skeleton line" if not bodies else "person dropped: malformed skeleton line",
                               f"{skeleton_name}: {skeleton.frame_errors[f]}")
        elif not bodies:
            summary.skip_frame("no valid skeleton in frame", name)
        return [Person(i, *kinect_to_h36m17(kinect_to_camera(body.xyz), body.tracked), None, "kinect", body.body_id)
                for i, body in enumerate(bodies)]

    def convert_video(self, job: Job, summary: Summary) -> Iterator[Sample]:
        p, name = job.payload, job.name
        calib = self.intrinsics.get(p["setup_camera"])
        if calib is None or "error" in calib:
            summary.skip_video("no intrinsics for the camera setup", name)
            return
        skel_path = Path(p["skeleton"])
        try:
            skeleton = parse_ntu_skeleton(skel_path.read_text(errors="replace"))
        except OSError as err:
            summary.skip_video(f"skeleton file unreadable ({err.strerror})", str(skel_path.name))
            return
        if skeleton.error and not skeleton.frames:
            summary.skip_video("skeleton file unreadable", f"{skel_path.name} ({skeleton.error})")
            return
        depth_dir = Path(p["depth_dir"])
        if not self.files_present(Path(p["rgb"]), depth_dir, depth_dir.name, summary):
            return
        summary.videos_read += 1
        n_frames = max(skeleton.declared_frames, len(skeleton.frames))
        people = self.people(n_frames, lambda f: self._people_of_frame(f, name, skeleton, skel_path.name, summary))
        if not people:
            return
        ids = parse_name(name)
        intrinsics = KinectIntrinsics.of(calib)
        depth_kind, pattern = p["depth_kind"], DEPTH_DIRS[p["depth_kind"]][1]
        for f, person, crops in self.crops(name, Path(p["rgb"]), lambda f: depth_dir / pattern.format(f + 1),
                                           intrinsics, people, summary):
            yield make_sample(
                safe_key(name, f"{f:05d}", person.index), crops, dataset=SOURCE, subject=f"P{ids['subject']:03d}",
                camera=p["setup_camera"], action=f"A{ids['action']:03d}", frame=f, joints_cam=person.joints,
                joint_valid=person.valid, extra={"video": name, "person": int(person.index),
                                                 "label_source": person.label_source, "body_id": person.body_id,
                                                 "depth": depth_kind, "mirrored_raw": intrinsics.mirrored})


def _list_files(directory: Path, suffix: str) -> dict[str, Path]:
    return {p.name[:-len(suffix)]: p for p in directory.iterdir() if p.name.endswith(suffix)}


def prepare(root: Path, out: Path, *, every: int | None = None, split_scheme: str = "thesis",
            poses_file: str | Path | None = None, intrinsics_file: str | Path | None = None,
            missing_list: str | Path | None = None, depth: str = "auto", fit_videos: int = 8,
            workers: int = 1, context: float = 1.4, max_side: int = 320
            ) -> tuple[NTUConverter, list[Job], Summary, dict]:
    """Check the root, list sequences, split them, fit intrinsics: everything before the work.

    Returns the converter, the jobs, the summary so far and the parameters recorded in the manifests.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConverterError(f"--root {root}: not a directory (expected the NTU RGB+D root holding "
                             f"{SKELETON_DIR}/, {RGB_DIR}/ and {DEPTH_DIRS['masked'][0]}/)")
    for sub, what in ((SKELETON_DIR, "*.skeleton files"), (RGB_DIR, "*_rgb.avi videos")):
        if not (root / sub).is_dir():
            raise ConverterError(f"--root {root}: expected subdirectory {sub}/ ({what}) is missing")
    present = [kind for kind, (sub, _) in DEPTH_DIRS.items() if (root / sub).is_dir()]
    if not present:
        raise ConverterError(f"--root {root}: expected subdirectory {DEPTH_DIRS['masked'][0]}/ "
                             f"(or {DEPTH_DIRS['full'][0]}/) with per-sequence depth PNG folders is missing")
    if depth not in ("auto", "full", "masked"):
        raise ConverterError(f"depth {depth!r}: expected auto, full or masked")
    if depth != "auto" and depth not in present:
        raise ConverterError(f"--root {root}: depth={depth} but {DEPTH_DIRS[depth][0]}/ is missing")
    if split_scheme not in SPLIT_SCHEMES:
        raise ConverterError(f"split_scheme {split_scheme!r}: expected one of {', '.join(SPLIT_SCHEMES)}")
    every = check_every(every, DEFAULT_EVERY)
    summary = Summary(SOURCE)
    skeletons = _list_files(root / SKELETON_DIR, ".skeleton")
    if not skeletons:
        raise ConverterError(f"--root {root}: {SKELETON_DIR}/ holds no *.skeleton files")
    missing = read_missing_list(Path(missing_list), summary) if missing_list else set()
    jobs, by_setup = [], defaultdict(list)
    for name in sorted(skeletons):
        ids = parse_name(name)
        if ids is None:
            summary.skip_video("file name is not SsssCcccPpppRrrrAaaa", skeletons[name].name)
            continue
        if name in missing:
            summary.skip_video("listed in the missing-skeletons file", name)
            continue
        setup_camera = name[:8]
        by_setup[setup_camera].append(skeletons[name])
        split = split_of(name, split_scheme)
        if split is None:
            summary.skip_video(f"not in the {split_scheme} split", name)
            continue
        kind = depth if depth != "auto" else next(
            (k for k in present if (root / DEPTH_DIRS[k][0] / name).is_dir()), present[-1])
        jobs.append(Job(name, split, {"skeleton": str(skeletons[name]), "setup_camera": setup_camera,
                                      "rgb": str(root / RGB_DIR / f"{name}_rgb.avi"),
                                      "depth_dir": str(root / DEPTH_DIRS[kind][0] / name), "depth_kind": kind}))
    summary.videos_listed = len(skeletons)
    summary.notes.append(f"{len(skeletons)} sequences found, {len(jobs)} in the {split_scheme} split "
                         f"({sum(j.split == 'train' for j in jobs)} train, {sum(j.split == 'test' for j in jobs)} test)")

    needed = {j.payload["setup_camera"] for j in jobs}
    given = load_intrinsics_file(Path(intrinsics_file)) if intrinsics_file else None
    intrinsics: dict[str, dict] = {}
    if given is not None:
        for setup in sorted(needed):
            entry = given.get("setups", {}).get(setup) or ({k: given[k] for k in ("rgb_K", "depth_K", "mirrored")
                                                            if k in given} if "rgb_K" in given else None)
            intrinsics[setup] = entry if entry else {"error": f"not in {intrinsics_file}"}
        summary.notes.append(f"intrinsics from {intrinsics_file}")
    else:
        fits, pairs = fit_setups({s: by_setup[s] for s in needed}, fit_videos, workers)
        intrinsics = fits
        for setup, fit in fits.items():
            if "error" in fit:
                summary.notes.append(f"intrinsics {setup}: FAILED ({fit['error']})")
            else:
                summary.notes.append(f"intrinsics {setup}: rgb fx {fit['rgb_K'][0][0]:.1f} rms {fit['rgb_rms']:.3f} px, "
                                     f"depth fx {fit['depth_K'][0][0]:.1f} rms {fit['depth_rms']:.3f} px, "
                                     f"{fit['pairs']} pairs, mirrored={fit['mirrored']}")
        atomic_write_json(Path(out) / "intrinsics.ntu.json", fitted_intrinsics_record(fits, pairs, summary))
    converter = NTUConverter(intrinsics=intrinsics, every=every, context=context, max_side=max_side,
                             poses=poses_of_jobs(poses_file, jobs, summary))
    params = {"source": SOURCE, "every": every, "split_scheme": split_scheme, "depth": depth,
              "poses_file": str(poses_file) if poses_file else None,
              "intrinsics": {s: intrinsics[s] for s in sorted(intrinsics)}, "context": context,
              "max_side": max_side, "missing_list": sorted(missing)}
    return converter, jobs, summary, params
