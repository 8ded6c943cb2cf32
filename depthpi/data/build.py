"""``depthpi shards build/inspect``: the synthetic set into shards, and a look at any split."""
from __future__ import annotations

import logging
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import webdataset as wds

from depthpi.data.pipeline import PipelineConfig, process_sample
from depthpi.data.schema import Sample, SampleError
from depthpi.data.shard_build import build_shards
from depthpi.data.shard_stream import ReadLog, TarSamples, decode_samples, shard_list, shortfall_message, split_sources
from depthpi.data.shards import Manifest, SplitLocation, read_manifest
from depthpi.data.synthetic import SyntheticConfig, render_sample
from depthpi.draw import GT_COLOUR, draw_skeleton
from depthpi.io import atomic_path
from depthpi.skeleton import get_skeleton

SPLITS = ("train", "test", "unlabeled")
log = logging.getLogger(__name__)


def _render(index: int, split: str, seed: int):
    return render_sample(split, index, SyntheticConfig(seed=seed))


def build_synthetic(out: Path, counts: dict[str, int], samples_per_shard: int = 250, workers: int = 2,
                    seed: int = 0, progress: bool = True) -> dict[str, Manifest]:
    """Render each split of the synthetic set into ``out/<split>``; resumable, deterministic."""
    manifests = {}
    for split in SPLITS:
        if not counts.get(split):
            continue
        params = {"source": "synthetic", "split": split, "seed": seed, "count": counts[split],
                  "synthetic_config": {k: str(v) for k, v in vars(SyntheticConfig(seed=seed)).items()}}
        manifests[split] = build_shards(Path(out) / split, counts[split], samples_per_shard,
                                        partial(_render, split=split, seed=seed), workers=workers,
                                        params=params, desc=f"synthetic/{split}", progress=progress)
        log.info("%s: %d samples in %d shards", Path(out) / split, manifests[split].total_count,
                 len(manifests[split].shards))
    return manifests


def iter_split(split: str | Path, reads: ReadLog | None = None, cache_dir: str | Path | None = None
               ) -> Iterator[Sample]:
    """Decoded samples of a split (directory or URL) in stored order, no shuffling or splitting.

    Bad samples and short shards are skipped and recorded in ``reads`` (warnings are
    logged either way), as the loader records them.
    """
    location = SplitLocation.parse(split)
    reads = reads or ReadLog(str(location))
    sources = split_sources(location, read_manifest(split))
    pipeline = wds.DataPipeline(shard_list([s.url for s in sources]),
                                TarSamples({s.url: s for s in sources}, reads, cache_dir),
                                partial(decode_samples, log=reads))
    for _shard, sample in pipeline:
        yield sample


def inspect_split(split: str | Path, out_png: Path, count: int = 16, input_size: int = 257) -> str:
    """Write a contact sheet (crop with projected skeleton | depth) and return a summary,
    with every bad sample (key, shard, reason) and short shard met on the way."""
    manifest, reads = read_manifest(split), ReadLog(f"inspect {split}")
    cfg = PipelineConfig(input_size=input_size, depth=True)
    tiles, subjects, cameras, labeled, decoded = [], Counter(), Counter(), 0, 0
    for sample in iter_split(split, reads):
        decoded += 1
        subjects[sample.meta.subject] += 1
        cameras[sample.meta.camera] += 1
        labeled += sample.meta.labeled
        if len(tiles) < count:
            tiles.append(_tile(sample, cfg, reads))
    _write_sheet(tiles, out_png)
    lines = [f"{split}: {manifest.total_count} samples listed in {len(manifest.shards)} shards, {decoded} decoded, "
             f"{labeled} labelled, {len(subjects)} subjects, {len(cameras)} cameras, skeleton {manifest.skeleton}; "
             f"contact sheet: {out_png}"]
    return "\n".join(lines + _problem_lines(reads))


def _problem_lines(reads: ReadLog) -> list[str]:
    report = reads.report
    lines = []
    if report.skipped:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(report.skipped.items()))
        lines.append(f"skipped {sum(report.skipped.values())} bad samples ({reasons}):")
        lines += [f"  {r['key']} in {r['shard']}: {r['reason']}: {r['message']}" for r in reads.records]
        if sum(report.skipped.values()) > len(reads.records):
            lines.append(f"  ... (the first {len(reads.records)} listed)")
    lines += [shortfall_message(record) for record in report.shortfalls]
    return lines


def _tile(sample: Sample, cfg: PipelineConfig, reads: ReadLog) -> np.ndarray:
    has_depth = sample.depth is not None
    try:
        view = process_sample(sample, PipelineConfig(cfg.input_size, cfg.augment, depth=has_depth), train=False)
    except SampleError as err:
        reads.skip(f"map:{err.field}", sample.key, err.shard, str(err))
        return _error_tile(str(err), cfg.input_size)
    rgb = view["rgb"].copy()
    if view["labeled"]:
        skeleton = get_skeleton(sample.meta.skeleton)
        draw_skeleton(rgb, view["joints2d"], GT_COLOUR, view["valid"], skeleton.edges)
    depth = np.zeros_like(rgb) if not has_depth else cv2.applyColorMap(
        (view["depth"] / max(view["depth"].max(), 1e-6) * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1]
    tile = np.concatenate([rgb, depth], axis=1)
    cv2.putText(tile, f"{sample.meta.subject} {sample.meta.camera}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def _error_tile(message: str, size: int) -> np.ndarray:
    tile = np.zeros((size, 2 * size, 3), np.uint8)
    cv2.putText(tile, message[:60], (4, size // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 80, 80), 1)
    return tile


def _write_sheet(tiles: list[np.ndarray], out_png: Path, columns: int = 4) -> None:
    if not tiles:
        raise ValueError(f"{out_png}: nothing to draw (no readable sample in the split)")
    blank = np.zeros_like(tiles[0])
    tiles = tiles + [blank] * (-len(tiles) % columns)
    rows = [np.concatenate(tiles[i:i + columns], axis=1) for i in range(0, len(tiles), columns)]
    sheet = np.concatenate(rows, axis=0)
    with atomic_path(out_png) as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
