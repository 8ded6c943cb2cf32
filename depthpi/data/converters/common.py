"""Shared by the raw-dataset converters: crops, boxes, the summary and the shard driver.

Crops (thesis eq. 4.7): :func:`crop_person` cuts a square of ``context`` × the person box's
long side, resized to at most ``max_side`` pixels, with intrinsics exact for OpenCV's
resize convention; the depth crop is that square reprojected into the depth camera
(nearest-neighbour, so every stored depth is a measured one).

The driver (:func:`run_conversion`) turns a list of :class:`Job` (one per video) into
shards, ``videos_per_shard`` videos per shard, in parallel over processes, through the
resumable shard builder (:mod:`depthpi.data.shard_build`): a finished shard's sidecar
keeps its own summary, so an interrupted run resumes and the final summary is still
complete. Converting the same input twice gives byte-identical shards. docs/datasets.md
describes what the converters read and write.
"""
from __future__ import annotations

import json
import struct
import traceback
import zlib
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from depthpi.camera import Camera, reproject_image
from depthpi.data.schema import Sample, SampleMeta, encode_sample
from depthpi.data.shard_build import ShardJob, build, manifest_of
from depthpi.data.shards import Manifest, TarShard, write_manifest
from depthpi.io import atomic_write_text
from depthpi.skeleton import H36M_17

MAX_NAMED = 50  # names kept per skip reason in the summary


# --- summary ------------------------------------------------------------------------
@dataclass
class Summary:
    """What a conversion did, per source: mergeable across shards and processes.

    Attributes:
        videos_listed: videos (sequences) found in the raw layout.
        videos_read: videos that were opened and converted (possibly partially).
        frames_written: source frames that gave at least one sample.
        samples_written: samples (one per person and frame).
        frames_skipped: reason → frames skipped for it.
        videos_skipped: reason → videos skipped entirely.
        named: reason → the files / videos / frames concerned (first MAX_NAMED).
        notes: free lines (e.g. intrinsics fit residuals).
    """

    source: str
    videos_listed: int = 0
    videos_read: int = 0
    frames_written: int = 0
    samples_written: int = 0
    frames_skipped: Counter = field(default_factory=Counter)
    videos_skipped: Counter = field(default_factory=Counter)
    named: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def _name(self, reason: str, name: str | None) -> None:
        if name is None:
            return
        names = self.named.setdefault(reason, [])
        if len(names) < MAX_NAMED and name not in names:
            names.append(name)

    def skip_frame(self, reason: str, name: str | None = None, count: int = 1) -> None:
        if count > 0:
            self.frames_skipped[reason] += count
            self._name(reason, name)

    def skip_video(self, reason: str, name: str) -> None:
        self.videos_skipped[reason] += 1
        self._name(reason, name)

    def merge(self, other: Summary) -> None:
        self.videos_listed += other.videos_listed
        self.videos_read += other.videos_read
        self.frames_written += other.frames_written
        self.samples_written += other.samples_written
        self.frames_skipped.update(other.frames_skipped)
        self.videos_skipped.update(other.videos_skipped)
        for reason, names in other.named.items():
            for name in names:
                self._name(reason, name)
        self.notes.extend(n for n in other.notes if n not in self.notes)

    def to_dict(self) -> dict:
        return {"source": self.source, "videos_listed": self.videos_listed, "videos_read": self.videos_read,
                "frames_written": self.frames_written, "samples_written": self.samples_written,
                "frames_skipped": dict(sorted(self.frames_skipped.items())),
                "videos_skipped": dict(sorted(self.videos_skipped.items())),
                "named": {k: list(v) for k, v in sorted(self.named.items())}, "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, record: dict) -> Summary:
        summary = cls(record["source"])
        for name in ("videos_listed", "videos_read", "frames_written", "samples_written"):
            setattr(summary, name, int(record.get(name, 0)))
        summary.frames_skipped = Counter(record.get("frames_skipped", {}))
        summary.videos_skipped = Counter(record.get("videos_skipped", {}))
        summary.named = {k: list(v) for k, v in record.get("named", {}).items()}
        summary.notes = list(record.get("notes", []))
        return summary

    def format(self) -> str:
        lines = [f"[{self.source}] videos: {self.videos_listed} listed, {self.videos_read} read, "
                 f"{sum(self.videos_skipped.values())} skipped | frames written: {self.frames_written} "
                 f"({self.samples_written} samples) | frames skipped: {sum(self.frames_skipped.values())}"]
        for kind, counter in (("videos skipped", self.videos_skipped), ("frames skipped", self.frames_skipped)):
            for reason, count in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
                names = self.named.get(reason, [])
                shown = ", ".join(names[:8]) + (f", … ({len(names)} named)" if len(names) > 8 else "")
                lines.append(f"  {kind}: {count:>7} × {reason}" + (f"  [{shown}]" if shown else ""))
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


# --- geometry -----------------------------------------------------------------------
def box_from_joints(pixels: np.ndarray, valid: np.ndarray | None = None, margin: float = 0.1
                    ) -> np.ndarray | None:
    """(4,) x, y, w, h around the valid projected joints, grown by ``margin`` of its size
    on every side (at least 8 px); None with fewer than 2 finite valid joints."""
    pixels = np.asarray(pixels, np.float64)
    keep = np.isfinite(pixels).all(1)
    if valid is not None:
        keep &= np.asarray(valid, bool)
    if keep.sum() < 2:
        return None
    lo, hi = pixels[keep].min(0), pixels[keep].max(0)
    size = hi - lo
    pad = np.maximum(margin * size, 8.0)
    lo, hi = lo - pad, hi + pad
    return np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]])


