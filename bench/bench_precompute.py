"""Precompute throughput: source samples/s through the frozen teacher into feature shards.

Uses a synthetic split (``--shards``, or one built here) and a randomly initialised teacher
"run" in a temporary directory (weights do not change the cost), then times ``depthpi
precompute``'s writer in this one process: decode → K views through the pose pipeline (on
this process' CPU) → teacher forward (GPU if there is one) → encode → tar. Besides
samples/s it reports the feature bytes written per second, counted from the shard files.

    python bench/bench_precompute.py --samples 64 --views 4 --size 129 --width 0.125 [--record]
    python bench/bench_precompute.py --shards shards/synth/test --views 4 --size 257 --width 1 --batch 128 --json p.json
"""
from __future__ import annotations

import argparse
import json
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
from depthpi.data.shards import read_manifest  # noqa: E402
from depthpi.models.posenet import ModelConfig, build_model  # noqa: E402
from depthpi.precompute import FeatureWriter, PrecomputeConfig  # noqa: E402
from depthpi.predict import Predictor  # noqa: E402


def teacher_run(root: Path, width: float, size: int) -> Path:
    """A teacher "run" directory with random weights; returns its exported weights file."""
    model_cfg = ModelConfig(kind="teacher", width=width, init="none")
    cfg = TrainConfig(stage="teacher", model=model_cfg, data=DataConfig(pipeline=PipelineConfig(input_size=size)))
    save_config(cfg, root / "config.yaml")
    (root / "export").mkdir(parents=True)
    torch.save(build_model(model_cfg).state_dict(), root / "export" / "best.pt")
    return root / "export" / "best.pt"


def measure(shards: Path, root: Path, args, device: str) -> dict:
    weights = teacher_run(root / "teacher", args.width, args.size)
    pre = PrecomputeConfig(teacher=str(weights), shards=str(shards), out=str(root / "feat"), views=args.views,
                           dtype=args.dtype, batch_size=args.batch)
    writer = FeatureWriter(pre, Predictor.from_checkpoint(pre.teacher, device=device))
    per_sample = writer.view_bytes() * args.views
    samples = read_manifest(shards).total_count
    start = time.perf_counter()
    writer.run(list(range(len(writer.source.shards))))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    written = sum(p.stat().st_size for p in (root / "feat").glob("set-*/*.tar"))
    return {"device": device, "width": args.width, "size": args.size, "views": args.views, "dtype": args.dtype,
            "batch": args.batch, "samples": samples, "seconds": seconds, "samples_per_s": samples / seconds,
            "views_per_s": samples * args.views / seconds, "bytes_per_sample": per_sample,
            "bytes_written": written, "bytes_per_s": written / seconds}


def table(r: dict) -> str:
    return "\n".join([
        f"| precompute ({r['device']}, teacher width {r['width']}, {r['size']}×{r['size']}, K={r['views']}, "
        f"{r['dtype']}, batch {r['batch']}) | value |",
        "|---|---:|",
        f"| source samples/s | {r['samples_per_s']:,.1f} |",
        f"| teacher views/s | {r['views_per_s']:,.1f} |",
        f"| feature bytes written/s | {r['bytes_per_s'] / 2**20:,.1f} MiB/s |",
        f"| bytes stored per sample (K maps) | {r['bytes_per_sample'] / 1024:,.1f} KiB |",
        f"| bytes a student reads per sample and epoch (one map) | "
        f"{r['bytes_per_sample'] / r['views'] / 1024:,.1f} KiB |",
        f"| feature shards per 100k samples | {r['bytes_per_sample'] * 1e5 / 2**30:.2f} GiB |"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64, help="samples of the split built here (without --shards)")
    parser.add_argument("--shards", help="an existing source split directory (default: build one)")
    parser.add_argument("--build-workers", type=int, default=1, help="processes rendering the split built here")
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--size", type=int, default=129)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "uint8"])
    parser.add_argument("--batch", type=int, default=32, help="teacher views per forward pass")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards = Path(args.shards) if args.shards else root / "synth" / "train"
        if not args.shards:
            build_synthetic(root / "synth", {"train": args.samples}, samples_per_shard=16, workers=args.build_workers)
        result = measure(shards, root, args, args.device)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.record:
        record("Precompute throughput", table(result), "python bench/bench_precompute.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
