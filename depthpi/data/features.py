"""Stored teacher features: their layout and encoding, their checks against a run, their replay.

A feature split holds K *sets*, ``set-0`` … ``set-{K−1}``, each an ordinary split mirroring
the source split shard for shard and key for key. Set j holds one view of every sample:
view ``(j + crc32(key)) mod K`` (:func:`view_in_set`), as ``feat.npy`` (C, h, w) — float16,
or uint8 of round(255 · sigmoid(F)) — and ``view.json`` {"seed", "index", "view"}. The
split's own ``manifest.json`` has no shards; its params say the layout, the teacher, tap,
dtype, K and the sha256 of every set's manifest. In epoch e the student reads each source
shard with one set (:func:`depthpi.data.shard_plan.companion_set`: an offset per shard
plus e), so it reads one stored view per sample and epoch, and every sample meets its K
views over K epochs. It replays the view's augmentation exactly and distils towards the
stored map: no teacher in memory. ``depthpi.precompute`` writes them.
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
from depthpi.data.shards import ManifestError, SplitLocation, manifest_sha256, read_manifest
from depthpi.io import file_sha256
from depthpi.models.taps import same_tap
from depthpi.validation import Choice

LAYOUT = "one_view_per_set"  # params.layout of a feature split written as described above
MAX_VIEWS = 64

# uint8 stores p = sigmoid(F); logits come from p clipped inside (0, 1), by less than half a
# code so that re-encoding gives the stored byte back.
_UINT8_EPS = 0.25 / 255


# fp16: the map in float16; uint8: round(255 · sigmoid(map))
FeatureDtype = Choice("FeatureDtype", "fp16 uint8")


def set_name(index: int) -> str:
    """Directory of stored-view set ``index`` inside a feature split."""
    return f"set-{index}"


def view_in_set(key: str, set_index: int, views: int) -> int:
    """The view of sample ``key`` that set ``set_index`` of a K = ``views`` split holds."""
    return (set_index + zlib.crc32(key.encode())) % views


def feature_sets(features_dir: str | Path) -> list[str]:
    """The locations of a feature split's K sets, in set order (see :func:`check_feature_shards`)."""
    location = SplitLocation.parse(features_dir)
    views = _stored_view_count(read_manifest(features_dir, check_files=False).params,
                               location.url("manifest.json"))
    return [location.url(set_name(j)) for j in range(views)]


def encode_features(features: torch.Tensor, dtype: FeatureDtype) -> bytes:
    """(C, h, w) float → ``.npy`` bytes (no pickle) in the stored dtype."""
    array = features.float().cpu()
    if dtype == FeatureDtype.uint8:
        array = torch.round(torch.sigmoid(array) * 255).to(torch.uint8)
    else:
        array = array.to(torch.float16)
    buffer = io.BytesIO()
    np.save(buffer, array.numpy(), allow_pickle=False)
    return buffer.getvalue()


def decode_features(data: bytes) -> np.ndarray:
    """``.npy`` bytes → float32 in the tap's own space (uint8: logits of p), shape as stored."""
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if array.dtype == np.uint8:
        p = np.clip(array.astype(np.float32) / 255.0, _UINT8_EPS, 1 - _UINT8_EPS)
        return np.log(p / (1 - p)).astype(np.float32)
    return array.astype(np.float32)


def replay_map(sample, epoch: int, *, cfg: PipelineConfig, seed: int) -> dict:
    """Student map function in precomputed mode: replay the stored view, attach its map.

    Which view a sample gets in an epoch is decided by which set its shard is read with
    (the loader's plan); ``epoch`` and ``seed`` do not enter here.

    Raises:
        SampleError: the stored members are missing, unreadable or disagree with each other.
    """
    index, view = _stored_view(sample)
    out = process_sample(sample, cfg, view=view, view_index=index)
    out["teacher_feat"] = _stored_features(sample)
    out.pop("view")
    return out


