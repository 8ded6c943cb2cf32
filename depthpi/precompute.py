"""Teacher features computed once into shards that mirror the source split.

For every key of every source shard, K views: view 0 is the un-augmented sample, views
1..K−1 are augmentations drawn from (seed, key, view). Each view's parameters are stored
with the teacher's tap for that view, so a student can replay the exact view the teacher
saw (Beyer et al. 2022: a good teacher is patient and consistent).

Feature shard members per key: ``feat.npy`` (K, C, h, w) float16, or uint8 of
round(255 · sigmoid(F)); ``views.json`` {"seed", "views": [ViewParams dicts]}. Shard names,
keys and order equal the source's; a source sample that cannot be decoded gets a member with
``views.json`` {"views": [], "skipped": reason} only, which the student skips and counts.
``manifest.json`` records the teacher weights' path and sha256, tap, dtype, input size, K,
seed, the augmentation ranges, the source manifest's sha256, and the skipped samples.
Colour augmentation runs through ``depthpi.data.colour`` here as in the student's training
step, so a replayed view gives the student the pixels the teacher saw.
"""
from __future__ import annotations

import logging
import zlib
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import webdataset as wds
from tqdm import tqdm

from depthpi.data.augment import AugmentConfig, ViewParams, draw_view, view_rng
from depthpi.data.batches import Batch, model_inputs
from depthpi.data.features import encode_features
from depthpi.data.loader import DECODE_ERRORS, collate
from depthpi.data.pipeline import process_sample
from depthpi.data.schema import SampleError, decode_sample
from depthpi.data.shards import (Manifest, ShardInfo, TarShard, file_sha256, finished_shard,
                                 json_bytes, read_manifest, sidecar_path, write_manifest)
from depthpi.io import atomic_write_bytes
from depthpi.models.posenet import needs_depth, needs_rgb, tap_features
from depthpi.predict import Predictor

log = logging.getLogger(__name__)
DTYPES = ("fp16", "uint8")


@dataclass(frozen=True)
class PrecomputeConfig:
    """What to compute. ``tap`` e.g. ``block13.post_relu``; ``views`` K ≥ 1; ``seed`` of views."""

    teacher: str
    shards: str
    out: str
    tap: str = "block13.post_relu"
    views: int = 4
    dtype: str = "fp16"
    seed: int = 0
    batch_size: int = 32

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"precompute --dtype: expected one of {DTYPES}, got {self.dtype!r}")
        if self.views < 1:
            raise ValueError(f"precompute --views: expected >= 1, got {self.views}")


def view_params(key: str, views: int, seed: int, augment: AugmentConfig) -> list[ViewParams]:
    """View 0 is the identity; view v ≥ 1 is drawn from (seed, epoch 0, key, v)."""
    return [ViewParams()] + [draw_view(view_rng(seed, 0, key, v), augment) for v in range(1, views)]


