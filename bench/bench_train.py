"""Training throughput through the real engine: loader workers, step, optimiser, logging.

Unlike ``bench_models.py`` (model step alone, in-memory batches), this runs each stage
with ``launch/train_*.py`` on synthetic shards and reads back what the engine itself
logged to TensorBoard for the last epoch: samples/s, the share of step time spent
waiting for data (``train/data_wait_share``), and the process' peak memory
(``train/peak_memory_mib``: CUDA allocator peak on a GPU, peak RSS on a CPU). Stages:
baseline RGB, RGB-D teacher, student with the online teacher, and student on features
precomputed from that teacher (``depthpi precompute``). Each runs in its own process.
Epoch 1 is warm-up (worker start, first allocations); the figures are epoch 2's.

    python bench/bench_train.py --size 129 --width 0.125 --batch 16 --steps 20 --workers 2 [--record]
    # on a GPU node, e.g.:
    python bench/bench_train.py --size 257 --width 1 --batch 64 --steps 100 --workers 12 \
        --precision bf16 --channels-last --record
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo"
TAP = "block13.post_relu"


def scalars(run_dir: Path) -> dict[str, float]:
    """The last logged value of every scalar tag in a run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"]}


def run_stage(script: str, config: Path, out: Path, overrides: list[str]) -> dict[str, float]:
    cmd = [sys.executable, str(ROOT / "launch" / script), "--config", str(config), *overrides, f"run.out_dir={out}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return scalars(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=129)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch (2 epochs, the second measured)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--shards", help="a synthetic split root with train/ and test/ (default: build one)")
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        shards = Path(args.shards) if args.shards else tmp / "synth"
        if not args.shards:
            train_count = args.batch * args.steps
            subprocess.run(["depthpi", "shards", "build", "--source", "synthetic", "--out", str(shards),
                            "--train", str(train_count), "--test", str(args.batch), "--unlabeled", "0",
                            "--per-shard", str(max(args.batch, train_count // 8)),
                            "--workers", str(os.cpu_count() or 1)], check=True, capture_output=True)
        common = [f"data.train={shards / 'train'}", f"data.test={shards / 'test'}", "optim.epochs=2",
                  f"run.steps_per_epoch={args.steps}", f"data.batch_size={args.batch}",
                  f"data.eval_batch_size={args.batch}", f"data.num_workers={args.workers}",
                  f"data.pipeline.input_size={args.size}", f"model.width={args.width}", "model.init=none",
                  f"run.precision={args.precision}", f"run.channels_last={args.channels_last}",
                  f"run.log_every={10 ** 9}", f"run.checkpoint_every={10 ** 9}"]
        teacher_model = [f"teacher.model.width={args.width}"]
        results = {
            "baseline RGB": run_stage("train_baseline.py", DEMO / "baseline_rgb.yaml", tmp / "baseline", common),
            "teacher RGB-D": run_stage("train_teacher.py", DEMO / "teacher.yaml", tmp / "teacher",
                                       [*common, "model.depth_branch_checkpoint=null"]),
        }
        teacher = tmp / "teacher" / "export" / "last.pt"
        student = [*common, *teacher_model, f"teacher.weights={teacher}"]
        results["student, online teacher"] = run_stage("train_student.py", DEMO / "student.yaml", tmp / "online", student)
        subprocess.run(["depthpi", "precompute", "--teacher", str(teacher), "--shards", str(shards / "train"),
                        "--out", str(tmp / "features"), "--tap", TAP, "--views", "2"], check=True, capture_output=True)
        results["student, precomputed features"] = run_stage(
            "train_student.py", DEMO / "student.yaml", tmp / "stored",
            [*student, "teacher.mode=precomputed", f"teacher.features={tmp / 'features'}"])

    baseline_rate = results["baseline RGB"]["train/samples_per_s"]
    rows = [f"| stage ({args.size}×{args.size}, width {args.width}, batch {args.batch}, {args.workers} workers, "
            f"{args.precision}{', channels_last' if args.channels_last else ''}) | samples/s | step time vs "
            "baseline | data wait share | peak memory (MiB) |", "|---|---:|---:|---:|---:|"]
    for name, s in results.items():
        rate = s["train/samples_per_s"]
        rows.append(f"| {name} | {rate:,.1f} | {baseline_rate / rate:.2f}× | {s['train/data_wait_share']:.1%} | "
                    f"{s['train/peak_memory_mib']:,.0f} |")
    table = "\n".join(rows)
    print(table)
    if args.record:
        record("Training through the engine", table, " ".join(["python bench/bench_train.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
