"""PKU-MMD (phase 1) → depthpi shards: unlabelled RGB-D pairs and a labelled test set (§5.1.3).

Raw layout (``ROOT`` is ``--root``; names as the dataset ships them, ``<video>`` = e.g.
``0002-L``: sequence number and view L/M/R)::

    ROOT/RGB_VIDEO/<video>.avi                1920×1080
    ROOT/DEPTH/<video>/<n>.png                512×424 uint16 mm, one PNG per frame; files are
                                              ordered by the integer in their name, the first
                                              is frame 0 (the shipped DEPTH_VIDEO .avi files are
                                              8-bit lossy and are not read: extract them first)
    ROOT/PKU_Skeleton_Renew/<video>.txt       (or ROOT/Skeleton/) one line per frame: 2 bodies ×
                                              25 joints × x y z (Kinect camera space, m), zeros
                                              for an absent body
    ROOT/Split/cross-subject.txt              (or ROOT/cross-subject.txt / cross_subject.txt; the
                                              cross-view file with split_scheme="cross-view"):
                                              "Training videos:" then comma-separated names,
                                              "Validataion videos:" (sic) then names
    ROOT/Label/<video>.txt                    optional: action_id,start,end,confidence per line
                                              (also Train_Label_PKU_final/); sets ``action``

The official cross-subject split is adopted: training videos become *unlabelled* RGB-D
pairs (split ``unlabeled``, ``labeled: false``, joints null), validation videos a
labelled test set (split ``test``). Kinect v2 intrinsics come from ``intrinsics_file``
(required): JSON with ``rgb_K``, ``depth_K`` (3×3, of the unmirrored frames in depthpi's
camera frame) and ``mirrored`` (raw frames are mirror images; default true) — the
``intrinsics.ntu.json`` an NTU conversion writes has exactly these top-level keys. The
PKU skeleton files carry no 2D positions, so intrinsics cannot be fitted here. Camera
frame, joint mapping, mirroring and the JSON Lines ``poses_file`` are as for NTU
(:mod:`.ntu`, :mod:`.kinect`); ``subject`` is the sequence number (PKU-MMD names carry
no performer id), ``camera`` the view.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from depthpi.camera import Camera
from depthpi.data.converters.common import (Converter, ConverterError, Job, Summary, box_from_joints, box_visible,
                                            crop_person, iter_video_frames, make_sample, read_depth_png, safe_key)
from depthpi.data.converters.kinect import DEPTH_SIZE, RGB_SIZE, kinect_to_camera, kinect_to_h36m17, parse_pku_skeleton
from depthpi.data.converters.ntu import load_poses_file
from depthpi.data.schema import Sample

SOURCE = "pku"
DEFAULT_EVERY = 5
DEFAULT_VIDEOS_PER_SHARD = 4   # sequences are long (3–4 minutes)
NAME_RE = re.compile(r"\b(\d{4}-[LMR])\b")
SKELETON_DIRS = ("PKU_Skeleton_Renew", "Skeleton")
LABEL_DIRS = ("Label", "Train_Label_PKU_final")
SPLIT_FILES = {"cross-subject": ("cross-subject.txt", "cross_subject.txt"),
               "cross-view": ("cross-view.txt", "cross_view.txt")}


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


def _frame_index(path: Path) -> int | None:
    digits = re.findall(r"\d+", path.stem)
    return int(digits[-1]) if digits else None


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


@dataclass
class PKUConverter(Converter):
    rgb_K: np.ndarray
    depth_K: np.ndarray
    mirrored: bool = True
    every: int = DEFAULT_EVERY
    context: float = 1.4
    max_side: int = 320
    margin: float = 0.1
    source: str = SOURCE
    poses: dict = field(default_factory=dict)
    use_poses_file: bool = False

    def convert_video(self, job: Job, summary: Summary) -> Iterator[Sample]:
        p, name = job.payload, job.name
        labeled = job.split == "test"
        try:
            frames, errors = parse_pku_skeleton(Path(p["skeleton"]).read_text(errors="replace"))
        except OSError as err:
            summary.skip_video(f"skeleton file unreadable ({err.strerror})", Path(p["skeleton"]).name)
            return
        if not Path(p["rgb"]).is_file():
            summary.skip_video("rgb video missing", Path(p["rgb"]).name)
            return
        depth_dir = Path(p["depth_dir"])
        if not depth_dir.is_dir():
            summary.skip_video("depth folder missing", f"DEPTH/{name}")
            return
        depth_files = {}
        for path in depth_dir.iterdir():
            index = _frame_index(path)
            if path.suffix.lower() == ".png" and index is not None:
                depth_files[index] = path
        first = min(depth_files, default=0)
        summary.videos_read += 1
        labels = _labels(Path(p["labels"]) if p.get("labels") else None)
        rgb_cam = Camera.from_intrinsics(self.rgb_K)
        people: dict[int, list] = {}
        for f in range(0, len(frames), self.every):
            if f in errors:
                summary.skip_frame("malformed skeleton line", f"{Path(p['skeleton']).name}: {errors[f]}")
                continue
            if self.use_poses_file and labeled:
                records = self.poses.get(name, {}).get(f, [])
                if not records:
                    summary.skip_frame("no record in the poses file", f"{name}:{f}")
                    continue
                people[f] = [(r["person"], r["joints"], r["valid"], r["box"]) for r in records]
                continue
            if not frames[f]:
                summary.skip_frame("no valid skeleton in frame", name)
                continue
            entries = []
            for i, body in enumerate(frames[f]):
                joints, valid = kinect_to_h36m17(kinect_to_camera(body))
                entries.append((i, joints, valid, None))
            people[f] = entries
        for f, frame in iter_video_frames(Path(p["rgb"]), sorted(people), summary, Path(p["rgb"]).name):
            if frame.shape[:2] != (RGB_SIZE[1], RGB_SIZE[0]):
                summary.skip_frame(f"rgb frame of unexpected size {frame.shape[1]}x{frame.shape[0]}", name)
                continue
            depth_path = depth_files.get(first + f, depth_dir / f"{first + f:06d}.png")
            depth, reason = read_depth_png(depth_path, (DEPTH_SIZE[1], DEPTH_SIZE[0]))
            if depth is None:
                summary.skip_frame(reason, f"{name}/{depth_path.name}")
                continue
            if self.mirrored:
                frame, depth = cv2.flip(frame, 1), cv2.flip(depth, 1)
            action = next((str(a) for a, s, e in labels if s <= f <= e), "")
            for person, joints, valid, box in people[f]:
                if box is None:
                    box = box_from_joints(rgb_cam.camera_to_image(joints), valid & (joints[:, 2] > 0), self.margin)
                if box is None or not box_visible(box, RGB_SIZE[0], RGB_SIZE[1]):
                    summary.skip_frame("person outside the image", f"{name}:{f}")
                    continue
                crops = crop_person(frame, self.rgb_K, box, depth, self.depth_K, context=self.context,
                                    max_side=self.max_side)
                yield make_sample(safe_key(name, f"{f:06d}", person), crops, dataset=SOURCE, subject=name[:4],
                                  camera=name[5:], action=action, frame=f,
                                  joints_cam=joints if labeled else None, joint_valid=valid if labeled else None,
                                  extra={"video": name, "person": int(person), "mirrored_raw": self.mirrored})


def prepare(root: Path, out: Path, *, every: int | None = None, split_scheme: str | None = None,
            poses_file: str | Path | None = None, intrinsics_file: str | Path | None = None,
            context: float = 1.4, max_side: int = 320, workers: int = 1
            ) -> tuple[PKUConverter, list[Job], Summary, dict]:
    """Check the root, list the sequences and split them (training subjects → ``unlabeled``,
    test subjects → ``test``, labelled) and read the intrinsics NTU's conversion fitted:
    everything before the work. Returns the converter, the jobs, the summary so far and the
    parameters recorded in the manifests."""
    root = Path(root)
    scheme = split_scheme or "cross-subject"
    if scheme not in SPLIT_FILES:
        raise ConverterError(f"split_scheme {scheme!r}: expected one of {', '.join(SPLIT_FILES)} for pku")
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
    split_path = next((d / n for d in (root / "Split", root) for n in SPLIT_FILES[scheme] if (d / n).is_file()), None)
    if split_path is None:
        raise ConverterError(f"--root {root}: expected split file Split/{SPLIT_FILES[scheme][0]} is missing")
    if not intrinsics_file:
        raise ConverterError("pku needs intrinsics_file: JSON with rgb_K, depth_K (e.g. OUT/intrinsics.ntu.json "
                             "from the NTU conversion)")
    try:
        calib = json.loads(Path(intrinsics_file).read_text())
        rgb_K, depth_K = np.asarray(calib["rgb_K"], np.float64), np.asarray(calib["depth_K"], np.float64)
        assert rgb_K.shape == (3, 3) and depth_K.shape == (3, 3)
    except (OSError, json.JSONDecodeError, KeyError, AssertionError, ValueError) as err:
        raise ConverterError(f"intrinsics_file {intrinsics_file}: expected JSON with 3x3 rgb_K and depth_K "
                             f"({type(err).__name__}: {err})") from None
    every = DEFAULT_EVERY if every is None else int(every)
    if every < 1:
        raise ConverterError(f"every must be >= 1, got {every}")
    splits = parse_split_file(split_path.read_text(errors="replace"))
    summary = Summary(SOURCE)
    label_dir = next((root / d for d in LABEL_DIRS if (root / d).is_dir()), None)
    jobs = []
    for skeleton in sorted(skeleton_dir.glob("*.txt")):
        name = skeleton.stem
        summary.videos_listed += 1
        if name not in splits:
            summary.skip_video(f"not in {split_path.name}", name)
            continue
        jobs.append(Job(name, splits[name], {"skeleton": str(skeleton), "rgb": str(root / "RGB_VIDEO" / f"{name}.avi"),
                                             "depth_dir": str(root / "DEPTH" / name),
                                             "labels": str(label_dir / f"{name}.txt") if label_dir else None}))
    poses = load_poses_file(Path(poses_file), summary) if poses_file else {}
    converter = PKUConverter(rgb_K, depth_K, bool(calib.get("mirrored", True)), every, context, max_side,
                             poses={j.name: poses[j.name] for j in jobs if j.name in poses},
                             use_poses_file=bool(poses_file))
    params = {"source": SOURCE, "every": every, "split_scheme": scheme, "rgb_K": rgb_K.tolist(),
              "depth_K": depth_K.tolist(), "mirrored": converter.mirrored, "context": context, "max_side": max_side,
              "poses_file": str(poses_file) if poses_file else None}
    return converter, jobs, summary, params
