"""Training throughput through the real engine: loader workers, step, optimiser, logging.

Unlike ``bench_models.py`` (model step alone, in-memory batches), this runs each stage
with ``launch/train_*.py`` on synthetic shards and reads back what the engine itself
logged to TensorBoard for the last epoch: samples/s, the share of step time spent
waiting for data (``train/data_wait_share``), and the process' peak memory
(``train/peak_memory_mib``: CUDA allocator peak on a GPU, peak RSS on a CPU). "Steady"
figures leave out the epoch's first batch (the workers' start-up), from the difference of
two of the engine's log points (it logs every quarter epoch here). Stages:
baseline RGB, RGB-D teacher, student with the online teacher (that teacher), student on
features precomputed from that teacher (``depthpi precompute``, in ``--precompute-parts``
processes), and baseline depth. Each runs in its own process, from scratch, for
``--epochs`` epochs (the first is warm-up: worker start, first allocations; the figures
are the last epoch's). Each run's ``metrics.json`` gives its evaluation after these few
steps beside the mean-pose reference: a convergence smoke test, not a result.

    python bench/bench_train.py --size 129 --width 0.125 --batch 16 --steps 20 --workers 2 [--record]
    # on a GPU node, e.g.:
    python bench/bench_train.py --size 257 --width 1 --batch 64 --steps 100 --workers 12 \
        --precision bf16 --channels-last --record
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo"
# stage → (launch script, demo config)
# In this order (the students need the teacher; the depth baseline matters least).
STAGES = {
    "baseline RGB": ("train_baseline.py", "baseline_rgb.yaml"),
    "teacher RGB-D": ("train_teacher.py", "teacher.yaml"),
    "student, online teacher": ("train_student.py", "student.yaml"),
    "student, precomputed features": ("train_student.py", "student.yaml"),
    "baseline depth": ("train_baseline.py", "baseline_depth.yaml"),
}


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in a run's TensorBoard events: {tag: [(global step, value)] in step order}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def steady_figures(tags: dict, first_step: int, batch: int) -> tuple[float | None, float | None]:
    """(samples/s, data-wait share) between the first and the last log point of the epoch that
    begins after ``first_step``: the engine logs both cumulatively from the epoch's start, so
    the difference of two points leaves out the epoch's first batch (the workers' start-up),
    which a short benchmark epoch would otherwise weigh far more than a real one."""
    rates = [(s, v) for s, v in tags["train/samples_per_s"] if s > first_step]
    shares = [(s, v) for s, v in tags["train/data_wait_share"] if s > first_step]
    if len(rates) < 2:
        return None, None
    (s0, r0), (s1, r1) = rates[0], rates[-1]
    t0, t1 = (s0 - first_step) * batch / r0, (s1 - first_step) * batch / r1  # seconds since the epoch began
    w0, w1 = shares[0][1] * t0, shares[-1][1] * t1
    return (s1 - s0) * batch / (t1 - t0), (w1 - w0) / (t1 - t0)


def run_stage(script: str, config: Path, out: Path, overrides: list[str], logs: Path | None, args) -> dict:
    """Train one stage; its last-epoch throughput figures and its evaluation after training."""
    cmd = [sys.executable, str(ROOT / "launch" / script), "--config", str(config), *overrides, f"run.out_dir={out}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if logs is not None:
        (logs / f"{out.name}.log").write_text(f"$ {' '.join(cmd)}\n{result.stdout}{result.stderr}")
    if result.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    tags = scalars(out)
    metrics = json.loads((out / "metrics.json").read_text())
    last_epoch_start = args.steps * (args.epochs - 1)
    steady_rate, steady_wait = steady_figures(tags, last_epoch_start, args.batch)
    epoch_ends = {args.steps * (e + 1) for e in range(args.epochs)}
    return {"samples_per_s": tags["train/samples_per_s"][-1][1], "data_wait_share": tags["train/data_wait_share"][-1][1],
            "steady_samples_per_s": steady_rate, "steady_data_wait_share": steady_wait,
            "peak_memory_mib": tags["train/peak_memory_mib"][-1][1],
            "train_loss": [v for s, v in tags["train/loss"] if s in epoch_ends],
            "mpjpe": metrics["mpjpe"], "mean_pose_mpjpe": metrics.get("mean_pose_mpjpe"), "pck": metrics["pck"]}


def build_shards(root: Path, args) -> None:
    train_count = args.batch * args.steps
    subprocess.run([sys.executable, "-m", "depthpi.cli", "shards", "build", "--source", "synthetic", "--out", str(root),
                    "--train", str(train_count), "--test", str(args.batch), "--unlabeled", "0",
                    "--per-shard", str(max(1, train_count // max(8, args.workers))),
                    "--workers", str(os.cpu_count() or 1)], check=True, capture_output=True)


def tap(arch: str) -> str:
    """The thesis' tap (the last layer3 block, after ReLU) named for ``arch``."""
    from depthpi.models.taps import LAYER_DEPTHS

    return f"layer3.{LAYER_DEPTHS[arch][2] - 1}.post_relu"


