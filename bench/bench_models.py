"""Training-step throughput and peak memory of every stage's model step.

Each workload is one training step as the engine runs it, on a batch built by the pose
pipeline (a few rendered synthetic samples, each under many augmented views, collated as
the loader collates them) and copied host→device every step: the stage's losses
(``depthpi.train.stages``, model inputs through ``depthpi.data.batches.model_inputs`` with
colour augmentation on the device) under autocast, backward, gradient clipping, Adam step.
The workloads are the thesis' configs with random initial weights:

- ``baseline-rgb`` (1.2), ``baseline-depth`` (2.1), ``teacher`` (3.2, RGB-D);
- ``student-online`` (8.1): the frozen teacher runs to its tap under ``inference_mode``;
- ``student-stored`` (8.1 on precomputed features): the float32 tap the loader hands over
  is copied host→device with the batch; no teacher in memory.

``--max-batch M`` searches the largest power of two ≤ M whose step fits in device memory
(a CUDA out-of-memory error halves it); ``--batch`` fixes it. Peak memory is
``torch.cuda.max_memory_allocated`` over the timed steps on a GPU; on a CPU the process'
peak RSS (``resource.getrusage``), shown with its rise over the RSS after the model was
built. Each workload runs in a fresh process, so its peak memory is its own.

``--compile`` wraps the trained model in ``torch.compile`` as ``run.compile`` does (the
online teacher stays eager, as in the engine); the compile time is in the warm-up column.
Before 2026-11-28 this script timed forward + backward without the optimiser step, on
random tensors: its older tables in docs/benchmarks.md are not comparable.

    python bench/bench_models.py --width 0.125 --batch 4 --steps 5 [--bf16] [--channels-last] [--compile]
    python bench/bench_models.py --width 1 --max-batch 256 --steps 20 --bf16 --channels-last --json models.json
"""
from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine, record  # noqa: E402
from depthpi.config import TrainConfig, load_config  # noqa: E402
from depthpi.data.batches import Batch, map_fn, with_depth  # noqa: E402
from depthpi.data.loader import collate  # noqa: E402
from depthpi.data.synthetic import SyntheticConfig, render_sample  # noqa: E402
from depthpi.models.posenet import build_model, tap_features  # noqa: E402
from depthpi.train.run import build_stage  # noqa: E402
from depthpi.weights import save_weights  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# workload → (thesis config, overrides that make it buildable without trained runs)
WORKLOADS = {
    "baseline-rgb": ("baseline/1.2.yaml", []),
    "baseline-depth": ("baseline/2.1.yaml", []),
    "teacher": ("teacher/3.2.yaml", ["model.depth_branch_checkpoint=null"]),
    "student-online": ("student/8.1.yaml", ["model.init_checkpoint=null"]),
    "student-stored": ("student/8.1.yaml", ["model.init_checkpoint=null", "teacher.mode=precomputed",
                                            "teacher.features=unused-by-this-benchmark"]),
}
RENDERED = 4  # distinct rendered samples; the batch holds many augmented views of each


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def workload_config(workload: str, args, out_dir: str) -> TrainConfig:
    """The thesis config of ``workload`` at the benchmark's width, size and precision."""
    path, extra = WORKLOADS[workload]
    overrides = [f"model.width={args.width}", "model.init=none", f"teacher.model.width={args.width}",
                 f"data.pipeline.input_size={args.size}", "data.extra_tests=null",
                 f"run.channels_last={args.channels_last}", f"run.compile={args.compile}",
                 f"run.precision={'bf16' if args.bf16 else 'fp32'}", f"run.out_dir={out_dir}", *extra]
    return load_config(CONFIGS / path, overrides)


def with_random_teacher(cfg: TrainConfig, directory: Path) -> TrainConfig:
    """An online-student config whose ``teacher.weights`` is a freshly initialised teacher
    (the cost of a step does not depend on the weights)."""
    if cfg.stage != "student" or cfg.teacher.mode != "online":
        return cfg
    path = directory / "teacher.pt"
    save_weights(build_model(cfg.teacher.model).state_dict(), path)
    return replace(cfg, teacher=replace(cfg.teacher, weights=str(path)))


def feature_shape(cfg: TrainConfig) -> tuple[int, int, int]:
    """(C, h, w) of the student's tap at the config's input size, on the meta device (no compute)."""
    n = cfg.data.pipeline.input_size
    with torch.device("meta"):
        probe = build_model(cfg.model)
        return tuple(tap_features(probe, cfg.model, torch.empty(1, 3, n, n), torch.empty(1, 1, n, n),
                                  cfg.distill.tap).shape[1:])