def _stored_view(sample) -> tuple[int, ViewParams]:
    """(view index, view parameters) of a sample's ``view.json``."""
    if "view.json" not in sample.extras:
        raise SampleError(sample.key, "view.json", "no precomputed features paired with this sample")
    try:
        stored = json.loads(sample.extras["view.json"])
        index = stored["index"]
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as err:
        raise SampleError(sample.key, "view.json", f"unreadable ({type(err).__name__}: {err})") from None
    if index is None:  # the source sample was bad at precompute time
        raise SampleError(sample.key, "view.json", f"skipped at precompute: {stored.get('skipped', 'no view')}")
    try:
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_VIEWS:
            raise ValueError(f"index {index!r} is not a view number")
        return index, ViewParams.from_dict(stored["view"])
    except (TypeError, ValueError, KeyError) as err:
        raise SampleError(sample.key, "view.json", f"not a view record ({err})") from None


def _stored_features(sample) -> np.ndarray:
    """(C, h, w) float32 of a sample's ``feat.npy``."""
    if "feat.npy" not in sample.extras:
        raise SampleError(sample.key, "feat.npy", "view stored without its features")
    try:
        features = decode_features(sample.extras["feat.npy"])
    except (ValueError, OSError, EOFError) as err:
        raise SampleError(sample.key, "feat.npy", f"unreadable ({type(err).__name__}: {err})") from None
    if features.ndim != 3:
        raise SampleError(sample.key, "feat.npy", f"expected one view (C, h, w), got shape {features.shape}")
    if not np.isfinite(features).all():
        raise SampleError(sample.key, "feat.npy", "contains NaN or infinite values")
    return features


def _stored_view_count(params: dict, where: str) -> int:
    """K of a feature split's params, refusing other layouts with how to rebuild them."""
    if params.get("kind") != "teacher_features":
        raise ValueError(f"{where}: not a teacher-feature split (params.kind={params.get('kind')!r})")
    if params.get("layout") != LAYOUT:
        command = (f"depthpi precompute --teacher {params.get('teacher')} --shards {params.get('source')} "
                   f"--tap {params.get('tap')} --views {params.get('views')} --dtype {params.get('dtype')} "
                   f"--seed {params.get('seed')} --out NEW_DIRECTORY")
        raise ValueError(f"{where}: feature shards of an earlier layout (all K views of a sample in one feat.npy, "
                         f"read whole to use one view); this version reads one set of shards per view: rebuild them "
                         f"with `{command}` and point teacher.features at NEW_DIRECTORY")
    views = params.get("views")
    if not isinstance(views, int) or isinstance(views, bool) or not 1 <= views <= MAX_VIEWS:
        raise ValueError(f"{where}: params.views must be a view count from 1 to {MAX_VIEWS}, got {views!r}")
    return views


def _check_sets(features_dir: str | Path, params: dict) -> list[str]:
    """Problems of the K sets: one missing, or whose manifest is not the one the split recorded."""
    recorded = params.get("set_manifests")
    sets = feature_sets(features_dir)
    if not isinstance(recorded, list) or len(recorded) != len(sets):
        return [f"params.set_manifests must list the sha256 of {len(sets)} set manifests"]
    problems = []
    for location, digest in zip(sets, recorded):
        try:
            found = manifest_sha256(location)
        except ManifestError as err:
            problems.append(str(err))
            continue
        if found != digest:
            problems.append(f"{location}: its manifest is not the one this split was written with (rebuild the split)")
    return problems


def check_feature_shards(features_dir: str | Path, source_dir: str | Path, *, tap: str, input_size: int,
                         sigmoid_needed: bool, teacher_weights: str | None, teacher_model) -> dict:
    """Fail at start when stored features do not match the run; returns their manifest params.

    ``tap`` and the recorded tap match when they name one tap of ``teacher_model`` (its
    ``ModelConfig``): ``block13.post_relu`` is ``layer3.5.post_relu`` of a ResNet-50.

    Raises:
        ValueError: naming the feature manifest and every mismatch (layout, sets, tap, input
            size, source split, teacher, dtype).
    """
    manifest = read_manifest(features_dir)
    params = manifest.params
    where = SplitLocation.parse(features_dir).url("manifest.json")
    _stored_view_count(params, where)
    problems = _check_sets(features_dir, params)
    if not same_tap(params["tap"], tap, teacher_model.arch, teacher_model.kind == "teacher"):
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
    if params["dtype"] == FeatureDtype.uint8 and not sigmoid_needed:
        problems.append("stored as uint8 sigmoid, but the distillation uses no sigmoid (store fp16)")
    if problems:
        raise ValueError(f"{where}: feature shards do not match the config: " + "; ".join(problems))
    return params