def precompute(teacher: Path, shards: Path, out: Path, args, logs: Path | None) -> None:
    """Teacher features of the train split, in ``--precompute-parts`` processes at once (as
    SLURM array tasks would split it): the views are built on the CPU of each process."""
    parts = max(1, args.precompute_parts)
    cmd = [sys.executable, "-m", "depthpi.cli", "precompute", "--teacher", str(teacher), "--shards",
           str(shards / "train"), "--out", str(out), "--tap", tap(args.arch), "--views", str(args.views)]
    processes = [subprocess.Popen([*cmd, "--shard-index", str(i), "--num-shards", str(parts)], text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(parts)]
    outputs = [p.communicate()[0] for p in processes]
    if logs is not None:
        (logs / "precompute.log").write_text(f"$ {' '.join(cmd)} (x{parts} parts)\n" + "\n".join(outputs))
    if any(p.returncode for p in processes):
        raise SystemExit(f"{' '.join(cmd)} failed:\n" + "\n".join(o[-3000:] for o in outputs))


def train_all(shards: Path, work: Path, args, logs: Path | None, done) -> dict[str, dict]:
    """Every stage in order (the students need the teacher); ``done(results)`` after each."""
    common = [f"data.train={shards / 'train'}", f"data.test={shards / 'test'}", f"optim.epochs={args.epochs}",
              f"run.steps_per_epoch={args.steps}", f"data.batch_size={args.batch}",
              f"data.eval_batch_size={args.batch}", f"data.num_workers={args.workers}",
              f"data.pipeline.input_size={args.size}", f"model.arch={args.arch}", f"model.width={args.width}",
              "model.init=none",
              f"run.precision={args.precision}", f"run.channels_last={args.channels_last}",
              f"run.log_every={max(1, args.steps // 4)}", f"run.checkpoint_every={10 ** 9}", *([f"optim.lr={args.lr}"] if args.lr else [])]
    teacher = work / "teacher" / "export" / "last.pt"
    student = ["model.init_checkpoint=null", f"teacher.model.arch={args.arch}", f"teacher.model.width={args.width}",
               f"teacher.weights={teacher}", f"distill.tap={tap(args.arch)}"]
    extra = {"teacher RGB-D": ["model.depth_branch_checkpoint=null"], "student, online teacher": student,
             "student, precomputed features": [*student, "teacher.mode=precomputed",
                                               f"teacher.features={work / 'features'}"]}
    names = {"baseline RGB": "baseline", "baseline depth": "baseline_depth", "teacher RGB-D": "teacher",
             "student, online teacher": "online", "student, precomputed features": "stored"}
    results = {}
    for stage, (script, config) in STAGES.items():
        if stage == "student, precomputed features":
            precompute(teacher, shards, work / "features", args, logs)
        results[stage] = run_stage(script, DEMO / config, work / names[stage], [*common, *extra.get(stage, [])], logs,
                                   args)
        done(results)
    return results


def table(results: dict[str, dict], args) -> str:
    baseline_rate = results.get("baseline RGB", {}).get("samples_per_s")
    rows = [f"| stage ({args.arch}, {args.size}×{args.size}, width {args.width}, batch {args.batch}, {args.workers} workers, "
            f"{args.precision}{', channels_last' if args.channels_last else ''}) | samples/s | step time vs "
            "baseline | data wait share | steady samples/s | steady data wait | peak memory (MiB) |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in results.items():
        rate = s["samples_per_s"]
        ratio = f"{baseline_rate / rate:.2f}×" if baseline_rate else "–"
        steady = (f"{s['steady_samples_per_s']:,.1f} | {s['steady_data_wait_share']:.1%}"
                  if s["steady_samples_per_s"] else "– | –")
        rows.append(f"| {name} | {rate:,.1f} | {ratio} | {s['data_wait_share']:.1%} | {steady} | "
                    f"{s['peak_memory_mib']:,.0f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=129)
    parser.add_argument("--arch", default="resnet50", help="model.arch of every stage")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch (the last epoch is measured)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--lr", type=float, help="optim.lr (default: the demo configs')")
    parser.add_argument("--views", type=int, default=2, help="precomputed views per sample")
    parser.add_argument("--precompute-parts", type=int, default=1, help="precompute processes at once")
    parser.add_argument("--shards", help="a synthetic split root with train/ and test/ (default: build one)")
    parser.add_argument("--json", help="write the results here, rewritten after each stage")
    parser.add_argument("--logs", help="directory for each run's console output")
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    logs = Path(args.logs) if args.logs else None
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)

    def done(results):
        print(table(results, args).splitlines()[-1], flush=True)  # each row as its stage ends
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))

    print("\n".join(table({}, args).splitlines()[:2]), flush=True)  # the header first
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        shards = Path(args.shards) if args.shards else tmp / "synth"
        if not args.shards:
            build_shards(shards, args)
        results = train_all(shards, tmp, args, logs, done)
    if args.record:
        record("Training through the engine", table(results, args), " ".join(["python bench/bench_train.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
