"""Teacher features computed once into K sets of shards that each mirror the source split.

For every key of every source shard, K views: view 0 un-augmented, views 1..K−1 drawn
from (seed, key, view). Each view's parameters are stored with the teacher's tap, so a
student replays the exact view the teacher saw (colour through ``depthpi.data.colour``, as
in the student's training step). Set j holds view (j + crc32(key)) mod K of every sample
(:mod:`depthpi.data.features`). One job per source shard writes its K shards; the part that
finishes last writes the manifests.

docs/shards.md ("Stored teacher features") gives the layout and what the manifests hold.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from depthpi.data.augment import AugmentConfig, ViewParams, draw_view, view_rng
from depthpi.data.batches import Batch, model_inputs
from depthpi.data.features import LAYOUT, FeatureDtype, encode_features, set_name, view_in_set
from depthpi.data.loader import collate
from depthpi.data.pipeline import process_sample
from depthpi.data.schema import SampleError, decode_sample
from depthpi.data.shard_build import ShardJob, build, finished_record
from depthpi.data.shard_stream import (DECODE_ERRORS, MAX_RECORDS, ReadLog, ShardSource, TarSamples,
                                       shortfall_message)
from depthpi.data.shards import (Manifest, ShardInfo, SplitLocation, TarShard, json_bytes,
                                 manifest_sha256, read_manifest, write_manifest)
from depthpi.io import file_sha256
from depthpi.models.posenet import ModelKind, needs_depth, needs_rgb, tap_features
from depthpi.models.taps import canonical_tap
from depthpi.predict import Predictor
from depthpi.validation import check

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrecomputeConfig:
    """What to compute. ``tap`` by either of its names (recorded by its canonical one,
    ``layer3.5.post_relu``); ``views`` K ≥ 1; ``seed`` of views."""

    teacher: str
    shards: str
    out: str
    tap: str = "layer3.5.post_relu"
    views: int = 4
    dtype: FeatureDtype = FeatureDtype.fp16
    seed: int = 0
    batch_size: int = 32

    def __post_init__(self):
        check(self.dtype in list(FeatureDtype), "dtype", f"one of {', '.join(FeatureDtype)}", self.dtype)
        check(self.views >= 1, "views", "an integer >= 1", self.views)


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
        model = self.teacher_cfg.model
        self.tap = canonical_tap(cfg.tap, model.arch, teacher=model.kind == ModelKind.teacher)
        self.location, self.source = SplitLocation.parse(cfg.shards), read_manifest(cfg.shards)
        self.params = {
            "kind": "teacher_features", "layout": LAYOUT,
            "teacher": str(cfg.teacher), "teacher_sha256": file_sha256(cfg.teacher),
            "tap": self.tap, "relu": "pre" if self.tap.endswith("pre_relu") else "post", "dtype": cfg.dtype,
            "views": cfg.views, "seed": cfg.seed, "input_size": base.input_size,
            "augment": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(base.augment).items()},
            "source": str(cfg.shards), "source_manifest_sha256": manifest_sha256(cfg.shards),
        }

    def feature_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the tap at this input size, from one forward pass of zeros."""
        n, device = self.pipeline.input_size, self.predictor.device
        with torch.no_grad():
            feat = tap_features(self.predictor.model, self.teacher_cfg.model, torch.zeros(1, 3, n, n, device=device),
                                torch.zeros(1, 1, n, n, device=device), self.tap)
        return tuple(feat.shape[1:])

    def view_bytes(self) -> int:
        """Stored bytes of one view: its map, the .npy header and ~128 B of view parameters."""
        c, h, w = self.feature_shape()
        return c * h * w * (2 if self.cfg.dtype == FeatureDtype.fp16 else 1) + 256

    def _job(self, shard: ShardInfo) -> ShardJob:
        """The K feature shards of one source shard, one per set: their bytes depend on the
        run's params and that shard."""
        paths = [Path(self.cfg.out) / set_name(j) / shard.name for j in range(self.cfg.views)]
        return ShardJob(paths[0], {"precompute": self.params, "source_shard": asdict(shard)}, work=shard,
                        siblings=tuple(paths[1:]))

    def run(self, shard_ids: list[int]) -> list[ShardInfo]:
        """Write the given source shards (finished ones are kept); returns their infos."""
        jobs = [self._job(self.source.shards[index]) for index in shard_ids]
        records = build(jobs, self._fill, desc=f"precompute {self.tap}", keep_empty=True)
        return [ShardInfo(**record["shard"]) for record in records]

    def _fill(self, job: ShardJob, *targets: TarShard) -> dict:
        """Features of every sample of one source shard, in source order, into one shard per
        set. A tar error or a short source shard is skipped, counted and reported like a bad
        sample (never a traceback): the feature shards then mirror what could be read."""
        shard = job.work
        reads = ReadLog(f"precompute {shard.name}")
        source = ShardSource(self.location.url(shard.name), shard, self.location.remote)
        pending = []
        for members in TarSamples({source.url: source}, reads)([{"url": source.url}]):
            pending.append(members)
            if len(pending) * self.cfg.views >= self.cfg.batch_size:
                self._write_batch(pending, targets, shard.name, reads)
                pending = []
        if pending:
            self._write_batch(pending, targets, shard.name, reads)
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

    def _write_batch(self, members_list: list[dict], targets: tuple[TarShard, ...], shard: str,
                     reads: ReadLog) -> None:
        """Features of every sample, in source order, one view into each set's shard. A bad
        source sample gets a member without features in every set, so the shards still mirror
        the source key for key and the student skips it."""
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
                feats = tap_features(self.predictor.model, self.teacher_cfg.model, inputs.rgb, inputs.depth, self.tap)
        done, k = 0, self.cfg.views
        for key, params, why in entries:
            for j, target in enumerate(targets):
                if why is not None:
                    target.write({"__key__": key, "view.json": json_bytes(
                        {"seed": self.cfg.seed, "index": None, "skipped": why})})
                    continue
                v = view_in_set(key, j, k)
                target.write({"__key__": key, "feat.npy": encode_features(feats[done * k + v], self.cfg.dtype),
                              "view.json": json_bytes({"seed": self.cfg.seed, "index": v,
                                                       "view": params[v].to_dict()})})
            if why is None:
                done += 1

    def write_manifest_if_complete(self) -> Manifest | None:
        """The sets' manifests and the split's, once every source shard has its finished
        feature shards; returns the split's (no shards: see the module docstring)."""
        records = [finished_record(self._job(shard)) for shard in self.source.shards]
        if any(record is None for record in records):
            return None
        reports = [record["report"] for record in records]
        by_reason = sum((Counter(r["by_reason"]) for r in reports), Counter())
        skipped = {"count": sum(by_reason.values()), "by_reason": dict(by_reason),
                   "examples": [e for r in reports for e in r["examples"]][:MAX_RECORDS],
                   "shortfalls": [s for r in reports for s in r["shortfalls"]]}
        out, digests = Path(self.cfg.out), []
        for j in range(self.cfg.views):
            shards = [record["shard"] if j == 0 else record["siblings"][j - 1] for record in records]
            infos = [ShardInfo(**info) for info in shards]
            manifest = Manifest(shards=infos, total_count=sum(i.count for i in infos), skeleton=self.source.skeleton,
                                params={**self.params, "set": j}, skipped=skipped)
            write_manifest(out / set_name(j), manifest)
            digests.append(manifest_sha256(out / set_name(j)))
        manifest = Manifest(shards=[], total_count=0, skeleton=self.source.skeleton,
                            params={**self.params, "set_manifests": digests}, skipped=skipped)
        write_manifest(out, manifest)
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
    view = writer.view_bytes()
    total = view * cfg.views * writer.source.total_count
    return (f"tap {writer.tap}: {c}×{h}×{w} per view, {cfg.views} view(s), {cfg.dtype} → "
            f"{view * cfg.views / 1024:.1f} KiB stored per sample, {view / 1024:.1f} KiB read per sample and epoch; "
            f"{writer.source.total_count} samples → {total / 2**30:.2f} GiB in {cfg.out}")
