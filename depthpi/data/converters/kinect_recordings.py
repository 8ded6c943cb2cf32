"""What the NTU RGB+D and PKU-MMD converters share: the frame loop over a Kinect v2 recording.

A recording is a colour video, a folder of depth PNGs and a skeleton file.
:class:`KinectConverter` picks every ``every``-th frame, takes its people from the
skeleton or from a poses file (:func:`load_poses_file`), reads the colour and depth
frames, unmirrors them and crops each person. Each converter keeps what is its own: how
it parses names and skeletons, which frames it rejects, and the fields of its samples.
The raw layouts and the poses-file format are described in docs/datasets.md.
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from depthpi.camera import Camera
from depthpi.data.converters.common import (Converter, ConverterError, Crops, Job, Summary, box_from_joints,
                                            box_visible, crop_person, iter_video_frames, read_depth_png)
from depthpi.data.converters.kinect import DEPTH_SIZE, RGB_SIZE

Poses = dict[str, dict[int, list[dict]]]   # video → 0-based frame → records of a poses file


@dataclass(frozen=True)
class Person:
    """One person to crop in one frame.

    Attributes:
        index: the person's number in the frame (sample key, ``extra.person``).
        joints: (17, 3) H36M_17 joints, mm, our camera frame of the unmirrored colour image.
        valid: (17,) bool.
        box: (4,) x, y, w, h in unmirrored full-frame pixels, or None: from the projected joints.
        label_source: ``"kinect"`` (the skeleton file) or ``"poses_file"``.
        body_id: the Kinect tracking id where the skeleton file has one.
    """

    index: int
    joints: np.ndarray
    valid: np.ndarray
    box: np.ndarray | None
    label_source: str
    body_id: str | None = None


@dataclass(frozen=True)
class KinectIntrinsics:
    """One Kinect's intrinsics: ``rgb_K``, ``depth_K`` (3, 3) of the unmirrored frames in our
    camera frame, and whether its raw frames are mirror images."""

    rgb_K: np.ndarray
    depth_K: np.ndarray
    mirrored: bool

    @classmethod
    def of(cls, record: dict) -> KinectIntrinsics:
        """From a record with ``rgb_K``, ``depth_K`` and optionally ``mirrored`` (default true)."""
        return cls(np.asarray(record["rgb_K"], np.float64), np.asarray(record["depth_K"], np.float64),
                   bool(record.get("mirrored", True)))


def read_intrinsics_file(path: Path, expected: str) -> dict:
    """The JSON object of an ``intrinsics_file``; ``expected`` says what it should hold."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConverterError(f"intrinsics_file {path}: unreadable ({err})") from None
    if not isinstance(record, dict):
        raise ConverterError(f"intrinsics_file {path}: expected a JSON object with {expected}")
    return record


def load_poses_file(path: Path, summary: Summary) -> Poses:
    """video → frame → records (joints (17, 3), box (4,) or None, valid (17,), person).

    Malformed records are skipped and counted in ``summary``; format in docs/datasets.md.
    """
    if not Path(path).is_file():
        raise ConverterError(f"poses_file {path}: not found (expected a JSON Lines file, see docs/datasets.md)")
    poses: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                joints = np.asarray(record["joints"], np.float64)
                if joints.shape != (17, 3) or not np.isfinite(joints).all():
                    raise ValueError(f"joints of shape {joints.shape}")
                box = None if record.get("box") is None else np.asarray(record["box"], np.float64)
                if box is not None and (box.shape != (4,) or box[2] <= 0 or box[3] <= 0):
                    raise ValueError("box must be [x, y, w, h] with w, h > 0")
                valid = np.asarray(record.get("valid", [True] * 17), bool)
                if valid.shape != (17,):
                    raise ValueError("valid must hold 17 booleans")
                frames = poses[str(record["video"])]
                frame = int(record["frame"])
                person = int(record.get("person", len(frames[frame])))
                frames[frame].append({"joints": joints, "box": box, "valid": valid, "person": person})
            except (ValueError, KeyError, TypeError) as err:
                summary.skip_frame("poses file: malformed record", f"{Path(path).name}:{number} ({err})")
    return {video: dict(frames) for video, frames in poses.items()}


