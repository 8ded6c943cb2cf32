"""Pose-pipeline throughput per core, by stage, against the bare chain.

The bare chain is what no pipeline can avoid: decode RGB and depth, and warp both to the
sample's own crop camera (the warps the full pipeline does). The goal is a full pipeline
at ≥ 60 % of the bare chain's rate and ≥ 400 samples/s per core at 257×257 with RGB and
depth. The workers' "full pipeline" is decode + ``process_sample``; colour augmentation and
attention maps run in the training step on the training device, and their cost on this
CPU (as if it were the device) is reported too.

    python bench/bench_pipeline.py --size 257 --samples 300 [--record]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchlib import record  # noqa: E402
from depthpi.camera import Camera, reproject_image  # noqa: E402
from depthpi.data import colour  # noqa: E402
from depthpi.data.augment import AugmentConfig, draw_view, view_rng  # noqa: E402
from depthpi.data.depth import depth_to_input  # noqa: E402
from depthpi.data.pipeline import PipelineConfig, _pose_targets, crop_camera, process_sample  # noqa: E402
from depthpi.data.schema import decode_sample, encode_sample  # noqa: E402
from depthpi.data.shards import TarShard  # noqa: E402
from depthpi.data.synthetic import SyntheticConfig, render_sample  # noqa: E402
from depthpi.train import targets  # noqa: E402


def _rate(fn, items) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


def _read_rate(members: list[dict]) -> float:
    """Samples/s reading the members back from a tar shard on disk (page cache warm)."""
    import webdataset as wds

    with tempfile.TemporaryDirectory() as tmp:
        shard = TarShard(Path(tmp) / "shard-000000.tar")
        for m in members:
            shard.write(m)
        shard.finish()
        urls = [str(shard.path)]
        start = time.perf_counter()
        count = sum(1 for _ in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))
        return count / (time.perf_counter() - start)


def _device_rate(fn, batch_size: int, repeats: int = 5) -> float:
    """Samples/s of a batched torch function on this CPU (one thread), after a warm-up."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return batch_size * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=257)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    cv2.setNumThreads(1)

    torch.set_num_threads(1)

    members = [encode_sample(render_sample("train", i, SyntheticConfig())) for i in range(args.samples)]
    decoded = [decode_sample(m) for m in members]
    cfg = PipelineConfig(input_size=args.size, depth=True)
    size = (args.size, args.size)
    views = [draw_view(view_rng(0, 0, s.key, 0), AugmentConfig()) for s in decoded]
    cams = [crop_camera(Camera(s.meta.rgb_K, s.meta.R, s.meta.t), s.meta.bbox, v, args.size)
            for s, v in zip(decoded, views)]
    jobs = list(zip(decoded, views, cams))

    def warps(sample, cam):
        reproject_image(sample.rgb, Camera(sample.meta.rgb_K, sample.meta.R, sample.meta.t), cam, size)
        reproject_image(sample.depth, Camera(sample.meta.depth_K, sample.meta.R, sample.meta.t), cam, size, "nearest")

    warped = [reproject_image(s.rgb, Camera(s.meta.rgb_K, s.meta.R, s.meta.t), c, size) for s, _, c in jobs]
    batch = 64
    rgb = torch.from_numpy(np.stack([warped[i % len(warped)] for i in range(batch)])).permute(0, 3, 1, 2).float() / 255
    params = torch.from_numpy(np.stack([views[i % len(views)].colour_vector() for i in range(batch)]))
    joints2d = torch.rand(batch, 17, 2) * args.size
    full, bare = "full pipeline (decode + process_sample)", "bare chain (decode + 2 warps)"
    rows = {
        "read (tar members from a shard on disk)": _read_rate(members),
        "decode (jpg + png + json)": _rate(decode_sample, members),
        "warp rgb + depth": _rate(lambda j: warps(j[0], j[2]), jobs),
        "depth map (eq. 5.3)": _rate(lambda j: depth_to_input(j[0].depth), jobs),
        "pose targets": _rate(lambda j: _pose_targets(j[0], j[2], j[1].flip, args.size), jobs),
        bare: _rate(lambda i: warps(decode_sample(members[i]), cams[i]), list(range(len(members)))),
        full: _rate(lambda m: process_sample(decode_sample(m), cfg, seed=0), members),
        "on device (this CPU, batch 64): colour": _device_rate(lambda: colour.colour_augment(rgb, params), batch),
        "on device (this CPU, batch 64): attention maps": _device_rate(
            lambda: targets.keypoint_attention(joints2d, torch.ones(batch, 17, dtype=torch.bool), args.size, 17), batch),
    }
    ratio = rows[full] / rows[bare]
    lines = [f"| {name} | {rate:,.0f} |" for name, rate in rows.items()]
    lines.append(f"| full / bare (goal ≥ 60 %) | {ratio:.0%} |")
    table = "\n".join(["| stage (1 core, %d×%d, RGB+depth) | samples/s |" % size, "|---|---|", *lines])
    print(table)
    if args.record:
        record("Pose pipeline per core", table, " ".join(["python bench/bench_pipeline.py", f"--size {args.size}",
                                                          f"--samples {args.samples}"]))


if __name__ == "__main__":
    main()
