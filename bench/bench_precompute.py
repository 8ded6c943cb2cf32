"""Precompute throughput: source samples/s through the frozen teacher into feature shards.

Builds a small synthetic split and a randomly initialised teacher "run" in a temporary
directory (weights do not change the cost), then times ``depthpi precompute``'s writer:
decode → K views through the pose pipeline → teacher forward → encode → tar.

    python bench/bench_precompute.py --samples 64 --views 4 --size 129 --width 0.125 [--record]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import record  # noqa: E402
from depthpi.config import DataConfig, TrainConfig, save_config  # noqa: E402
from depthpi.data.build import build_synthetic  # noqa: E402
from depthpi.data.pipeline import PipelineConfig  # noqa: E402
from depthpi.models.posenet import ModelConfig, build_model  # noqa: E402
from depthpi.precompute import FeatureWriter, PrecomputeConfig  # noqa: E402
from depthpi.predict import Predictor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--size", type=int, default=129)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "uint8"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_synthetic(root / "synth", {"train": args.samples}, samples_per_shard=16, workers=1)
        model_cfg = ModelConfig(kind="teacher", width=args.width, init="none")
        cfg = TrainConfig(stage="teacher", model=model_cfg, data=DataConfig(pipeline=PipelineConfig(input_size=args.size)))
        save_config(cfg, root / "teacher" / "config.yaml")
        (root / "teacher" / "export").mkdir(parents=True)
        torch.save(build_model(model_cfg).state_dict(), root / "teacher" / "export" / "best.pt")
        pre = PrecomputeConfig(teacher=str(root / "teacher/export/best.pt"), shards=str(root / "synth/train"),
                               out=str(root / "feat"), views=args.views, dtype=args.dtype, batch_size=args.batch)
        writer = FeatureWriter(pre, Predictor.from_checkpoint(pre.teacher, device=device))
        per_sample = writer.bytes_per_sample()
        start = time.perf_counter()
        writer.run(list(range(len(writer.source.shards))))
        seconds = time.perf_counter() - start
    rate = args.samples / seconds
    table = "\n".join([
        f"| precompute ({device}, teacher width {args.width}, {args.size}×{args.size}, K={args.views}, {args.dtype}) | value |",
        "|---|---:|",
        f"| source samples/s | {rate:.1f} |",
        f"| teacher views/s | {rate * args.views:.1f} |",
        f"| bytes per sample (K maps) | {per_sample / 1024:.1f} KiB |",
        f"| feature shards per 100k samples | {per_sample * 1e5 / 2**30:.2f} GiB |"])
    print(table)
    if args.record:
        record("Precompute throughput", table, "python bench/bench_precompute.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