def pipeline_batch(cfg: TrainConfig, count: int, stored_features: bool, needs_depth: bool) -> Batch:
    """``count`` training views (host tensors), built by the loader's map function from a few
    rendered synthetic samples and collated as the loader does; with random stored teacher
    features (float32, as a precomputed student's loader hands them over) when asked."""
    samples = [render_sample("train", index, SyntheticConfig()) for index in range(RENDERED)]
    view = map_fn(with_depth(cfg.data.pipeline, needs_depth), cfg.run.seed, train=True)
    batch = Batch.from_collated(collate([view(samples[i % RENDERED], i // RENDERED) for i in range(count)]))
    if stored_features:
        batch.teacher_features = torch.randn(count, *feature_shape(cfg))
    return batch


class Step:
    """One engine training step of a stage, on a host batch copied to ``device`` each call."""

    def __init__(self, cfg: TrainConfig, device: torch.device, compile_backend: str = "inductor"):
        self.cfg, self.device, self.compile_backend = cfg, device, compile_backend
        self.stage, self.model = build_stage(cfg, device)
        self.model.to(device)
        if cfg.run.channels_last and device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                          weight_decay=cfg.optim.weight_decay)
        self.recompile()

    def recompile(self) -> None:
        """(Re)wrap the trained model as ``run.compile`` does; after an OOM, compile afresh
        for the next batch size instead of recompiling with dynamic shapes."""
        self.forward = self.model
        if self.cfg.run.compile:
            torch._dynamo.reset()
            self.forward = torch.compile(self.model, backend=self.compile_backend)

    def autocast(self):
        if self.cfg.run.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.run.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def __call__(self, batch: Batch) -> None:
        batch = batch.to(self.device)
        with self.autocast():
            terms = self.stage.losses(self.forward, batch, 1.0)
        terms["loss"].backward()
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def release(self) -> None:
        """What an out-of-memory step left behind, so the next batch size starts clean."""
        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def candidate_batches(args, workload: str) -> list[int]:
    """The batch ``--batches`` names for ``workload``, ``--batch``, or the powers of two
    from ``--max-batch`` down to 1."""
    named = dict(item.split("=") for item in args.batches)
    if workload in named:
        return [int(named[workload])]
    if not args.max_batch:
        return [args.batch]
    top = 1 << (args.max_batch.bit_length() - 1)
    return [top >> i for i in range(top.bit_length())]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit_batch(step: Step, host: Batch, candidates: list[int]) -> tuple[int, float]:
    """(the first candidate batch whose warm-up steps fit, their seconds): one step, two
    when compiled (the second may recompile for grad mode)."""
    for batch_size in candidates:
        batch = host.head(batch_size)
        start = time.perf_counter()
        try:
            for _ in range(2 if step.cfg.run.compile else 1):
                step(batch)
            _sync(step.device)
            return batch_size, time.perf_counter() - start
        except torch.cuda.OutOfMemoryError:
            if batch_size == candidates[-1]:
                raise
        # outside the handler: the exception's frames, which hold the step's tensors, are gone
        step.release()
        step.recompile()
    raise AssertionError("unreachable: the last candidate returns or raises")


def run_workload(workload: str, args) -> dict:
    """Runs in a child process: fit the batch, then time ``args.steps`` steps."""
    torch.manual_seed(0)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = with_random_teacher(workload_config(workload, args, tmp), Path(tmp))
        step = Step(cfg, device, args.compile_backend)
        stored = cfg.stage == "student" and cfg.teacher.mode == "precomputed"
        candidates = candidate_batches(args, workload)
        host = pipeline_batch(cfg, max(candidates), stored, step.stage.needs_depth)
        if device.type == "cuda":
            host = host.pin_memory()
        rss_built = _rss_mb()
        batch_size, warmup_s = fit_batch(step, host, candidates)
        batch = host.head(batch_size)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step(batch)
        _sync(device)
        seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
        peak = f"{peak_mib:,.0f} MiB alloc"
    else:
        peak_mib = _rss_mb()
        peak = f"{peak_mib:,.0f} MiB RSS (+{peak_mib - rss_built:,.0f})"
    feat_bytes = 2 * batch.teacher_features[0].numel() if stored else 0  # one fp16 view as stored on disk
    return dict(workload=workload, config=WORKLOADS[workload][0], batch=batch_size,
                params=sum(p.numel() for p in step.model.parameters()), rate=batch_size * args.steps / seconds,
                step_ms=1000 * seconds / args.steps, peak=peak, peak_mib=peak_mib, feat_bytes=feat_bytes,
                warmup_s=warmup_s, device=str(device), compile=args.compile and args.compile_backend, bf16=args.bf16,
                channels_last=args.channels_last, width=args.width, size=args.size)


def table(rows: list[dict]) -> str:
    lines = ["| workload | config | batch | trainable params | samples/s | ms/step | peak memory | "
             "stored-feature reads (fp16) | warm-up s |", "|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        reads = f"{r['rate'] * r['feat_bytes'] / 2**20:,.1f} MiB/s" if r["feat_bytes"] else "–"
        lines.append(f"| {r['workload']} | {r['config']} | {r['batch']} | {r['params'] / 1e6:.2f} M | "
                     f"{r['rate']:,.1f} | {r['step_ms']:,.0f} | {r['peak']} | {reads} | {r['warmup_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=0.125, help="ResNet-50 channel multiplier")
    parser.add_argument("--size", type=int, default=257, help="input crop N×N")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-batch", type=int, default=0,
                        help="search the largest power of two up to this that fits (overrides --batch)")
    parser.add_argument("--batches", nargs="+", default=[], metavar="WORKLOAD=N",
                        help="a fixed batch for some workloads (e.g. the eager step's, for --compile)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the warm-up")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (run.precision=bf16)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the trained model (run.compile)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (inductor as run.compile; eager only traces, for checks)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--json", help="write the rows here, rewritten as each workload finishes")
    parser.add_argument("--record", action="store_true", help="append the table to docs/benchmarks.md")
    args = parser.parse_args()
    # A fresh process per workload (its own peak memory), forked from a server that has
    # imported torch and depthpi once; the server never touches CUDA.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "depthpi.train.run", "depthpi.data.synthetic"])
    rows = []
    for workload in args.workloads:
        with ctx.Pool(1) as pool:
            rows.append(pool.apply(run_workload, (workload, args)))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    title = (f"Models at {args.size}×{args.size}, ResNet-50 width {args.width}, {args.device}"
             f"{', bf16' if args.bf16 else ''}{', channels_last' if args.channels_last else ''}"
             f"{', torch.compile' if args.compile else ''}")
    print(f"{title}\n{machine()}\n\n{table(rows)}")
    if args.record:
        record(title, table(rows), "python bench/bench_models.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
