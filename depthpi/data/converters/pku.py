"""PKU-MMD (phases 1 and 2) → depthpi shards: unlabelled RGB-D pairs and a labelled test set (§5.1.3).

The official split files are adopted: training videos become unlabelled pairs (split
``unlabeled``, joints null), validation videos a labelled ``test`` split. The skeleton
files carry no 2D positions, so no intrinsics are fitted: each view (L, M, R) gets one of
the sensors of an NTU conversion's ``intrinsics.ntu.json``, named with ``sensor`` or
chosen by how well its depth K puts the joints onto the body in PKU's own depth frames
(:func:`.kinect_sensors.depth_agreement_mm`). Frames are converted as for NTU
(:mod:`.kinect_recordings`).

The raw layout, the split files and the sensor option are described in docs/datasets.md.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from depthpi.data.converters.common import (ConverterError, Job, Summary, check_every, make_sample, read_depth_png,
                                            safe_key)
from depthpi.data.converters.kinect import DEPTH_SIZE, kinect_to_camera, kinect_to_h36m17, parse_pku_skeleton
from depthpi.data.converters.kinect_recordings import (KinectConverter, KinectIntrinsics, Person, poses_of_jobs,
                                                       read_intrinsics_file)
from depthpi.data.converters.kinect_sensors import depth_agreement_mm
from depthpi.data.schema import Sample

SOURCE = "pku"
DEFAULT_EVERY = 5
DEFAULT_VIDEOS_PER_SHARD = 4   # sequences are long (3–4 minutes)
NAME_RE = re.compile(r"\b(\d{4}-[LMR]|A\d{2}N\d{2}-[LMR])\b")   # phase 1 | phase 2
VIEWS = ("L", "M", "R")
SKELETON_DIRS = ("PKU_Skeleton_Renew", "Skeleton")
LABEL_DIRS = ("Label", "Train_Label_PKU_final")
SPLIT_FILES = {"cross-subject": ("cross-subject.txt", "cross_subject.txt", "cross-subject_v2.txt",
                                 "cross_subject_v2.txt"),
               "cross-view": ("cross-view.txt", "cross_view.txt", "cross-view_v2.txt", "cross_view_v2.txt")}
PROBE_VIDEOS, PROBE_FRAMES = 3, 8    # per view, for choosing a sensor
CLOSE_SCORES = 0.9                    # best / second-best depth agreement above this: say the choice is close


def phase_of(name: str) -> int:
    return 1 if name[0].isdigit() else 2


def parse_split_file(text: str) -> dict[str, str]:
    """video → 'unlabeled' (training list) or 'test' (validation list)."""
    splits, current = {}, None
    for line in text.splitlines():
        lower = line.lower()
        if "train" in lower:
            current = "unlabeled"
        elif "valid" in lower or "test" in lower:
            current = "test"
        for name in NAME_RE.findall(line):
            if current is not None:
                splits[name] = current
    return splits


def read_splits(root: Path, scheme: str) -> tuple[dict[str, str], list[Path]]:
    """Every split file of the scheme found under ROOT/Split/ or ROOT (both phases), merged."""
    paths = [d / n for d in (root / "Split", root) for n in SPLIT_FILES[scheme] if (d / n).is_file()]
    if not paths:
        raise ConverterError(f"--root {root}: expected split file Split/{SPLIT_FILES[scheme][0]} (phase 1) or "
                             f"Split/{SPLIT_FILES[scheme][3]} (phase 2) is missing")
    splits: dict[str, str] = {}
    for path in paths:
        found = parse_split_file(path.read_text(errors="replace"))
        if not found:
            raise ConverterError(f"split file {path}: no video names under a 'Training videos:' or 'Validation "
                                 f"videos:' line (expected names such as 0002-L or A01N02-L)")
        splits.update(found)
    return splits, paths


def _frame_index(path: Path) -> int | None:
    digits = re.findall(r"\d+", path.stem)
    return int(digits[-1]) if digits else None


def depth_files(depth_dir: Path) -> tuple[dict[int, Path], int]:
    """{index in the file name: PNG} of a depth folder, and the first index (frame 0)."""
    files = {}
    for path in depth_dir.iterdir():
        index = _frame_index(path)
        if path.suffix.lower() == ".png" and index is not None:
            files[index] = path
    return files, min(files, default=0)


def _labels(path: Path | None) -> list[tuple[int, int, int]]:
    if path is None or not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            action, start, end = (int(float(v)) for v in line.split(",")[:3])
            rows.append((action, start, end))
        except ValueError:
            continue
    return rows


# --- intrinsics: the sensors of an NTU conversion, one per view ----------------------------
def load_sensors(path: Path) -> dict[str, dict]:
    """sensor id → {"rgb_K", "depth_K" (3, 3) arrays, "mirrored", residuals ...} of an intrinsics file.

    A file with ``sensors`` (an NTU conversion's ``intrinsics.ntu.json``) gives those; one
    with top-level ``rgb_K``/``depth_K`` gives one sensor, ``"file"``.
    """
    record = read_intrinsics_file(path, "sensors or rgb_K, depth_K")
    entries = record.get("sensors") or ({"file": record} if "rgb_K" in record else {})
    if not entries:
        raise ConverterError(f"intrinsics_file {path}: expected 'sensors' (OUT/intrinsics.ntu.json of an NTU "
                             f"conversion) or top-level 3x3 rgb_K and depth_K")
    sensors = {}
    for sensor_id, entry in entries.items():
        try:
            rgb_K, depth_K = (np.asarray(entry[k], np.float64) for k in ("rgb_K", "depth_K"))
        except (KeyError, TypeError, ValueError) as err:
            raise ConverterError(f"intrinsics_file {path}: sensor {sensor_id}: expected 3x3 rgb_K and depth_K "
                                 f"({type(err).__name__}: {err})") from None
        if rgb_K.shape != (3, 3) or depth_K.shape != (3, 3):
            raise ConverterError(f"intrinsics_file {path}: sensor {sensor_id}: rgb_K and depth_K must be 3x3, got "
                                 f"{rgb_K.shape} and {depth_K.shape}")
        sensors[str(sensor_id)] = {**entry, "rgb_K": rgb_K, "depth_K": depth_K,
                                   "mirrored": bool(entry.get("mirrored", True))}
    return sensors


def parse_sensor_option(text: str | None, sensors: dict[str, dict]) -> dict[str, str]:
    """``sensor`` option → {view: sensor id} for the views it names (none for auto)."""
    if text is None or str(text).strip().lower() in ("", "auto"):
        return {}
    text = str(text).strip()
    pairs = [part.split("=", 1) for part in text.split(",")] if "=" in text else [[v, text] for v in VIEWS]
    chosen = {}
    for pair in pairs:
        view, sensor_id = (item.strip() for item in pair) if len(pair) == 2 else ("?", "")
        if view not in VIEWS or sensor_id not in sensors:
            raise ConverterError(f"sensor {text!r}: expected a sensor id for every view, or VIEW=ID pairs (views "
                                 f"{', '.join(VIEWS)}); sensors in the intrinsics file: "
                                 + "; ".join(f"{i} ({', '.join(e.get('setups', [])[:4]) or 'given K'})"
                                             for i, e in sensors.items()))
        chosen[view] = sensor_id
    return chosen


def probe_frames(jobs: list[Job], count: int = PROBE_FRAMES) -> list[tuple[np.ndarray, np.ndarray]]:
    """(raw depth frame, (17, 3) joints mm in our camera frame) of a few frames with a body per video."""
    frames = []
    for job in jobs:
        try:
            skeleton, _ = parse_pku_skeleton(Path(job.payload["skeleton"]).read_text(errors="replace"))
            files, first = depth_files(Path(job.payload["depth_dir"]))
        except OSError:
            continue
        with_body = [f for f, bodies in enumerate(skeleton) if bodies]
        for f in with_body[:: max(1, len(with_body) // count)][:count]:
            path = files.get(first + f)
            depth = None if path is None else read_depth_png(path, (DEPTH_SIZE[1], DEPTH_SIZE[0]))[0]
            if depth is not None:
                joints = np.concatenate([kinect_to_h36m17(kinect_to_camera(b))[0] for b in skeleton[f]])
                frames.append((depth, joints))
    return frames


def choose_sensor(view: str, jobs: list[Job], sensors: dict[str, dict]) -> tuple[str, dict[str, float], str]:
    """The sensor whose depth K agrees best with the view's depth frames: (id, scores mm, note)."""
    frames = probe_frames([j for j in jobs if j.name.endswith(f"-{view}")][:PROBE_VIDEOS])
    if not frames:
        raise ConverterError(f"pku view {view}: no readable depth frame with a skeleton in its first {PROBE_VIDEOS} "
                             f"videos to choose a sensor from; name one with sensor={view}=<id> (sensors: "
                             f"{', '.join(sensors)})")
    scores = {i: depth_agreement_mm(s["depth_K"], s["mirrored"], frames)[0] for i, s in sensors.items()}
    ranked = sorted(scores, key=scores.get)
    if not np.isfinite(scores[ranked[0]]):
        raise ConverterError(f"pku view {view}: no skeleton joint projects onto a valid depth pixel with any sensor; "
                             f"name one with sensor={view}=<id>")
    best = ranked[0]
    close = len(ranked) > 1 and scores[best] > CLOSE_SCORES * scores[ranked[1]]
    note = (f"view {view}: sensor {best} chosen from {len(frames)} depth frames (mean |depth - joint z| per sensor: "
            + ", ".join(f"{i} {scores[i]:.1f} mm" for i in ranked) + ")"
            + (f"; close call, name it with sensor={view}=<id> if you know better" if close else ""))
    return best, {i: round(v, 2) if np.isfinite(v) else None for i, v in scores.items()}, note


def assign_sensors(jobs: list[Job], sensors: dict[str, dict], option: str | None, summary: Summary) -> dict[str, dict]:
    """view → the intrinsics it is converted with, and how they were chosen (noted in the summary)."""
    named = parse_sensor_option(option, sensors)
    views = {}
    for view in sorted({j.name[-1] for j in jobs}):
        if view in named:
            sensor_id, scores, how = named[view], {}, "named with the sensor option"
            summary.notes.append(f"view {view}: sensor {sensor_id} (named with the sensor option)")
        elif len(sensors) == 1:
            sensor_id, scores, how = next(iter(sensors)), {}, "the only sensor in the intrinsics file"
            summary.notes.append(f"view {view}: sensor {sensor_id} (the only one in the intrinsics file)")
        else:
            sensor_id, scores, note = choose_sensor(view, jobs, sensors)
            how = "depth agreement"
            summary.notes.append(note)
        sensor = sensors[sensor_id]
        views[view] = {"sensor": sensor_id, "chosen_by": how, "depth_agreement_mm": scores,
                       "rgb_K": sensor["rgb_K"], "depth_K": sensor["depth_K"], "mirrored": sensor["mirrored"]}
        if "rgb_rms" in sensor:
            summary.notes.append(f"view {view}: sensor {sensor_id} fits its NTU setups with rgb rms "
                                 f"{sensor['rgb_rms']:.3f} px, depth rms {sensor['depth_rms']:.3f} px")
    return views


# --- the converter ------------------------------------------------------------------------
@dataclass(kw_only=True)
class PKUConverter(KinectConverter):
    views: dict[str, dict]
    source: str = SOURCE

    def _people_of_frame(self, f: int, name: str, frames: list, errors: dict, labeled: bool, skeleton_name: str,
                         summary: Summary) -> list[Person]:
        """Frame ``f``'s people: none on a malformed skeleton line; the poses file's for a labelled
        video when one is given; else the skeleton's bodies."""
        if f in errors:
            summary.skip_frame("malformed skeleton line", f"{skeleton_name}: {errors[f]}")
            return []
        if self.poses is not None and labeled:
            return self.poses_file_people(name, f, summary)
        if not frames[f]:
            summary.skip_frame("no valid skeleton in frame", name)
        return [Person(i, *kinect_to_h36m17(kinect_to_camera(body)), None, "kinect")
                for i, body in enumerate(frames[f])]

    def convert_video(self, job: Job, summary: Summary) -> Iterator[Sample]:
        p, name = job.payload, job.name
        labeled = job.split == "test"
        skeleton_name = Path(p["skeleton"]).name
        try:
            frames, errors = parse_pku_skeleton(Path(p["skeleton"]).read_text(errors="replace"))
        except OSError as err:
            summary.skip_video(f"skeleton file unreadable ({err.strerror})", skeleton_name)
            return
        depth_dir = Path(p["depth_dir"])
        if not self.files_present(Path(p["rgb"]), depth_dir, f"DEPTH/{name}", summary):
            return
        files, first = depth_files(depth_dir)
        summary.videos_read += 1
        calib = self.views[name[-1]]
        intrinsics = KinectIntrinsics.of(calib)
        labels = _labels(Path(p["labels"]) if p.get("labels") else None)
        people = self.people(len(frames), lambda f: self._people_of_frame(f, name, frames, errors, labeled,
                                                                          skeleton_name, summary))
        for f, person, crops in self.crops(name, Path(p["rgb"]),
                                           lambda f: files.get(first + f, depth_dir / f"{first + f:06d}.png"),
                                           intrinsics, people, summary):
            action = next((str(a) for a, s, e in labels if s <= f <= e), "")
            yield make_sample(safe_key(name, f"{f:06d}", person.index), crops, dataset=SOURCE, subject=name[:-2],
                              camera=name[-1], action=action, frame=f,
                              joints_cam=person.joints if labeled else None,
                              joint_valid=person.valid if labeled else None,
                              extra={"video": name, "person": int(person.index), "mirrored_raw": intrinsics.mirrored,
                                     "phase": phase_of(name), "sensor": calib["sensor"]})


def _check_root(root: Path) -> Path:
    """The skeleton folder, after checking the root's layout."""
    if not root.is_dir():
        raise ConverterError(f"--root {root}: not a directory (expected the PKU-MMD root holding RGB_VIDEO/, "
                             f"DEPTH/, PKU_Skeleton_Renew/)")
    for sub, what in (("RGB_VIDEO", "<video>.avi"), ("DEPTH", "<video>/<n>.png 16-bit depth frames")):
        if not (root / sub).is_dir():
            raise ConverterError(f"--root {root}: expected subdirectory {sub}/ ({what}) is missing")
    skeleton_dir = next((root / d for d in SKELETON_DIRS if (root / d).is_dir()), None)
    if skeleton_dir is None:
        raise ConverterError(f"--root {root}: expected subdirectory {SKELETON_DIRS[0]}/ (or {SKELETON_DIRS[1]}/) "
                             f"with <video>.txt skeleton files is missing")
    return skeleton_dir


def list_jobs(root: Path, skeleton_dir: Path, splits: dict[str, str], split_names: str,
              summary: Summary) -> list[Job]:
    label_dir = next((root / d for d in LABEL_DIRS if (root / d).is_dir()), None)
    jobs = []
    for skeleton in sorted(skeleton_dir.glob("*.txt")):
        name = skeleton.stem
        summary.videos_listed += 1
        if not NAME_RE.fullmatch(name):
            summary.skip_video("file name is not NNNN-V (phase 1) or AxxNyy-V (phase 2)", skeleton.name)
            continue
        if name not in splits:
            summary.skip_video(f"not in {split_names}", name)
            continue
        jobs.append(Job(name, splits[name], {"skeleton": str(skeleton), "rgb": str(root / "RGB_VIDEO" / f"{name}.avi"),
                                             "depth_dir": str(root / "DEPTH" / name),
                                             "labels": str(label_dir / f"{name}.txt") if label_dir else None}))
    return jobs


def prepare(root: Path, out: Path, *, every: int | None = None, split_scheme: str | None = None,
            poses_file: str | Path | None = None, intrinsics_file: str | Path | None = None,
            sensor: str | None = None, context: float = 1.4, max_side: int = 320, workers: int = 1
            ) -> tuple[PKUConverter, list[Job], Summary, dict]:
    """Check the root, list the sequences of both phases and split them (training → ``unlabeled``,
    validation → ``test``, labelled), and give each view a sensor of ``intrinsics_file``:
    everything before the work. Returns the converter, the jobs, the summary so far and the
    parameters recorded in the manifests."""
    root = Path(root)
    scheme = split_scheme or "cross-subject"
    if scheme not in SPLIT_FILES:
        raise ConverterError(f"split_scheme {scheme!r}: expected one of {', '.join(SPLIT_FILES)} for pku")
    skeleton_dir = _check_root(root)
    splits, split_paths = read_splits(root, scheme)
    if not intrinsics_file:
        raise ConverterError("pku needs intrinsics_file: OUT/intrinsics.ntu.json of an NTU conversion (its sensors), "
                             "or JSON with rgb_K, depth_K")
    sensors = load_sensors(Path(intrinsics_file))
    every = check_every(every, DEFAULT_EVERY)
    summary = Summary(SOURCE)
    jobs = list_jobs(root, skeleton_dir, splits, " or ".join(p.name for p in split_paths), summary)
    phases = sorted({phase_of(j.name) for j in jobs})
    summary.notes.append(f"{len(jobs)} videos in the {scheme} split (phase {', '.join(map(str, phases)) or '-'}; "
                         f"split files {', '.join(p.name for p in split_paths)})")
    views = assign_sensors(jobs, sensors, sensor, summary)
    converter = PKUConverter(views=views, every=every, context=context, max_side=max_side,
                             poses=poses_of_jobs(poses_file, jobs, summary))
    params = {"source": SOURCE, "every": every, "split_scheme": scheme, "phases": phases,
              "views": {v: {k: (x.tolist() if isinstance(x, np.ndarray) else x) for k, x in calib.items()}
                        for v, calib in views.items()},
              "context": context, "max_side": max_side, "poses_file": str(poses_file) if poses_file else None}
    return converter, jobs, summary, params
