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
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from depthpi.data.augment import AugmentConfig, ViewParams, draw_view, view_rng
from depthpi.data.batches import Batch, model_inputs
from depthpi.data.features import encode_features
from depthpi.data.loader import collate
from depthpi.data.pipeline import process_sample
from depthpi.data.schema import SampleError, decode_sample
from depthpi.data.shard_build import ShardJob, build, finished_record, manifest_of
from depthpi.data.shard_stream import (DECODE_ERRORS, MAX_RECORDS, ReadLog, ShardSource, TarSamples,
                                       shortfall_message)
from depthpi.data.shards import (Manifest, ShardInfo, SplitLocation, TarShard, file_sha256, json_bytes,
                                 manifest_sha256, read_manifest, write_manifest)
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
        self.location, self.source = SplitLocation.parse(cfg.shards), read_manifest(cfg.shards)
        self.params = {
            "kind": "teacher_features", "teacher": str(cfg.teacher), "teacher_sha256": file_sha256(cfg.teacher),
            "tap": cfg.tap, "relu": "pre" if cfg.tap.endswith("pre_relu") else "post", "dtype": cfg.dtype,
            "views": cfg.views, "seed": cfg.seed, "input_size": base.input_size,
            "augment": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(base.augment).items()},
            "source": str(cfg.shards), "source_manifest_sha256": manifest_sha256(cfg.shards),
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

    def _job(self, shard: ShardInfo) -> ShardJob:
        """Feature shard of one source shard: its bytes depend on the run's params and that shard."""
        return ShardJob(Path(self.cfg.out) / shard.name, {"precompute": self.params, "source_shard": asdict(shard)},
                        work=shard)

    def run(self, shard_ids: list[int]) -> list[ShardInfo]:
        """Write the given source shards (finished ones are kept); returns their infos."""
        jobs = [self._job(self.source.shards[index]) for index in shard_ids]
        records = build(jobs, self._fill, desc=f"precompute {self.cfg.tap}", keep_empty=True)
        return [ShardInfo(**record["shard"]) for record in records]

    def _fill(self, job: ShardJob, target: TarShard) -> dict:
        """Features of every sample of one source shard, in source order. A tar error or a short
        source shard is skipped, counted and reported like a bad sample (never a traceback):
        the feature shard then mirrors what could be read."""
        shard = job.work
        reads = ReadLog(f"precompute {shard.name}")
        source = ShardSource(self.location.url(shard.name), shard, self.location.remote)
        pending = []
        for members in TarSamples({source.url: source}, reads)([{"url": source.url}]):
            pending.append(members)
            if len(pending) * self.cfg.views >= self.cfg.batch_size:
                self._write_batch(pending, target, shard.name, reads)
                pending = []
        if pending:
            self._write_batch(pending, target, shard.name, reads)
        report = reads.report
        return {"by_reason": dict(report.skipped), "examples": reads.records, "shortfalls": report.shortfalls}

    def _views(self, members: dict, shard: str, reads: ReadLog) -> tuple[list | None, list | None, str | None]:
        """(view params, processed views, None) of one source sample, or (None, None, why) when
        it is bad, judged as the loader judges: any decode failure, a SampleError in the map."""
        key = members.get("__key__")
        try:
            sample = decode_sample(members)
        except DECODE_ERRORS as err:
            reason = f"decode:{err.field if isinstance(err, SampleError) else type(err).__name__}"
            reads.skip(reason, key, shard, str(err))
            return None, None, f"{reason}: {err}"
        params = view_params(sample.key, self.cfg.views, self.cfg.seed, self.pipeline.augment)
        try:
            return params, [process_sample(sample, self.pipeline, view=p, view_index=v)
                            for v, p in enumerate(params)], None
        except SampleError as err:
            reads.skip(f"map:{err.field}", key, shard, str(err))
            return None, None, f"map:{err.field}: {err}"

    def _write_batch(self, members_list: list[dict], target: TarShard, shard: str, reads: ReadLog) -> None:
        """Features of every sample, in source order. A bad source sample gets a member without
        features, so the shards still mirror the source key for key and the student skips it."""
        views, entries = [], []
        for members in members_list:
            params, sample_views, why = self._views(members, shard, reads)
            views.extend(sample_views or [])
            entries.append((members.get("__key__"), params, why))
        feats = None
        if views:
            batch = Batch.from_collated(collate(views)).to(self.predictor.device)
            inputs = model_inputs(batch, rgb=needs_rgb(self.teacher_cfg.model), depth=needs_depth(self.teacher_cfg.model))
            with torch.no_grad():
                feats = tap_features(self.predictor.model, self.teacher_cfg.model, inputs.rgb, inputs.depth, self.cfg.tap)
        done, k = 0, self.cfg.views
        for key, params, why in entries:
            if why is not None:
                target.write({"__key__": key, "views.json": json_bytes(
                    {"seed": self.cfg.seed, "views": [], "skipped": why})})
                continue
            target.write({"__key__": key, "feat.npy": encode_features(feats[done * k:(done + 1) * k], self.cfg.dtype),
                          "views.json": json_bytes({"seed": self.cfg.seed, "views": [p.to_dict() for p in params]})})
            done += 1

    def write_manifest_if_complete(self) -> Manifest | None:
        """The manifest, once every source shard has its finished feature shard."""
        records = [finished_record(self._job(shard)) for shard in self.source.shards]
        if any(record is None for record in records):
            return None
        reports = [record["report"] for record in records]
        by_reason = sum((Counter(r["by_reason"]) for r in reports), Counter())
        skipped = {"count": sum(by_reason.values()), "by_reason": dict(by_reason),
                   "examples": [e for r in reports for e in r["examples"]][:MAX_RECORDS],
                   "shortfalls": [s for r in reports for s in r["shortfalls"]]}
        manifest = manifest_of(records, self.params, self.source.skeleton, skipped)
        write_manifest(Path(self.cfg.out), manifest)
        if skipped["shortfalls"]:
            log.warning("%s: source shards read short at precompute: %s", self.cfg.out,
                        "; ".join(shortfall_message(s) for s in skipped["shortfalls"]))
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
