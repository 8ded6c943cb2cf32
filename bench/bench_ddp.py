"""DDP scaling: N single-thread processes (gloo) vs one, same per-rank batch.

Each rank runs forward + backward + Adam step of the baseline model on its own batch;
DDP all-reduces the gradients. Efficiency = rate(N) / (N · rate(1)). Goal on CPU with
2 processes of one thread each: ≥ 85 %. On a multi-GPU machine pass ``--device cuda``
(nccl) and ``--procs`` up to the GPU count.

    python bench/bench_ddp.py --procs 1 2 --batch 8 --steps 10 --width 0.125 --size 129 [--record]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import record  # noqa: E402
from depthpi.models import ModelConfig, build_model  # noqa: E402


def _worker(rank: int, world: int, args, init_file: str, results) -> None:
    torch.set_num_threads(1)
    backend = "nccl" if args.device == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world)
    device = torch.device(f"cuda:{rank}" if args.device == "cuda" else "cpu")
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=args.width, depth_bins=16, init="none")).to(device)
    model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank] if args.device == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)

    def step():
        loss = model(x).joints.abs().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if args.device == "cuda":
        torch.cuda.synchronize()
    dist.barrier()
    if rank == 0:
        results.put(world * args.batch * args.steps / (time.perf_counter() - start))
    dist.destroy_process_group()


def measure(world: int, args) -> float:
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_worker, args=(world, args, os.path.join(tmp, "init"), results), nprocs=world,
                           start_method="spawn")
    return results.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=8, help="per rank")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--size", type=int, default=129)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    rates = {n: measure(n, args) for n in args.procs}
    base = rates[min(rates)] / min(rates)
    lines = [f"| processes ({args.device}, 1 thread each, batch {args.batch}/rank, {args.size}×{args.size}, "
             f"width {args.width}) | samples/s | scaling efficiency |", "|---|---:|---:|"]
    lines += [f"| {n} | {r:.1f} | {r / (n * base):.0%} |" for n, r in rates.items()]
    table = "\n".join(lines)
    print(table)
    if args.record:
        record("DDP scaling", table, "python bench/bench_ddp.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