def poses_of_jobs(poses_file: str | Path | None, jobs: list[Job], summary: Summary) -> Poses | None:
    """The poses file's records of the videos in ``jobs``; None without a poses file."""
    if not poses_file:
        return None
    poses = load_poses_file(Path(poses_file), summary)
    return {job.name: poses[job.name] for job in jobs if job.name in poses}


@dataclass(kw_only=True)
class KinectConverter(Converter):
    """A converter of Kinect v2 recordings; subclasses write ``convert_video`` with the helpers below.

    Attributes:
        every: convert every ``every``-th frame (0, every, 2·every, ...).
        context, max_side: of :func:`.common.crop_person`; margin: of :func:`.common.box_from_joints`.
        poses: the poses file's records (:func:`poses_of_jobs`), or None: labels from the skeletons.
    """

    every: int
    context: float = 1.4
    max_side: int = 320
    margin: float = 0.1
    poses: Poses | None = None

    def people(self, n_frames: int, people_of: Callable[[int], list[Person]]) -> dict[int, list[Person]]:
        """frame → its people, for every ``every``-th of ``n_frames`` frames that has any."""
        found = {f: people_of(f) for f in range(0, n_frames, self.every)}
        return {f: people for f, people in found.items() if people}

    def poses_file_people(self, name: str, f: int, summary: Summary) -> list[Person]:
        """The poses file's people of frame ``f`` of video ``name``; a frame without a record is skipped."""
        records = self.poses.get(name, {}).get(f, [])
        if not records:
            summary.skip_frame("no record in the poses file", f"{name}:{f}")
        return [Person(r["person"], r["joints"], r["valid"], r["box"], "poses_file") for r in records]

    @staticmethod
    def files_present(rgb: Path, depth_dir: Path, depth_name: str, summary: Summary) -> bool:
        """Whether the colour video and the depth folder exist (a missing one skips the video)."""
        if not rgb.is_file():
            summary.skip_video("rgb video missing", rgb.name)
            return False
        if not depth_dir.is_dir():
            summary.skip_video("depth folder missing", depth_name)
            return False
        return True

    def crops(self, name: str, rgb: Path, depth_path_of: Callable[[int], Path], intrinsics: KinectIntrinsics,
              people: dict[int, list[Person]], summary: Summary) -> Iterator[tuple[int, Person, Crops]]:
        """(frame, person, crops) of each person of each frame in ``people``, in order.

        Args:
            name: the video, as named in the summary.
            rgb: the colour video (1920×1080); ``depth_path_of(f)``: the depth PNG of frame ``f``.
            intrinsics: the recording's Kinect; mirrored frames are flipped before cropping.
            people: frame → its people (:meth:`people`).
        """
        rgb_cam = Camera.from_intrinsics(intrinsics.rgb_K)
        for f, frame in iter_video_frames(rgb, sorted(people), summary, rgb.name):
            if frame.shape[:2] != (RGB_SIZE[1], RGB_SIZE[0]):
                summary.skip_frame(f"rgb frame of unexpected size {frame.shape[1]}x{frame.shape[0]}", name)
                continue
            depth_path = depth_path_of(f)
            depth, reason = read_depth_png(depth_path, (DEPTH_SIZE[1], DEPTH_SIZE[0]))
            if depth is None:
                summary.skip_frame(reason, f"{name}/{depth_path.name}")
                continue
            if intrinsics.mirrored:
                frame, depth = cv2.flip(frame, 1), cv2.flip(depth, 1)
            for person in people[f]:
                box = person.box
                if box is None:
                    visible = person.valid & (person.joints[:, 2] > 0)
                    box = box_from_joints(rgb_cam.camera_to_image(person.joints), visible, self.margin)
                if box is None or not box_visible(box, RGB_SIZE[0], RGB_SIZE[1]):
                    summary.skip_frame("person outside the image", f"{name}:{f}")
                    continue
                yield f, person, crop_person(frame, intrinsics.rgb_K, box, depth, intrinsics.depth_K,
                                             context=self.context, max_side=self.max_side)
