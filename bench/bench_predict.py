"""Throughput of ``depthpi predict`` end to end, and the effect of flip TTA on MPJPE.

Throughput: images/s of ``predict_frames`` (crop construction through the training
pipeline + normalisation + forward + rotation to the frame camera + 2D joints; no overlay
rendering, no file I/O) on 640×480 frames with one person box each, per model width and
batch size, plus the share of time spent building crops. Models are untrained
(``init=none``): speed does not depend on the weights.

    python bench/bench_predict.py --widths 0.125 1.0 --batches 1 32 --frames 64
    python bench/bench_predict.py --ckpt runs/demo/student/export/last.pt \\
        --shards shards/synth/test --flip-tta-eval          # MPJPE with and without flip TTA
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine, record  # noqa: E402
from depthpi.camera import Camera  # noqa: E402
from depthpi.config import DataConfig, TrainConfig, save_config  # noqa: E402
from depthpi.data.pipeline import PipelineConfig  # noqa: E402
from depthpi.models.posenet import ModelConfig, build_model  # noqa: E402
from depthpi.data.shards import read_manifest  # noqa: E402
from depthpi.predict import Predictor, evaluate_checkpoint, make_crop, predict_frames  # noqa: E402


def _predictor(width: float, size: int, device: str, tmp: Path) -> Predictor:
    cfg = TrainConfig(model=ModelConfig(width=width, arch="resnet50", init="none"),
                      data=DataConfig(pipeline=PipelineConfig(input_size=size)))
    run = tmp / f"w{width}"
    (run / "export").mkdir(parents=True, exist_ok=True)
    torch.save(build_model(cfg.model).state_dict(), run / "export" / "best.pt")
    save_config(cfg, run / "config.yaml")
    return Predictor.from_checkpoint(run / "export" / "best.pt", device=device)


def _frames(count: int, rng: np.random.Generator):
    images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(min(count, 8))]
    return [(i, i, images[i % len(images)]) for i in range(count)]


def throughput(predictor: Predictor, batch: int, frames: int, flip_tta: bool) -> tuple[float, float]:
    """(images/s end to end, share of time building crops)."""
    rng = np.random.default_rng(0)
    camera = Camera.from_fov(55, 640, 480)
    box = np.array([250.0, 60.0, 150.0, 360.0])
    data = _frames(frames, rng)

    def run(items):
        for _ in predict_frames(predictor, items, lambda im: camera, lambda *a: [box], batch, flip_tta):
            pass
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()

    run(data[:batch])  # warm-up
    start = time.perf_counter()
    run(data)
    total = time.perf_counter() - start
    pipeline = predictor.rgb_pipeline()
    start = time.perf_counter()
    for _, _, image in data:
        make_crop(image, camera, box, pipeline, predictor.skeleton)
    crops = time.perf_counter() - start
    return frames / total, crops / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=float, nargs="+", default=[0.125, 1.0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--size", type=int, default=257)
    parser.add_argument("--frames", type=int, default=64, help="frames per measurement (>= largest batch)")
    parser.add_argument("--flip-tta", action="store_true", help="measure with flip TTA")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ckpt", help="trained model for --flip-tta-eval")
    parser.add_argument("--shards", help="test split for --flip-tta-eval")
    parser.add_argument("--flip-tta-eval", action="store_true", help="MPJPE/PCK/AUC with and without flip TTA")
    parser.add_argument("--record", action="store_true", help="append the table to docs/benchmarks.md")
    args = parser.parse_args()

    if args.flip_tta_eval:
        if not (args.ckpt and args.shards):
            parser.error("--flip-tta-eval needs --ckpt and --shards")
        rows = ["| flip TTA | MPJPE (mm) | PCK | AUC | samples | samples/s (`depthpi eval`, report included) |",
                "|---|---|---|---|---:|---:|"]
        with tempfile.TemporaryDirectory() as tmp:
            for tta in (False, True):
                start = time.perf_counter()
                r = evaluate_checkpoint(args.ckpt, args.shards, Path(tmp) / str(tta), device=args.device,
                                        flip_tta=tta)
                samples = read_manifest(args.shards).total_count  # r["count"] counts joints
                rate = samples / (time.perf_counter() - start)
                rows.append(f"| {'yes' if tta else 'no'} | {r['mpjpe']:.2f} | {r['pck']:.4f} | {r['auc']:.4f} | "
                            f"{samples} | {rate:,.0f} |")
        table = "\n".join(rows)
        print(f"{machine()}\n{args.ckpt} on {args.shards}\n\n{table}")
        if args.record:
            record("Evaluation on the test split: flip TTA and throughput", table,
                   " ".join(["python bench/bench_predict.py", *sys.argv[1:]]))
        return

    torch.set_grad_enabled(False)
    rows = ["| width | N | batch | flip TTA | device | images/s | crop share |", "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for width in args.widths:
            predictor = _predictor(width, args.size, args.device, Path(tmp))
            for batch in args.batches:
                rate, share = throughput(predictor, batch, max(args.frames, batch), args.flip_tta)
                rows.append(f"| {width:g} | {args.size} | {batch} | {'yes' if args.flip_tta else 'no'} | "
                            f"{args.device} | {rate:.1f} | {share:.0%} |")
                print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(f"\n{machine()}\n\n{table}")
    if args.record:
        record("depthpi predict throughput (end to end, no overlay)", table, " ".join(sys.argv))


if __name__ == "__main__":
    main()
