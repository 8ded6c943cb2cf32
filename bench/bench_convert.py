"""NTU RGB+D conversion rate at full resolution (1920×1080 MJPG AVI), one core.

Writes a small NTU layout with the test fixture writer (``tests/raw_datasets.py``), then
converts it with ``--every 1`` and ``--every 5`` (one worker process, OpenCV single-
threaded) and times, for comparison, decoding alone (``cap.read()`` of every frame) and
skipping alone (``cap.grab()`` of every frame). Prints one table.

The fixture frames are flat-coloured renderings, which decode faster than real footage
(a textured 1080p MJPG decodes at ~170 frames/s on the 2-core CI machine against ~324 for
these), so the figures are an upper bound for real NTU videos.

    .venv/bin/python bench/bench_convert.py [--videos 2] [--frames 30] [--record]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from benchlib import record  # noqa: E402


def _time_capture(paths, retrieve: bool) -> tuple[float, int]:
    start, frames = time.perf_counter(), 0
    for path in paths:
        cap = cv2.VideoCapture(str(path))
        while (cap.read()[0] if retrieve else cap.grab()):
            frames += 1
        cap.release()
    return time.perf_counter() - start, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=2)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    from raw_datasets import NTU_VIDEOS, write_ntu

    from depthpi.data.converters import convert

    names = [n for n in NTU_VIDEOS if n.startswith("S003C001P007R001")][:1] + ["S001C001P001R001A001"]
    videos = {name: 1 for name in names[:args.videos]}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "raw"
        write_ntu(root, frames=args.frames, videos=videos, defects=False)
        avis = sorted((root / "nturgb+d_rgb").glob("*.avi"))
        total_frames = args.frames * len(videos)
        rows = []
        t_read, n = _time_capture(avis, retrieve=True)
        rows.append(("decode only: cap.read() every frame", n, 0, t_read))
        t_grab, n = _time_capture(avis, retrieve=False)
        rows.append(("skip only: cap.grab() every frame", n, 0, t_grab))
        for every in (1, 5):
            out = Path(tmp) / f"out{every}"
            convert("ntu", root, out, every=every, workers=1, progress=False)  # warm-up: fit + imports
            shutil.rmtree(out / "train", ignore_errors=True)
            shutil.rmtree(out / "test", ignore_errors=True)
            start = time.perf_counter()
            summary = convert("ntu", root, out, every=every, workers=1, progress=False)
            rows.append((f"convert --every {every} (1 worker)", total_frames, summary.samples_written,
                         time.perf_counter() - start))
    title = (f"NTU RGB+D conversion, {len(videos)} videos × {args.frames} frames, 1920×1080 MJPG (flat-coloured "
             f"fixture frames), OpenCV {cv2.__version__}, 1 core")
    lines = [f"| {'step':<40} | {'video frames':>12} | {'samples':>7} | {'seconds':>8} | {'video frames/s':>14} | "
             f"{'samples/s':>9} |",
             f"|{'-' * 42}|{'-' * 14}|{'-' * 9}|{'-' * 10}|{'-' * 16}|{'-' * 11}|"]
    for step, frames, samples, seconds in rows:
        lines.append(f"| {step:<40} | {frames:>12} | {samples:>7} | {seconds:>8.2f} | {frames / seconds:>14.1f} | "
                     f"{(samples / seconds if samples else float('nan')):>9.1f} |")
    table = "\n".join(lines)
    print(title + "\n" + table)
    if args.record:
        record(title, table, f"python bench/bench_convert.py --videos {args.videos} --frames {args.frames}")

if __name__ == "__main__":
    main()