def box_visible(box: np.ndarray, width: int, height: int, min_fraction: float = 0.25) -> bool:
    """Whether at least ``min_fraction`` of the box area lies inside the frame."""
    x, y, w, h = box
    ix = max(0.0, min(x + w, width - 0.5) - max(x, -0.5))
    iy = max(0.0, min(y + h, height - 0.5) - max(y, -0.5))
    return w > 0 and h > 0 and ix * iy >= min_fraction * w * h


@dataclass
class Crops:
    """The stored crops of one person: images, their intrinsics and the box in the RGB crop."""

    rgb: np.ndarray
    rgb_K: np.ndarray
    depth: np.ndarray | None
    depth_K: np.ndarray | None
    bbox: np.ndarray


def _padded_region(image: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """image[y0:y0+side, x0:x0+side] with zeros outside the image."""
    h, w = image.shape[:2]
    if x0 >= 0 and y0 >= 0 and x0 + side <= w and y0 + side <= h:
        return image[y0:y0 + side, x0:x0 + side]
    out = np.zeros((side, side) + image.shape[2:], image.dtype)
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if xb > xa and yb > ya:
        out[ya - y0:yb - y0, xa - x0:xb - x0] = image[ya:yb, xa:xb]
    return out


def crop_person(rgb: np.ndarray, rgb_K: np.ndarray, box: np.ndarray, depth: np.ndarray | None = None,
                depth_K: np.ndarray | None = None, *, context: float = 1.4, max_side: int = 320,
                dist: np.ndarray | None = None) -> Crops:
    """Crop an RGB frame (and its depth frame) around a person box.

    Args:
        rgb: (H, W, 3) full frame, any channel order (kept).
        rgb_K: (3, 3) intrinsics of the full frame (pinhole; see ``dist``).
        box: (4,) x, y, w, h in full-frame pixels.
        depth: (h, w) uint16 mm full depth frame, or None.
        depth_K: (3, 3) intrinsics of the depth frame (same centre and rotation as RGB).
        context: crop side = context × max(w, h).
        max_side: the stored RGB crop's side is at most this (area downscaling).
        dist: optional OpenCV distortion coefficients (k1, k2, p1, p2[, k3]) of the RGB
            frame; the crop is then *undistorted* so that ``rgb_K`` is an exact pinhole.
    Returns:
        :class:`Crops`; ``depth``/``depth_K`` None without depth.
    """
    x, y, w, h = (float(v) for v in box)
    side = max(int(np.ceil(context * max(w, h))), 8)
    # An integer pre-shrink k (OpenCV's fast INTER_AREA path) needs a side divisible by k.
    k = max(1, int(side // max_side))
    side = k * int(np.ceil(side / k))
    x0 = int(np.floor(x + w / 2 - side / 2))
    y0 = int(np.floor(y + h / 2 - side / 2))
    out_side = min(side, max_side)
    scale = out_side / side
    region = _padded_region(rgb, x0, y0, side)
    crop = region
    if k > 1:  # both resizes map u → (u + 0.5)·s − 0.5, so their composition does too
        crop = cv2.resize(crop, (side // k, side // k), interpolation=cv2.INTER_AREA)
    if crop.shape[0] != out_side:
        crop = cv2.resize(crop, (out_side, out_side), interpolation=cv2.INTER_AREA)
    # cv2.resize maps u → (u − x0 + 0.5)·s − 0.5 = (u − x0')·s with x0' = x0 + 0.5(1 − s)/s.
    offset = 0.5 * (1.0 - scale) / scale
    full_cam = Camera.from_intrinsics(rgb_K)
    crop_cam = full_cam.crop(x0 + offset, y0 + offset, scale)
    if dist is not None and np.any(np.asarray(dist) != 0):
        # The crop is the distorted image seen through crop_cam.K; undistort onto that K.
        maps = cv2.initUndistortRectifyMap(crop_cam.K, np.asarray(dist, np.float64), None, crop_cam.K,
                                           (out_side, out_side), cv2.CV_32FC1)
        crop = cv2.remap(crop, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    bbox = np.array([(x - x0 - offset) * scale, (y - y0 - offset) * scale, w * scale, h * scale])

    depth_crop = depth_K_crop = None
    if depth is not None and depth_K is not None:
        depth_cam = Camera.from_intrinsics(depth_K)
        # Eq. 4.7: the RGB crop square's corners (continuous edges) into the depth frame.
        corners = np.array([[-0.5, -0.5, 1], [out_side - 0.5, -0.5, 1], [-0.5, out_side - 0.5, 1],
                            [out_side - 0.5, out_side - 0.5, 1]], np.float64)
        mapped = corners @ crop_cam.homography_to(depth_cam).T
        mapped = mapped[:, :2] / mapped[:, 2:3]
        lo, hi = mapped.min(0), mapped.max(0)
        d_side = hi - lo
        d_scale = min(1.0, max_side / float(d_side.max()))
        size_wh = np.maximum(np.round(d_side * d_scale).astype(int), 1)
        # Output pixel i (centre) ↔ depth u = lo + 0.5/s' + i/s'  (edges aligned with the RGB crop).
        d_cam = depth_cam.crop(lo[0] + 0.5 / d_scale, lo[1] + 0.5 / d_scale, d_scale)
        depth_crop = reproject_image(depth, depth_cam, d_cam, (int(size_wh[1]), int(size_wh[0])),
                                     interpolation="nearest")
        depth_K_crop = d_cam.K
    return Crops(crop, crop_cam.K, depth_crop, depth_K_crop, bbox)


def make_sample(key: str, crops: Crops, *, dataset: str, subject: str, camera: str, action: str,
                frame: int, joints_cam: np.ndarray | None, joint_valid: np.ndarray | None,
                extra: dict | None = None) -> Sample:
    """A schema sample with world = the RGB camera frame (R = I, t = 0); ``crops.rgb`` is BGR (OpenCV's)."""
    labeled = joints_cam is not None
    rgb = cv2.cvtColor(crops.rgb, cv2.COLOR_BGR2RGB)
    meta = SampleMeta(
        dataset=dataset, subject=subject, camera=camera, action=action, frame=int(frame), labeled=labeled,
        rgb_K=np.asarray(crops.rgb_K, np.float64),
        depth_K=None if crops.depth_K is None else np.asarray(crops.depth_K, np.float64),
        R=np.eye(3), t=np.zeros(3),
        joints=None if not labeled else np.round(np.asarray(joints_cam, np.float64), 3),
        joint_valid=(np.zeros(H36M_17.num_joints, bool) if joint_valid is None
                     else np.asarray(joint_valid, bool)),
        bbox=np.round(crops.bbox, 3), skeleton=H36M_17.name, extra=dict(extra or {}))
    return Sample(key=key, rgb=np.ascontiguousarray(rgb), depth=crops.depth, meta=meta)


def safe_key(*parts) -> str:
    """A webdataset key: no dots (the member-name separator), no spaces or slashes."""
    text = "_".join(str(p) for p in parts)
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


# --- video reading ------------------------------------------------------------------
def iter_video_frames(path: Path, wanted: list[int], summary: Summary, name: str) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, BGR frame) for the sorted frame indices ``wanted``.

    Frames in between are skipped with ``cap.grab()``: OpenCV's FFmpeg backend still decodes
    them but neither converts nor returns them (1.2× the rate of ``read()`` on textured 1080p
    MJPG), so ``--every 5`` costs most of ``--every 1``'s decode time. A
    video that ends early or stops decoding is reported once (named) and its remaining
    wanted frames are counted as skipped.
    """
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            summary.skip_frame("rgb video unreadable", name, len(wanted))
            return
        index = 0
        for pos, target in enumerate(wanted):
            ok = True
            while index < target:
                ok = cap.grab()
                index += 1
                if not ok:
                    break
            if ok:
                ok, frame = cap.read()
                index += 1
            if not ok or frame is None:
                summary.skip_frame("rgb video ended early (truncated or corrupt)", name, len(wanted) - pos)
                return
            yield target, frame
    finally:
        cap.release()


def read_depth_png(path: Path, expected_hw: tuple[int, int] | None = None) -> tuple[np.ndarray | None, str | None]:
    """(depth uint16, None) or (None, reason)."""
    if not path.is_file():
        return None, "depth frame missing"
    depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if depth is None:
        return None, "depth frame unreadable"
    if depth.dtype != np.uint16 or depth.ndim != 2:
        return None, f"depth frame not 16-bit single-channel ({depth.dtype}, {depth.shape})"
    if expected_hw is not None and depth.shape != tuple(expected_hw):
        return None, f"depth frame of size {depth.shape[1]}x{depth.shape[0]} (expected {expected_hw[1]}x{expected_hw[0]})"
    return depth, None


# --- the driver ---------------------------------------------------------------------
@dataclass
class Job:
    """One unit of conversion: a video (sequence) and the split it goes to."""

    name: str
    split: str
    payload: dict[str, Any] = field(default_factory=dict)


class Converter(ABC):
    """Base of a source converter (picklable: workers receive a copy); subclasses set ``source``."""

    source = "?"

    @abstractmethod
    def convert_video(self, job: Job, summary: Summary) -> Iterator[Sample]:
        """The samples of one video (sequence), in a deterministic order.

        Bad frames are skipped and recorded with ``summary.skip_frame``; a video that cannot be
        read at all with ``summary.skip_video`` (nothing yielded). Each sample holds the
        person crop with its adjusted intrinsics (``crop_person``, ``make_sample``), joints in
        mm in the camera frame.
        """


class ConverterError(ValueError):
    """A wrong root or option: raised before any work starts, naming what was expected."""


def check_every(every: int | None, default: int) -> int:
    """The ``every`` option (convert every N-th frame): ``default`` when None, else at least 1."""
    every = default if every is None else int(every)
    if every < 1:
        raise ConverterError(f"every must be >= 1, got {every}")
    return every


# What unreadable or inconsistent raw files raise (parsing, decoding, short or missing
# files). Anything else is a bug of the converter and stops the run.
BAD_VIDEO_ERRORS = (OSError, ValueError, IndexError, KeyError, EOFError, struct.error, zlib.error, cv2.error)


def _worker_init() -> None:
    cv2.setNumThreads(1)


def _convert_group(job: ShardJob, shard: TarShard, converter: Converter) -> dict:
    """Fill one shard with the samples of a group of videos; returns its report ``{"summary"}``.

    A video's samples are written only once the whole video converted: one that fails
    midway contributes nothing (and is named in the summary).
    """
    summary = Summary(converter.source)
    for video in job.work:
        buffered: list[dict[str, bytes]] = []
        frames = set()
        try:
            for sample in converter.convert_video(video, summary):
                buffered.append(encode_sample(sample))
                frames.add(sample.meta.frame)
        except BAD_VIDEO_ERRORS as err:  # a bad file never stops the conversion
            last = traceback.format_exception_only(type(err), err)[-1].strip()
            summary.skip_video(f"conversion error ({last[:120]})", video.name)
            continue
        except Exception as err:  # a converter bug: crash, but say on which video
            err.add_note(f"while converting {converter.source} video {video.name!r}")
            raise
        for members in buffered:
            shard.write(members)
        summary.frames_written += len(frames)
        summary.samples_written += len(buffered)
    return {"summary": summary.to_dict()}


def run_conversion(converter: Converter, jobs: list[Job], out: Path, *, videos_per_shard: int, workers: int,
                   params: dict, summary: Summary, progress: bool = True) -> dict[str, Manifest]:
    """Convert ``jobs`` into ``out/<split>/<source>-NNNNNN.tar`` + ``manifest.json`` per split.

    Resumable through :func:`depthpi.data.shard_build.build`: a shard is kept when its
    sidecar has the digest of (``params``, its video names). ``summary`` (which may already
    hold skips found while listing) receives every shard's counts; each split's manifest
    carries the split's frame skips in ``skipped``. Returns split → manifest.
    """
    out = Path(out)
    plan: dict[str, list[ShardJob]] = {}
    for split in sorted({job.split for job in jobs}):
        split_jobs = sorted((j for j in jobs if j.split == split), key=lambda j: j.name)
        groups = [split_jobs[i:i + videos_per_shard] for i in range(0, len(split_jobs), videos_per_shard)]
        plan[split] = [ShardJob(out / split / f"{converter.source}-{i:06d}.tar",
                                {"conversion": params, "videos": [video.name for video in group]},
                                work=group, size=len(group)) for i, group in enumerate(groups)]
        (out / split).mkdir(parents=True, exist_ok=True)
    shard_jobs = [job for split_jobs in plan.values() for job in split_jobs]
    records = build(shard_jobs, partial(_convert_group, converter=converter), workers=workers,
                    desc=f"{converter.source} → {out}", unit="video", progress=progress, initializer=_worker_init)
    by_path = {job.path: record for job, record in zip(shard_jobs, records, strict=True)}
    manifests = {}
    for split, split_jobs in plan.items():
        split_records = [by_path[job.path] for job in split_jobs]
        split_summary = Summary(converter.source)
        for record in split_records:
            split_summary.merge(Summary.from_dict(record["report"]["summary"]))
        summary.merge(split_summary)
        skipped = {"count": int(sum(split_summary.frames_skipped.values())),
                   "by_reason": dict(sorted(split_summary.frames_skipped.items())),
                   "examples": [f"{reason}: {name}" for reason, names in sorted(split_summary.named.items())
                                for name in names][:MAX_NAMED],
                   "videos_skipped": dict(sorted(split_summary.videos_skipped.items()))}
        manifest = manifest_of(split_records, {**params, "split": split}, H36M_17.name, skipped)
        write_manifest(out / split, manifest)
        manifests[split] = manifest
    atomic_write_text(out / f"summary.{converter.source}.json", json.dumps(summary.to_dict(), indent=1))
    return manifests
