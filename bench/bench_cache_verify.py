"""What re-verifying a cached shard costs: its sha256 against one training pass over it.

A shard of ``--samples`` textured samples (``--rgb``² RGB JPEG at depthpi's quality,
(``--rgb``/2)² uint16 depth PNG, 17 joints: about a real crop's bytes) is written once.
Timed, each the median of ``--repeats``: (a) sha256 of the file (warm page cache, as a
cached shard is on its second use), (b) one pass of a loader in this process over the
same shard with the training map at ``--size`` (read, decode, pose pipeline, collate).
The ratio a/b is what hashing each cached shard before every use adds to the worker's
work per epoch.

    python bench/bench_cache_verify.py [--samples 250] [--rgb 400] [--size 257] [--record]
"""
from __future__ import annotations

import argparse
import os
import statistics
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
from depthpi.io import file_sha256  # noqa: E402


def textured_sample(index: int, side: int) -> Sample:
    """A ``side``² RGB crop with texture (blobs + pixel noise, as a real photo compresses) and
    a (side/2)² depth map around 3 m with sensor-like noise."""
    rng = np.random.default_rng(index)
    blobs = cv2.resize(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), (side, side), interpolation=cv2.INTER_CUBIC)
    rgb = np.clip(blobs + rng.normal(0, 12, blobs.shape), 0, 255).astype(np.uint8)
    half = side // 2
    depth = (3000 + cv2.resize(rng.normal(0, 300, (8, 8)), (half, half)) + rng.normal(0, 8, (half, half)))
    K = np.array([[1.2 * side, 0, (side - 1) / 2], [0, 1.2 * side, (side - 1) / 2], [0, 0, 1]])
    meta = SampleMeta(dataset="synthetic", subject="S1", camera="C1", action="a", frame=index, labeled=True,
                      rgb_K=K, depth_K=K / [[2], [2], [1]], R=np.eye(3), t=np.zeros(3),
                      joints=rng.uniform(-600, 600, (17, 3)) + [0, 0, 3000], joint_valid=np.ones(17, bool),
                      bbox=np.array([0.15, 0.08, 0.7, 0.85]) * side)
    return Sample(key=f"b{index:07d}", rgb=rgb, depth=depth.astype(np.uint16), meta=meta)


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=250, help="samples in the shard (depthpi's default per shard)")
    parser.add_argument("--rgb", type=int, default=400, help="side of the stored RGB crop, px")
    parser.add_argument("--size", type=int, default=257, help="network input N")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--record", action="store_true", help="append the table to docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = build_shards(tmp, args.samples, args.samples, partial(textured_sample, side=args.rgb),
                                progress=False)
        shard = Path(tmp) / manifest.shards[0].name
        size = shard.stat().st_size
        hashing = median_seconds(lambda: file_sha256(shard), args.repeats)
        loader = make_loader(tmp, 1, map_fn(PipelineConfig(input_size=args.size, depth=True), 0, True), rank=0,
                             world_size=1, num_workers=0, shuffle_buffer=16, drop_last=False)
        reading = median_seconds(lambda: sum(1 for _ in loader), args.repeats)
    rows = [f"| {args.samples} | {size / args.samples / 1024:.0f} KiB | {size / 2**20:.1f} MiB | "
            f"{hashing * 1000:.0f} ms ({size / hashing / 2**20:.0f} MiB/s) | {reading * 1000:.0f} ms "
            f"({args.samples / reading:.0f} samples/s) | {100 * hashing / reading:.1f} % |"]
    table = "\n".join(["| samples | bytes per sample | shard | sha256 of the shard | one training pass "
                       f"({args.size}×{args.size} RGB+depth, 1 thread) | sha256 / pass |",
                       "|---|---|---|---|---|---|", *rows])
    print(table)
    if args.record:
        record("Re-verifying a cached shard: sha256 against one training pass", table,
               f"python bench/bench_cache_verify.py --samples {args.samples} --rgb {args.rgb} --size {args.size}")


if __name__ == "__main__":
    main()
