"""The mean-pose reference: what a model that has learnt nothing scores.

A model that predicts the training split's mean root-relative pose for every image has
learnt nothing from the pixels; its MPJPE on the evaluated split (``mean_pose_mpjpe`` in
every report) is the bar any trained model must clear by far.

Poses are root-relative, in the crop camera's frame of the un-augmented view — the frame
the models predict in. That frame's orientation depends only on the stored camera and the
box (``crop_camera`` turns the camera to the box centre; the crop size only zooms), so the
mean is read from the samples' metadata alone, without decoding an image.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from depthpi.camera import Camera
from depthpi.data.augment import ViewParams
from depthpi.data.pipeline import crop_camera
from depthpi.data.schema import SampleError, SampleMeta
from depthpi.data.shard_stream import ReadLog, TarSamples, split_sources
from depthpi.data.shards import SplitLocation, manifest_sha256, read_manifest
from depthpi.io import atomic_write_json
from depthpi.skeleton import get_skeleton

log = logging.getLogger(__name__)
_SIZE = 65  # any crop size gives the same frame orientation


def root_relative_in_crop_frame(meta: SampleMeta, root: int) -> np.ndarray:
    """(J, 3) mm: a labelled sample's joints, root-relative, in its un-augmented crop camera's frame."""
    camera = crop_camera(Camera(meta.rgb_K, meta.R, meta.t), meta.bbox, ViewParams(), _SIZE)
    points = camera.world_to_camera(meta.joints)
    return points - points[root]


def mean_pose(split_dir: str | Path) -> np.ndarray:
    """(J, 3) float64 mm: the mean root-relative pose of a split's labelled samples.

    Each joint is averaged over the samples where it is valid. Samples whose metadata is
    unusable are skipped (and counted in the log), as the loader would skip them.

    Raises:
        ValueError: the split has no labelled sample.
    """
    manifest = read_manifest(split_dir)
    skeleton = get_skeleton(manifest.skeleton)
    sums, counts = np.zeros((skeleton.num_joints, 3)), np.zeros(skeleton.num_joints)
    reads = ReadLog(f"mean pose of {split_dir}")
    sources = split_sources(SplitLocation.parse(split_dir), manifest)
    stream = TarSamples({s.url: s for s in sources}, reads)([{"url": s.url} for s in sources])
    for members in tqdm(stream, total=manifest.total_count, desc=f"mean pose of {split_dir}", unit="sample",
                        leave=False, mininterval=5, disable=None):  # no bar where stderr is a log, not a terminal
        key = members.get("__key__", "?")
        try:
            meta = SampleMeta.from_json(members.get("json", b""), key)
            if not meta.labeled:
                continue
            pose = root_relative_in_crop_frame(meta, skeleton.root)
        except (SampleError, ValueError, TypeError, np.linalg.LinAlgError) as err:
            reason = f"decode:{err.field}" if isinstance(err, SampleError) else f"mean pose:{type(err).__name__}"
            reads.skip(reason, key, members.get("__shard__"), str(err))  # logged with key and shard
            continue
        valid = meta.joint_valid & np.isfinite(pose).all(axis=1)
        sums[valid] += pose[valid]
        counts[valid] += 1
    skipped = sum(reads.report.skipped.values())
    if skipped:
        log.warning("%s: %d samples with unusable metadata left out of the mean pose (%s)", split_dir, skipped,
                    dict(reads.report.skipped))
    if not counts.any():
        raise ValueError(f"{split_dir}: no labelled sample to take a mean pose from")
    return sums / np.maximum(counts, 1)[:, None]


def cached_mean_pose(split_dir: str | Path, cache: Path) -> np.ndarray:
    """:func:`mean_pose`, stored in ``cache`` (JSON, with the split's manifest digest) and reused."""
    digest = manifest_sha256(split_dir)
    if cache.is_file():
        record = json.loads(cache.read_text())
        if record.get("manifest_sha256") == digest:
            return np.asarray(record["mean_pose_mm"], np.float64)
    pose = mean_pose(split_dir)
    atomic_write_json(cache, {"split": str(split_dir), "manifest_sha256": digest, "mean_pose_mm": pose.tolist()})
    return pose
