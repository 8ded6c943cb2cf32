"""Synthetic RGB-D renderer throughput on ONE core (goal: >= 100 samples/s at the default size).

Single-threaded: OMP/MKL/OpenBLAS threads 1 and ``cv2.setNumThreads(1)``. The per-core
figure divides by the process's CPU time (so other load on a shared machine does not
lower it); wall-clock is printed too. The room of each sensor is rendered once per
process and cached; the warm figure is the steady state a shard-building worker sees,
the cold one includes filling that cache.

    python bench/bench_synthetic.py [--samples 500] [--split train] [--record]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402

from depthpi.data.schema import encode_sample  # noqa: E402
from depthpi.data.synthetic import SyntheticConfig, cameras_of, render_sample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--split", default="train", choices=["train", "test", "unlabeled"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    cfg = SyntheticConfig(seed=args.seed)

    start = time.perf_counter()
    warmup = 0
    while True:  # cold: until every sensor of the split has been rendered once (cache filled)
        render_sample(args.split, warmup, cfg)
        warmup += 1
        from depthpi.data.synthetic.scene import sensor_of
        if sensor_of.cache_info().currsize >= len(cameras_of(args.split, cfg)) or warmup >= 2000:
            break
    cold = time.perf_counter() - start

    wall, cpu = time.perf_counter(), time.process_time()
    samples = [render_sample(args.split, warmup + i, cfg) for i in range(args.samples)]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    start = time.process_time()
    for sample in samples:
        encode_sample(sample)
    encode_cpu = time.process_time() - start
    s = samples[0]
    size = f"RGB {s.rgb.shape[1]}×{s.rgb.shape[0]}, depth ~{s.depth.shape[1]}×{s.depth.shape[0]}"
    rows = [("render_sample, per core (CPU time)", args.samples / cpu),
            ("render_sample, wall clock (lower when the machine is shared)", args.samples / wall),
            ("render + encode_sample (jpg + png + json), per core", args.samples / (cpu + encode_cpu)),
            (f"cold start: first {warmup} samples, filling the sensor cache (wall)", warmup / cold)]
    table = "\n".join([f"| synthetic/{args.split}, 1 thread ({size}) | samples/s |", "|---|---|",
                       *[f"| {name} | {rate:,.1f} |" for name, rate in rows]])
    print(table)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; CPU time is the per-core figure")
    if args.record:
        from benchlib import record
        record("Synthetic renderer per core", table,
               f"python bench/bench_synthetic.py --samples {args.samples} --split {args.split}")


if __name__ == "__main__":
    main()
