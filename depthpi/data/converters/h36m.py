"""Human3.6M (official layout) → depthpi shards: the RGB-only test set (S9, S11; thesis §5.1.3).

One job per (subject, action, camera) video. Labels are the D3_Positions mocap joints
(a ``.cdf``, or an ``.npz`` with the same ``Pose`` array when the ``.cdf`` is absent),
reduced from 32 to H36M_17 (:data:`H36M_17_FROM_32`) and stored in world mm with the
camera's R and t (world ≠ camera here). Cameras come from any camera-file layout
:mod:`.h36m_cameras` reads; with distortion coefficients the crop is undistorted so that
the stored ``rgb_K`` is an exact pinhole. No depth.

The raw layout and the camera-file formats are described in docs/datasets.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from depthpi.data.converters.common import (Converter, ConverterError, Job, Summary, box_from_joints, box_visible,
                                            check_every, crop_person, iter_video_frames, make_sample, safe_key)
from depthpi.data.converters.h36m_cameras import H36MCamera, load_cameras
from depthpi.data.schema import Sample, SampleMeta

SOURCE = "h36m"
H36M_17_FROM_32 = [0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27]
DEFAULT_EVERY = 64
DEFAULT_VIDEOS_PER_SHARD = 20
TEST_SUBJECTS = ("S9", "S11")
VIDEO_RE = re.compile(r"^(?P<action>.+)\.(?P<camera>\d+)\.mp4$")


def read_pose_file(path: Path) -> np.ndarray:
    """(frames, 17, 3) world mm from a D3_Positions .cdf (or the .npz fallback)."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            pose = np.asarray(data["Pose"], np.float64)
    else:
        import cdflib

        pose = np.asarray(cdflib.CDF(str(path)).varget("Pose"), np.float64)
    pose = pose.reshape(-1, 32, 3)
    return pose[:, H36M_17_FROM_32]


@dataclass
class H36MConverter(Converter):
    cameras: dict[tuple[str, str], H36MCamera]
    every: int = DEFAULT_EVERY
    context: float = 1.4
    max_side: int = 320
    margin: float = 0.1
    source: str = SOURCE

    def convert_video(self, job: Job, summary: Summary) -> Iterator[Sample]:
        p = job.payload
        calib = self.cameras.get((p["subject"], p["camera"]))
        if calib is None:
            summary.skip_video("camera not in the camera file", job.name)
            return
        pose_path = Path(p["pose"])
        if not pose_path.is_file():
            summary.skip_video("pose file missing", f"{p['subject']}/{pose_path.name}")
            return
        try:
            world = read_pose_file(pose_path)
        except Exception as err:  # cdflib raises assorted errors on bad files
            summary.skip_video("pose file unreadable", f"{p['subject']}/{pose_path.name} ({type(err).__name__})")
            return
        cam, dist = calib.camera, calib.dist
        wanted = list(range(0, len(world), self.every))
        summary.videos_read += 1
        bad = [f for f in wanted if not np.isfinite(world[f]).all()]
        for f in bad:
            summary.skip_frame("pose not finite", f"{job.name}:{f}")
        wanted = [f for f in wanted if f not in bad]
        for f, frame in iter_video_frames(Path(p["video"]), wanted, summary, f"{p['subject']}/{Path(p['video']).name}"):
            joints = world[f]
            pixels = cam.project(joints)
            box = box_from_joints(pixels, cam.world_to_camera(joints)[:, 2] > 0, self.margin)
            h, w = frame.shape[:2]
            if box is None or not box_visible(box, w, h):
                summary.skip_frame("person outside the image", f"{job.name}:{f}")
                continue
            crops = crop_person(frame, cam.K, box, context=self.context, max_side=self.max_side, dist=dist)
            sample = make_sample(safe_key(p["subject"], p["action"], p["camera"], f"{f:06d}"), crops, dataset=SOURCE,
                                 subject=p["subject"], camera=p["camera"], action=p["action"].split(" ")[0],
                                 frame=f, joints_cam=None, joint_valid=np.ones(17, bool),
                                 extra={"video": f"{p['subject']}/{Path(p['video']).name}", "action_full": p["action"]})
            # World joints with the camera's R and t (world ≠ camera for Human3.6M).
            meta: SampleMeta = sample.meta
            meta.labeled, meta.joints, meta.R, meta.t = True, np.round(joints, 3), cam.R, cam.t
            yield sample


def _default_camera_file(root: Path) -> Path:
    names = ("cameras.json", "camera-parameters.json", "cameras.h5")
    return next((root / n for n in names if (root / n).is_file()), root / names[0])


def prepare(root: Path, out: Path, *, every: int | None = None, intrinsics_file: str | Path | None = None,
            subjects: tuple[str, ...] = TEST_SUBJECTS, context: float = 1.4, max_side: int = 320,
            poses_file=None, split_scheme: str | None = None, workers: int = 1
            ) -> tuple[H36MConverter, list[Job], Summary, dict]:
    """Check the root and camera file and list one job per (subject, action, camera) video:
    everything before the work. Returns the converter, the jobs, the summary so far and
    the parameters recorded in the manifests."""
    root = Path(root)
    if not root.is_dir():
        raise ConverterError(f"--root {root}: not a directory (expected the Human3.6M root holding S9/, S11/)")
    if poses_file:
        raise ConverterError("poses_file: not supported for h36m (the mocap poses are the labels)")
    if split_scheme:
        raise ConverterError(f"split_scheme {split_scheme!r}: h36m has one split, test (subjects {', '.join(subjects)})")
    for subject in subjects:
        for sub in ("Videos", "MyPoseFeatures/D3_Positions"):
            if not (root / subject / sub).is_dir():
                raise ConverterError(f"--root {root}: expected subdirectory {subject}/{sub}/ is missing")
    every = check_every(every, DEFAULT_EVERY)
    camera_file = Path(intrinsics_file) if intrinsics_file else _default_camera_file(root)
    layout, cameras = load_cameras(camera_file)
    for subject in subjects:
        if not any(s == subject for s, _ in cameras):
            present = sorted({s for s, _ in cameras}, key=lambda s: int(s[1:]) if s[1:].isdigit() else 0)
            raise ConverterError(f"camera file {camera_file}: no camera for {subject} ({layout} layout; subjects "
                                 f"present: {', '.join(present)})")
    summary = Summary(SOURCE)
    summary.notes.append(f"cameras from {camera_file} ({layout} layout, {len(cameras)} cameras, checked)")
    jobs = []
    for subject in subjects:
        for video in sorted((root / subject / "Videos").iterdir()):
            match = VIDEO_RE.match(video.name)
            summary.videos_listed += 1
            if not match:
                summary.skip_video("video name is not <Action>.<camera>.mp4", f"{subject}/{video.name}")
                continue
            action, camera = match["action"], match["camera"]
            poses_dir = root / subject / "MyPoseFeatures" / "D3_Positions"
            pose = poses_dir / f"{action}.cdf"
            if not pose.exists() and (poses_dir / f"{action}.npz").exists():
                pose = poses_dir / f"{action}.npz"
            jobs.append(Job(safe_key(subject, action, camera), "test",
                            {"subject": subject, "action": action, "camera": camera, "video": str(video),
                             "pose": str(pose)}))
    params = {"source": SOURCE, "every": every, "subjects": list(subjects), "context": context, "max_side": max_side,
              "camera_file_layout": layout,
              "cameras": {f"{s}/{c}": cam.record() for (s, c), cam in sorted(cameras.items()) if s in subjects}}
    return H36MConverter(cameras, every, context, max_side), jobs, summary, params
