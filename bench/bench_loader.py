"""Loader throughput end to end: shards → tar → shuffle → decode → map → collate, per worker count.

Synthetic-like samples (256×256 RGB JPEG, 128×128 uint16 depth PNG, 17 joints). Two
map functions: ``decode only`` (no pose pipeline: the data path's ceiling) and the
``training map`` a run uses (``depthpi.data.batches.map_fn``: pose pipeline with augmentation,
RGB+depth at --size, colour placed by --colour-on). Each row times the second epoch of a
persistent-worker loader (worker start excluded).

    python bench/bench_loader.py --samples 4000 --workers 0 1 2 4 8 [--size 257] [--record]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import record  # noqa: E402
from depthpi.data.batches import map_fn  # noqa: E402
from depthpi.data.loader import make_loader  # noqa: E402
from depthpi.data.pipeline import PipelineConfig  # noqa: E402
from depthpi.data.schema import Sample, SampleMeta  # noqa: E402
from depthpi.data.shard_build import build_shards  # noqa: E402


def fake_sample(index: int) -> Sample:
    """A 256×256 RGB crop of smooth colour blobs and a 128×128 depth map around 3 m."""
    rng = np.random.default_rng(index)
    rgb = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (256, 256), interpolation=cv2.INTER_CUBIC)
    depth = (3000 + cv2.resize(rng.normal(0, 300, (8, 8)), (128, 128))).astype(np.uint16)
    K = np.array([[300.0, 0, 127.5], [0, 300.0, 127.5], [0, 0, 1]])
    meta = SampleMeta(dataset="synthetic", subject="S1", camera="C1", action="a", frame=index, labeled=True,
                      rgb_K=K, depth_K=K / [[2], [2], [1]], R=np.eye(3), t=np.zeros(3),
                      joints=rng.uniform(-600, 600, (17, 3)) + [0, 0, 3000], joint_valid=np.ones(17, bool),
                      bbox=np.array([40.0, 20.0, 176.0, 216.0]))
    return Sample(key=f"b{index:07d}", rgb=rgb, depth=depth, meta=meta)


def decode_only(sample: Sample, epoch: int) -> dict:
    return {"key": sample.key, "rgb": sample.rgb, "depth": sample.depth, "joints": sample.meta.joints}


def measure(split: Path, batch_size: int, workers: int, fn) -> tuple[float, int]:
    """(samples/s of the second epoch, batches per epoch)."""
    loader = make_loader(split, batch_size, fn, rank=0, world_size=1, num_workers=workers, seed=0,
                         shuffle_buffer=256)
    for epoch in range(2):
        loader.set_epoch(epoch)
        start, samples = time.perf_counter(), 0
        for batch in loader:
            samples += len(batch["key"])
        elapsed = time.perf_counter() - start
    return samples / elapsed, len(loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--per-shard", type=int, default=125)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4, 8])
    parser.add_argument("--size", type=int, default=257, help="input size N of the training map")
    parser.add_argument("--dir", help="reuse/build shards here (default: a temp dir)")
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        split = Path(args.dir or tmp) / "bench"
        manifest = build_shards(split, args.samples, args.per_shard, partial(fake_sample),
                                workers=min(8, os.cpu_count() or 1), desc="bench shards")
        size_mb = sum(s.bytes for s in manifest.shards) / 1e6
        training = map_fn(PipelineConfig(input_size=args.size, depth=True), 0, True)
        rows = [f"| workers | decode only, samples/s | training map ({args.size}×{args.size} RGB+depth), "
                f"samples/s | training map per worker | batches/epoch |", "|---|---|---|---|---|"]
        for workers in args.workers:
            ceiling, batches = measure(split, args.batch, workers, decode_only)
            rate, _ = measure(split, args.batch, workers, training)
            rows.append(f"| {workers} | {ceiling:,.0f} | {rate:,.0f} | {rate / max(workers, 1):,.0f} | {batches} |")
            print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(f"\n{args.samples} samples, {len(manifest.shards)} shards, {size_mb:.0f} MB, batch {args.batch}\n{table}")
    if args.record:
        record("Loader throughput end to end", table, " ".join(["python bench/bench_loader.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
