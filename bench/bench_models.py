"""Training-step throughput and peak memory of the pose models at 257×257.

Three workloads, each forward + backward (no optimiser step):
- ``baseline``: RGB PoseNet, regression-style loss on the joints;
- ``teacher``: RGB-D teacher, same loss;
- ``student+teacher``: frozen teacher forward under ``inference_mode`` (online
  teacher, tap ``block13.post_relu``, stopping there: no layer4, no head) + RGB student forward/backward with a
  regression term and a sigmoid-L2 distillation term on the same tap.
- ``student+stored``: the same student step against a stored float16 tap (precomputed
  teacher): the map is copied host→device each step as the loader would hand
  it over; no teacher in memory.

Besides samples/s and peak memory, the table gives the memory per extra sample (from a
second run at twice the batch) and so the largest batch that fits a memory budget
(``--budget-gib``, default 80 GiB: an H100), and for ``student+stored`` the feature read
bandwidth the measured rate needs.

Each workload runs in a fresh spawned process so its peak memory is its own: on CUDA
``torch.cuda.max_memory_allocated``; on CPU the process' peak RSS
(``resource.getrusage``), shown with its rise over the RSS after the model was built.

``--compile`` wraps the trained model (and the online teacher) in ``torch.compile`` as
``run.compile`` does; the compile time is the first step's, reported apart.

    python bench/bench_models.py --width 0.125 --batch 4 --steps 5 [--bf16] [--channels-last] [--compile]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine, record  # noqa: E402
from depthpi.models import ModelConfig, build_model, freeze  # noqa: E402

TAP = "block13.post_relu"
SIZE = 257
WORKLOADS = ("baseline", "teacher", "student+teacher", "student+stored")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _inputs(args, device):
    rgb = torch.randn(args.batch, 3, SIZE, SIZE, device=device)
    depth = torch.rand(args.batch, 1, SIZE, SIZE, device=device)
    if args.channels_last:
        rgb, depth = (t.contiguous(memory_format=torch.channels_last) for t in (rgb, depth))
    return rgb, depth


def _models(workload: str, args, device):
    cfg = ModelConfig(width=args.width, init="none")
    teacher_cfg = ModelConfig(kind="teacher", width=args.width, init="none")
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = build_model(teacher_cfg if workload == "teacher" else cfg).to(device, memory_format=fmt).train()
    teacher = None
    if workload == "student+stored":
        with torch.no_grad():  # the stored map's shape; the values do not matter for timing
            probe = build_model(teacher_cfg).eval()(torch.zeros(1, 3, SIZE, SIZE), torch.zeros(1, 1, SIZE, SIZE),
                                                    taps=(TAP,)).features[TAP]
        teacher = torch.randn(args.batch, *probe.shape[1:]).half().pin_memory() if device.type == "cuda" else \
            torch.randn(args.batch, *probe.shape[1:]).half()
    if workload == "student+teacher":
        teacher = freeze(build_model(teacher_cfg)).to(device, memory_format=fmt)
    return model, teacher


def _step(workload, model, teacher, rgb, depth, args) -> None:
    autocast = torch.autocast(rgb.device.type, dtype=torch.bfloat16, enabled=args.bf16)
    with autocast:
        if workload == "teacher":
            out = model(rgb, depth)
            loss = out.joints.abs().mean()
        elif workload == "baseline":
            out = model(rgb)
            loss = out.joints.abs().mean()
        else:
            if workload == "student+stored":
                t_feat = torch.sigmoid(teacher.to(rgb.device, non_blocking=True).float())
            else:
                with torch.inference_mode():
                    t_feat = torch.sigmoid(teacher(rgb, depth, taps=(TAP,), head=False).features[TAP].float())
            out = model(rgb, taps=(TAP,))
            s_feat = torch.sigmoid(out.features[TAP].float())
            loss = out.joints.abs().mean() + F.mse_loss(s_feat, t_feat.clone())
    loss.backward()
    model.zero_grad(set_to_none=True)


def run_workload(workload: str, args) -> dict:
    """Runs in a child process: time ``args.steps`` steps after one warm-up step."""
    torch.manual_seed(0)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = torch.device(args.device)
    model, teacher = _models(workload, args, device)
    if args.compile:
        model = torch.compile(model)
        teacher = torch.compile(teacher) if isinstance(teacher, torch.nn.Module) else teacher
    rgb, depth = _inputs(args, device)
    rss_built = _rss_mb()
    first = time.perf_counter()
    for _ in range(2 if args.compile else 1):  # compiled: the second step may recompile (grad mode)
        _step(workload, model, teacher, rgb, depth, args)
    if device.type == "cuda":
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - first
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        _step(workload, model, teacher, rgb, depth, args)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
        peak = f"{peak_mib:.0f} MiB alloc"
    else:
        peak_mib = _rss_mb()
        peak = f"{peak_mib:.0f} MiB RSS (+{peak_mib - rss_built:.0f})"
    feat_bytes = teacher[0].numel() * 2 if workload == "student+stored" else 0
    return dict(workload=workload, params=params, rate=args.batch * args.steps / seconds,
                step_ms=1000 * seconds / args.steps, peak=peak, peak_mib=peak_mib, feat_bytes=feat_bytes,
                warmup_s=warmup_s)


def _table(rows: list[dict], doubled: list[dict], batch: int, budget_gib: float) -> str:
    lines = ["| workload | trainable params | samples/s | ms/step | peak memory | MiB per extra sample | "
             f"largest batch in {budget_gib:g} GiB | feature reads | warm-up s |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r, d in zip(rows, doubled):
        per_sample = max((d["peak_mib"] - r["peak_mib"]) / batch, 1e-3)
        largest = int((budget_gib * 1024 - (r["peak_mib"] - per_sample * batch)) / per_sample)
        reads = f"{r['rate'] * r['feat_bytes'] / 2**20:.1f} MiB/s" if r["feat_bytes"] else "–"
        lines.append(f"| {r['workload']} | {r['params'] / 1e6:.2f} M | {r['rate']:.1f} | {r['step_ms']:.0f} | "
                     f"{r['peak']} | {per_sample:.1f} | {largest} | {reads} | {r['warmup_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=0.125, help="ResNet-50 channel multiplier")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models (run.compile)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--budget-gib", type=float, default=80.0, help="memory budget for the largest-batch column")
    parser.add_argument("--record", action="store_true", help="append the table to docs/benchmarks.md")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    rows, doubled = [], []
    for workload in args.workloads:
        with ctx.Pool(1) as pool:
            rows.append(pool.apply(run_workload, (workload, args)))
        with ctx.Pool(1) as pool:  # twice the batch, one timed step: memory per extra sample
            doubled.append(pool.apply(run_workload, (workload, argparse.Namespace(
                **{**vars(args), "batch": 2 * args.batch, "steps": 1}))))
    title = (f"Models at {SIZE}×{SIZE}, ResNet-50 width {args.width}, batch {args.batch}, {args.device}"
             f"{', bf16' if args.bf16 else ''}{', channels_last' if args.channels_last else ''}"
             f"{', torch.compile' if args.compile else ''}")
    table = _table(rows, doubled, args.batch, args.budget_gib)
    print(f"{title}\n{machine()}\n\n{table}")
    if args.record:
        record(title, table, "python bench/bench_models.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
