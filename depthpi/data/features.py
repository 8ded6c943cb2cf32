"""Stored teacher features: their encoding and their replay for the student (issue 6).

A feature shard holds per key ``feat.npy`` (K, C, h, w) — float16, or uint8 of
round(255 · sigmoid(F)) — and ``views.json`` with each view's augmentation. The student
picks one view per sample and epoch, replays its augmentation exactly and distils
towards the stored map: no teacher in memory.
"""
from __future__ import annotations

import io
import json
import zlib

import numpy as np
import torch

from depthpi.data.augment import ViewParams
from depthpi.data.pipeline import PipelineConfig, process_sample
from depthpi.data.schema import SampleError

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
    """Student map function in precomputed mode: pick a stored view, replay it, attach its map."""
    if "views.json" not in sample.extras:
        raise SampleError(sample.key, "views.json", "no precomputed features paired with this sample")
    stored = json.loads(sample.extras["views.json"])
    views = stored["views"]
    if not views:  # the source sample was bad at precompute time
        raise SampleError(sample.key, "views.json", f"skipped at precompute: {stored.get('skipped', 'no views')}")
    if "feat.npy" not in sample.extras:
        raise SampleError(sample.key, "feat.npy", "views stored without their features")
    pick = int(np.random.default_rng([seed, epoch, zlib.crc32(sample.key.encode()), 1]).integers(len(views)))
    out = process_sample(sample, cfg, view=ViewParams.from_dict(views[pick]), view_index=pick)
    out["teacher_feat"] = decode_features(sample.extras["feat.npy"])[pick]
    out.pop("view")
    return out
