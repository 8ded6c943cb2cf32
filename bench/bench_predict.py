"""Throughput of ``depthpi predict`` end to end, and the effect of flip TTA on MPJPE.

Throughput: images/s of ``predict_frames`` (crop construction through the training
pipeline + normalisation + forward + rotation to the frame camera + 2D joints; no overlay
rendering, no file I/O) on 640×480 frames with one person box each, per model width and
batch size, plus the share of time spent building crops. Models are untrained
(``init=none``): speed does not depend on the weights.

    python bench/bench_predict.py --widths 0.125 1.0 --batches 1 32 --frames 64
    python bench/bench_predict.py --ckpt runs/demo/student/export/last.pt \\
        --shards shards/synth/test --flip-tta-eval          # MPJPE with and without flip TTA
    python bench/bench_predict.py --detect --frames 20      # the HOG people detector's time per frame

``--detect`` times the default person detector (``depthpi.detect.HogDetector``) on
synthetic frames with one person (the renderer's view at twice its crop margin, 400×400,
widened by mirroring to the frame's aspect ratio and resized to the frame size: the person
is half the frame's height), median over ``--frames`` frames per size.
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


def detector_times(sizes: list[tuple[int, int]], frames: int) -> list[str]:
    """Table rows: frame size, median and 90th percentile ms per frame of HOG, the person's
    height in the frame and in how many frames HOG found the person."""
    import cv2

    from depthpi.data.synthetic import SyntheticConfig, render_sample
    from depthpi.detect import HogDetector

    cfg = SyntheticConfig(crop_margin=2.0, crop_size=400)
    samples = [render_sample("test", i, cfg) for i in range(frames)]
    detector = HogDetector()
    rows = []
    for width, height in sizes:
        pad = (400 * width // height - 400) // 2  # the 400×400 view widened (mirrored) to the frame's aspect
        scale = height / 400
        times, found = [], 0
        for sample in samples:
            wide = cv2.copyMakeBorder(sample.rgb, 0, 0, pad, pad, cv2.BORDER_REFLECT)
            frame = cv2.resize(wide, (width, height), interpolation=cv2.INTER_LINEAR)
            start = time.perf_counter()
            found += bool(detector(frame))
            times.append(time.perf_counter() - start)
        person = np.median([s.meta.bbox[3] for s in samples]) * scale
        rows.append(f"| {width}×{height} | {1000 * np.median(times):.0f} | {1000 * np.percentile(times, 90):.0f} | "
                    f"{person:.0f} px | {found}/{len(samples)} |")
        print(rows[-1], flush=True)
    return rows


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
    parser.add_argument("--detect", action="store_true", help="time the HOG people detector per frame")
    parser.add_argument("--record", action="store_true", help="append the table to docs/benchmarks.md")
    args = parser.parse_args()

    if args.detect:
        header = ["| frame | HOG ms/frame (median) | 90th percentile | person height | frames where HOG found "
                  "the person |", "|---|---:|---:|---:|---:|"]
        print("\n".join(header), flush=True)
        rows = detector_times([(640, 480), (1280, 720), (1920, 1080)], args.frames)
        table = "\n".join(header + rows)
        print(f"\n{machine()}, OpenCV threads {__import__('cv2').getNumThreads()}")
        if args.record:
            record("Person detection in depthpi predict (OpenCV's HOG, one process)", table,
                   " ".join(["python bench/bench_predict.py", *sys.argv[1:]]))
        return

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
