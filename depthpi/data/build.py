"""``depthpi shards build/inspect``: the synthetic set into shards, and a look at any split."""
from __future__ import annotations

from collections import Counter
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import webdataset as wds

from depthpi.data.pipeline import PipelineConfig, process_sample
from depthpi.data.schema import SampleError, decode_sample
from depthpi.data.shards import build_shards, read_manifest
from depthpi.data.synthetic import SyntheticConfig, render_sample
from depthpi.draw import GT_COLOUR, draw_skeleton
from depthpi.io import atomic_path
from depthpi.skeleton import get_skeleton

SPLITS = ("train", "test", "unlabeled")


def _render(index: int, split: str, seed: int):
    return render_sample(split, index, SyntheticConfig(seed=seed))


def build_synthetic(out: Path, counts: dict[str, int], samples_per_shard: int = 250, workers: int = 2,
                    seed: int = 0) -> dict:
    """Render each split of the synthetic set into ``out/<split>``; resumable, deterministic."""
    manifests = {}
    for split in SPLITS:
        if not counts.get(split):
            continue
        params = {"source": "synthetic", "split": split, "seed": seed, "count": counts[split],
                  "synthetic_config": {k: str(v) for k, v in vars(SyntheticConfig(seed=seed)).items()}}
        manifests[split] = build_shards(out / split, counts[split], samples_per_shard,
                                        partial(_render, split=split, seed=seed), workers=workers,
                                        params=params, desc=f"synthetic/{split}")
        print(f"[depthpi] {out / split}: {manifests[split].total_count} samples in "
              f"{len(manifests[split].shards)} shards")
    return manifests


def iter_split(split_dir: str | Path):
    """Decoded samples of a split in stored order (no shuffling, no splitting)."""
    split_dir = Path(split_dir)
    manifest = read_manifest(split_dir)
    urls = [str(split_dir / shard.name) for shard in manifest.shards]
    for members in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()):
        yield decode_sample(members)


def inspect_split(split_dir: Path, out_png: Path, count: int = 16, input_size: int = 257) -> str:
    """Write a contact sheet (crop with projected skeleton | depth) and return a summary."""
    manifest = read_manifest(split_dir)
    cfg = PipelineConfig(input_size=input_size, depth=True)
    tiles, subjects, cameras, labeled = [], Counter(), Counter(), 0
    for index, sample in enumerate(iter_split(split_dir)):
        subjects[sample.meta.subject] += 1
        cameras[sample.meta.camera] += 1
        labeled += sample.meta.labeled
        if len(tiles) < count:
            tiles.append(_tile(sample, cfg))
    _write_sheet(tiles, out_png)
    return (f"{split_dir}: {manifest.total_count} samples in {len(manifest.shards)} shards, "
            f"{labeled} labelled, {len(subjects)} subjects, {len(cameras)} cameras, "
            f"skeleton {manifest.skeleton}; contact sheet: {out_png}")


def _tile(sample, cfg: PipelineConfig) -> np.ndarray:
    has_depth = sample.depth is not None
    try:
        view = process_sample(sample, PipelineConfig(cfg.input_size, cfg.augment, depth=has_depth), train=False)
    except SampleError as err:
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
        raise ValueError(f"{out_png}: nothing to draw (empty split)")
    blank = np.zeros_like(tiles[0])
    tiles = tiles + [blank] * (-len(tiles) % columns)
    rows = [np.concatenate(tiles[i:i + columns], axis=1) for i in range(0, len(tiles), columns)]
    sheet = np.concatenate(rows, axis=0)
    with atomic_path(out_png) as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
