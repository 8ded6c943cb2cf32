"""Epoch planning at cluster scale: samples used per epoch, plan time, bytes read but not used.

An NTU-sized training split (``--shards`` shards of ``--min``–``--max`` samples drawn with
``--seed``, ~304k samples; and the same number of shards all of their mean size) planned
for ranks × workers of 64×8, 8×8 and 1×8 at batch ``--batch``. Every shard is read whole
once per epoch, so the samples an epoch does not use are read but not used; their bytes
are estimated with ``--sample-bytes`` per sample (default: the synthetic set's 44,960 B; a
split's own is its manifest's bytes / ``total_count``). Plan time is the planner's
construction plus one epoch's plan, on this machine.

    python bench/bench_plan.py [--record]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import record  # noqa: E402

from depthpi.data.shard_plan import ShardPlanner  # noqa: E402

LAYOUTS = ((64, 8), (8, 8), (1, 8))


def measure(counts: list[int], world: int, workers: int, batch: int, sample_bytes: int) -> dict:
    start = time.perf_counter()
    planner = ShardPlanner(counts, world, workers, batch)
    plan = planner.plan(0, 1, shuffle=True, capped=True)
    seconds = time.perf_counter() - start
    totals = [sum(planner.samples(plan, rank)) for rank in range(world)]
    used = world * planner.batches_per_rank * batch
    return {"used": used, "share": used / sum(counts), "seconds": seconds, "batches": planner.batches_per_rank,
            "unused_bytes": (sum(counts) - used) * sample_bytes, "spread": max(totals) - min(totals)}


def table(rows: list[tuple[str, int, int, dict]], batch: int) -> str:
    lines = ["| split | ranks × workers | batch | batches per rank | samples used per epoch | share | plan time | "
             "bytes read but not used | rank load spread (samples) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, world, workers, m in rows:
        lines.append(f"| {name} | {world} × {workers} | {batch} | {m['batches']} | {m['used']:,} | {m['share']:.2%} | "
                     f"{m['seconds'] * 1000:.1f} ms | {m['unused_bytes'] / 2**20:,.0f} MiB | {m['spread']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=1320)
    parser.add_argument("--min", type=int, default=200)
    parser.add_argument("--max", type=int, default=260)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--sample-bytes", type=int, default=44_960)
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    varied = np.random.default_rng(args.seed).integers(args.min, args.max + 1, args.shards).tolist()
    equal = [round(sum(varied) / args.shards)] * args.shards
    splits = {f"{args.shards} shards of {args.min}–{args.max} ({sum(varied):,} samples)": varied,
              f"{args.shards} shards of {equal[0]} ({sum(equal):,} samples)": equal}
    rows = [(name, world, workers, measure(counts, world, workers, args.batch, args.sample_bytes))
            for name, counts in splits.items() for world, workers in LAYOUTS]
    print(table(rows, args.batch))
    if args.record:
        record("Epoch planning at cluster scale", table(rows, args.batch), "python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
