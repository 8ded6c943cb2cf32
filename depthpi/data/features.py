"""Stored teacher features: their encoding, their checks against a run, their replay for the student.

A feature shard holds per key ``feat.npy`` (K, C, h, w) — float16, or uint8 of
round(255 · sigmoid(F)) — and ``views.json`` with each view's augmentation. The student
picks one view per sample and epoch, replays its augmentation exactly and distils
towards the stored map: no teacher in memory. ``depthpi.precompute`` writes them.
"""
from __future__ import annotations

import io
import json
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from depthpi.data.augment import ViewParams
from depthpi.data.pipeline import PipelineConfig, process_sample
from depthpi.data.schema import SampleError
from depthpi.data.shards import file_sha256, manifest_sha256, read_manifest

# uint8 stores p = sigmoid(F); logits come from p clipped inside (0, 1), by less than half a
# code so that re-encoding gives the stored byte back.
_UINT8_EPS = 0.25 / 255


def encode_features(features: torch.Tensor, dtype: str) -> bytes:
    """(K, C, h, w) float → ``.npy`` bytes (no pickle) in the stored dtype."""
    array = features.float().cpu()
    if dtype == "uint8":
        array = torch.round(torch.sigmoid(array) * 255).to(torch.uint8)
    else:
        array = array.to(torch.float16)
    buffer = io.BytesIO()
    np.save(buffer, array.numpy(), allow_pickle=False)
    return buffer.getvalue()


def decode_features(data: bytes) -> np.ndarray:
    """``.npy`` bytes → (K, C, h, w) float32 in the tap's own space (uint8: logits of p)."""
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if array.dtype == np.uint8:
        p = np.clip(array.astype(np.float32) / 255.0, _UINT8_EPS, 1 - _UINT8_EPS)
        return np.log(p / (1 - p)).astype(np.float32)
    return array.astype(np.float32)


def replay_map(sample, epoch: int, *, cfg: PipelineConfig, seed: int) -> dict:
    """Student map function in precomputed mode: pick a stored view, replay it, attach its map.

    Raises:
        SampleError: the stored members are missing, unreadable or disagree with each other.
    """
    views = _stored_views(sample)
    pick = int(np.random.default_rng([seed, epoch, zlib.crc32(sample.key.encode()), 1]).integers(len(views)))
    try:
        view = ViewParams.from_dict(views[pick])
    except (TypeError, ValueError) as err:
        raise SampleError(sample.key, "views.json", f"view {pick} is not a view record ({err})") from None
    features = _stored_features(sample, len(views))
    out = process_sample(sample, cfg, view=view, view_index=pick)
    out["teacher_feat"] = features[pick]
    out.pop("view")
    return out


def _stored_views(sample) -> list:
    if "views.json" not in sample.extras:
        raise SampleError(sample.key, "views.json", "no precomputed features paired with this sample")
    try:
        stored = json.loads(sample.extras["views.json"])
        views = stored["views"]
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as err:
        raise SampleError(sample.key, "views.json", f"unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(views, list):
        raise SampleError(sample.key, "views.json", f"'views' must be a list, got {type(views).__name__}")
    if not views:  # the source sample was bad at precompute time
        raise SampleError(sample.key, "views.json", f"skipped at precompute: {stored.get('skipped', 'no views')}")
    return views


def _stored_features(sample, views: int) -> np.ndarray:
    """(K, C, h, w) float32 of a sample's ``feat.npy``, checked against its K views."""
    if "feat.npy" not in sample.extras:
        raise SampleError(sample.key, "feat.npy", "views stored without their features")
    try:
        features = decode_features(sample.extras["feat.npy"])
    except (ValueError, OSError, EOFError) as err:
        raise SampleError(sample.key, "feat.npy", f"unreadable ({type(err).__name__}: {err})") from None
    if features.ndim != 4 or features.shape[0] != views:
        raise SampleError(sample.key, "feat.npy", f"expected ({views}, C, h, w) for {views} stored views, "
                                                  f"got shape {features.shape}")
    if not np.isfinite(features).all():
        raise SampleError(sample.key, "feat.npy", "contains NaN or infinite values")
    return features


def check_feature_shards(features_dir: str | Path, source_dir: str | Path, *, tap: str, input_size: int,
                         sigmoid_needed: bool, teacher_weights: str | None) -> dict:
    """Fail at start when stored features do not match the run; returns their manifest params.

    Raises:
        ValueError: naming the feature manifest and every mismatch (tap, input size, source
            split, teacher, dtype).
    """
    manifest = read_manifest(features_dir)
    params = manifest.params
    where = Path(features_dir) / "manifest.json"
    if params.get("kind") != "teacher_features":
        raise ValueError(f"{where}: not a teacher-feature split (params.kind={params.get('kind')!r})")
    problems = []
    if params["tap"] != tap:
        problems.append(f"tap {params['tap']!r} but distill.tap is {tap!r}")
    if params["input_size"] != input_size:
        problems.append(f"input size {params['input_size']} but data.pipeline.input_size is {input_size}")
    source_hash = manifest_sha256(source_dir)
    if params["source_manifest_sha256"] != source_hash:
        problems.append(f"built from a different source split (source manifest changed since: {source_dir})")
    if teacher_weights and Path(teacher_weights).is_file():
        if file_sha256(teacher_weights) != params["teacher_sha256"]:
            problems.append(f"computed by another teacher than teacher.weights={teacher_weights}")
    elif teacher_weights and os.path.normpath(teacher_weights) != os.path.normpath(params["teacher"]):
        # no file to hash (students may train where the teacher is not): the recorded path must match
        problems.append(f"computed by teacher {params['teacher']!r}, but teacher.weights is {teacher_weights!r} "
                        f"(not on this machine, so its hash cannot be compared)")
    if params["dtype"] == "uint8" and not sigmoid_needed:
        problems.append("stored as uint8 sigmoid, but the distillation uses no sigmoid (store fp16)")
    if problems:
        raise ValueError(f"{where}: feature shards do not match the config: " + "; ".join(problems))
    return params
