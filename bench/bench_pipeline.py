"""Pose-pipeline throughput per core, by stage, against the bare chain (issue 3, issue 10).

The bare chain is what no pipeline can avoid: decode RGB and depth, two warps. The goal
is a full pipeline at ≥ 60 % of the bare chain's rate and ≥ 400 samples/s per core at
257×257 with RGB and depth.

    python bench/bench_pipeline.py --size 257 --samples 300 [--record]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from benchlib import record  # noqa: E402
from depthpi.camera import Camera, reproject_image  # noqa: E402
from depthpi.data.augment import AugmentConfig, colour_augment, draw_view, view_rng  # noqa: E402
from depthpi.data.depth import depth_to_input  # noqa: E402
from depthpi.data.pipeline import PipelineConfig, _pose_targets, crop_camera, keypoint_attention, process_sample  # noqa: E402
from depthpi.data.schema import decode_sample, encode_sample  # noqa: E402
from depthpi.data.synthetic import SyntheticConfig, render_sample  # noqa: E402


def _rate(fn, items) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=257)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    cv2.setNumThreads(1)

    members = [encode_sample(render_sample("train", i, SyntheticConfig())) for i in range(args.samples)]
    decoded = [decode_sample(m) for m in members]
    cfg = PipelineConfig(input_size=args.size, depth=True, attention=True)
    size = (args.size, args.size)
    views = [draw_view(view_rng(0, 0, s.key, 0), AugmentConfig()) for s in decoded]
    cams = [crop_camera(Camera(s.meta.rgb_K, s.meta.R, s.meta.t), s.meta.bbox, v, args.size)
            for s, v in zip(decoded, views)]
    jobs = list(zip(decoded, views, cams))

    def bare(m):
        s = decode_sample(m)
        reproject_image(s.rgb, Camera(s.meta.rgb_K, s.meta.R, s.meta.t), cams[0], size)
        reproject_image(s.depth, Camera(s.meta.depth_K, s.meta.R, s.meta.t), cams[0], size, "nearest")

    warped = [reproject_image(s.rgb, Camera(s.meta.rgb_K, s.meta.R, s.meta.t), c, size) for s, _, c in jobs]
    rows = {
        "decode (jpg + png + json)": _rate(decode_sample, members),
        "warp rgb + depth": _rate(lambda j: (
            reproject_image(j[0].rgb, Camera(j[0].meta.rgb_K, j[0].meta.R, j[0].meta.t), j[2], size),
            reproject_image(j[0].depth, Camera(j[0].meta.depth_K, j[0].meta.R, j[0].meta.t), j[2], size, "nearest")), jobs),
        "colour": _rate(lambda iv: colour_augment(iv[0], iv[1]), list(zip(warped, views))),
        "depth map (eq. 5.3)": _rate(lambda j: depth_to_input(j[0].depth), jobs),
        "targets + attention": _rate(lambda j: keypoint_attention(
            _pose_targets(j[0], j[2], j[1].flip, args.size)["joints2d"], np.ones(17, bool), args.size, 17), jobs),
        "bare chain (decode + 2 warps)": _rate(bare, members),
        "full pipeline (decode + process_sample)": _rate(
            lambda m: process_sample(decode_sample(m), cfg, seed=0), members),
    }
    ratio = rows["full pipeline (decode + process_sample)"] / rows["bare chain (decode + 2 warps)"]
    lines = [f"| {name} | {rate:,.0f} |" for name, rate in rows.items()]
    lines.append(f"| full / bare | {ratio:.0%} |")
    table = "\n".join(["| stage (1 core, %d×%d, RGB+depth) | samples/s |" % size, "|---|---|", *lines])
    print(table)
    if args.record:
        record("Pose pipeline per core", table, " ".join(["python bench/bench_pipeline.py", f"--size {args.size}",
                                                          f"--samples {args.samples}"]))


if __name__ == "__main__":
    main()