class FeatureWriter:
    """Runs the frozen teacher over source shards and writes the mirrored feature shards."""

    def __init__(self, cfg: PrecomputeConfig, predictor: Predictor):
        self.cfg, self.predictor = cfg, predictor
        self.teacher_cfg = predictor.cfg
        base = self.teacher_cfg.data.pipeline
        self.pipeline = replace(base, depth=needs_depth(self.teacher_cfg.model))
        self.source = read_manifest(cfg.shards)
        self.params = {
            "kind": "teacher_features", "teacher": str(cfg.teacher), "teacher_sha256": file_sha256(cfg.teacher),
            "tap": cfg.tap, "relu": "pre" if cfg.tap.endswith("pre_relu") else "post", "dtype": cfg.dtype,
            "views": cfg.views, "seed": cfg.seed, "input_size": base.input_size,
            "augment": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(base.augment).items()},
            "source": str(cfg.shards), "source_manifest_sha256": file_sha256(Path(cfg.shards) / "manifest.json"),
        }

    def feature_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the tap at this input size, from one forward pass of zeros."""
        n, device = self.pipeline.input_size, self.predictor.device
        with torch.no_grad():
            feat = tap_features(self.predictor.model, self.teacher_cfg.model, torch.zeros(1, 3, n, n, device=device),
                                torch.zeros(1, 1, n, n, device=device), self.cfg.tap)
        return tuple(feat.shape[1:])

    def bytes_per_sample(self) -> int:
        c, h, w = self.feature_shape()
        return self.cfg.views * c * h * w * (2 if self.cfg.dtype == "fp16" else 1) + 128 * self.cfg.views

    def run(self, shard_ids: list[int]) -> list[ShardInfo]:
        """Write the given source shards (finished ones are skipped); returns their infos."""
        out = Path(self.cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        digest = zlib.crc32(json_bytes(self.params))
        done = []
        for index in tqdm(shard_ids, desc=f"precompute {self.cfg.tap}", unit="shard"):
            shard = self.source.shards[index]
            record = finished_shard(out, shard.name, str(digest))
            if record is None:
                record = self._write_shard(shard, out, str(digest))
            done.append(ShardInfo(**record["shard"]))
        return done

    def _write_shard(self, shard: ShardInfo, out: Path, digest: str) -> dict:
        target, skipped = TarShard(out / shard.name), []
        try:
            pending = []
            for members in wds.DataPipeline(wds.SimpleShardList([str(Path(self.cfg.shards) / shard.name)]),
                                            wds.tarfile_to_samples()):
                pending.append(members)
                if len(pending) * self.cfg.views >= self.cfg.batch_size:
                    skipped += self._write_batch(pending, target, shard.name)
                    pending = []
            if pending:
                skipped += self._write_batch(pending, target, shard.name)
        except BaseException:
            target.abort()
            raise
        if target.count != shard.count:
            raise ValueError(f"{shard.name}: wrote {target.count} keys, the source manifest lists {shard.count}")
        record = {"digest": digest, "shard": vars(target.finish()), "skipped": skipped}
        atomic_write_bytes(sidecar_path(out, shard.name), json_bytes(record), fsync=True)
        return record

    def _views(self, members: dict, shard: str) -> tuple[list | None, list | None, dict | None]:
        """(view params, processed views, None) of one source sample, or (None, None, skip record)
        when it is bad, judged as the loader judges: any decode failure, a SampleError in the map."""
        key = members.get("__key__")
        try:
            sample = decode_sample(members)
        except DECODE_ERRORS as err:
            field = err.field if isinstance(err, SampleError) else type(err).__name__
            return None, None, {"reason": f"decode:{field}", "key": key, "shard": shard, "message": str(err)}
        params = view_params(sample.key, self.cfg.views, self.cfg.seed, self.pipeline.augment)
        try:
            return params, [process_sample(sample, self.pipeline, view=p, view_index=v)
                            for v, p in enumerate(params)], None
        except SampleError as err:
            return None, None, {"reason": f"map:{err.field}", "key": key, "shard": shard, "message": str(err)}

    def _write_batch(self, members_list: list[dict], target: TarShard, shard: str) -> list[dict]:
        """Features of every sample, in source order. A bad source sample gets a member without
        features, so the shards still mirror the source key for key and the student skips it.
        Returns the skip records: [{reason, key, shard, message}]."""
        views, entries, skipped = [], [], []
        for members in members_list:
            params, sample_views, skip = self._views(members, shard)
            if skip is not None:
                log.warning("%s: source sample %s skipped (%s)", shard, skip["key"], skip["message"])
                skipped.append(skip)
            else:
                views.extend(sample_views)
            entries.append((members.get("__key__"), params, skip))
        feats = None
        if views:
            batch = Batch.from_collated(collate(views)).to(self.predictor.device)
            inputs = model_inputs(batch, rgb=needs_rgb(self.teacher_cfg.model), depth=needs_depth(self.teacher_cfg.model))
            with torch.no_grad():
                feats = tap_features(self.predictor.model, self.teacher_cfg.model, inputs.rgb, inputs.depth, self.cfg.tap)
        done, k = 0, self.cfg.views
        for key, params, skip in entries:
            if skip is not None:
                target.write({"__key__": key, "views.json": json_bytes(
                    {"seed": self.cfg.seed, "views": [], "skipped": f"{skip['reason']}: {skip['message']}"})})
                continue
            target.write({"__key__": key, "feat.npy": encode_features(feats[done * k:(done + 1) * k], self.cfg.dtype),
                          "views.json": json_bytes({"seed": self.cfg.seed, "views": [p.to_dict() for p in params]})})
            done += 1
        return skipped

    def write_manifest_if_complete(self) -> Manifest | None:
        """The manifest, once every source shard has its finished feature shard."""
        out = Path(self.cfg.out)
        digest = str(zlib.crc32(json_bytes(self.params)))
        records = [finished_shard(out, s.name, digest) for s in self.source.shards]
        if any(r is None for r in records):
            return None
        shards = [ShardInfo(**r["shard"]) for r in records]
        bad = [s for r in records for s in r.get("skipped", [])]
        skipped = {"count": len(bad), "by_reason": dict(Counter(s["reason"] for s in bad)),
                   "examples": bad[:20]}
        manifest = Manifest(shards=shards, total_count=sum(s.count for s in shards),
                            skeleton=self.source.skeleton, params=self.params, skipped=skipped)
        write_manifest(out, manifest)
        return manifest


def precompute(cfg: PrecomputeConfig, *, rank: int = 0, world_size: int = 1, device: str | None = None,
               config: str | None = None) -> Manifest | None:
    """Compute this rank's shards (source shard i goes to rank i mod world_size)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    writer = FeatureWriter(cfg, Predictor.from_checkpoint(cfg.teacher, config, device))
    mine = [i for i in range(len(writer.source.shards)) if i % world_size == rank]
    writer.run(mine)
    manifest = writer.write_manifest_if_complete()
    if manifest is not None:
        log.info("%s: all %d shards present, manifest written", cfg.out, len(manifest.shards))
    return manifest


def estimate(cfg: PrecomputeConfig, config: str | None = None) -> str:
    """Bytes per sample and for the whole split, before anything is written."""
    writer = FeatureWriter(cfg, Predictor.from_checkpoint(cfg.teacher, config, "cpu"))
    c, h, w = writer.feature_shape()
    per_sample = writer.bytes_per_sample()
    total = per_sample * writer.source.total_count
    return (f"tap {cfg.tap}: {c}×{h}×{w} per view, {cfg.views} view(s), {cfg.dtype} → "
            f"{per_sample / 1024:.1f} KiB per sample; {writer.source.total_count} samples → "
            f"{total / 2**30:.2f} GiB in {cfg.out}")
