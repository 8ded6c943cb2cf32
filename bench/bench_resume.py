"""Kill-and-resume exactness through ``accelerate launch``: does a run killed mid-epoch and
restarted end with the parameters of a run that was never interrupted, bit for bit?

Three launches of the RGB baseline (``bench/deterministic_train.py``, deterministic kernels)
on a synthetic split: an uninterrupted run; the same run killed (SIGKILL to the launcher
and every rank) once a checkpoint inside its last epoch exists; and that run restarted,
which resumes from its newest checkpoint. The exported weights of the first and the
third are compared tensor by tensor. On a GPU the ranks use NCCL (one rank per GPU); on a
CPU, gloo. Prints a JSON report and exits with status 1 when the weights differ.

    python bench/bench_resume.py --shards shards/synth --processes 1 --width 1 --size 257 --batch 16
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from depthpi.train.checkpoint import checkpoint_dirs
from depthpi.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
BACKEND_LINE = re.compile(r"deterministic_train: process group backend (\w+), world size (\d+)")


def launch_cmd(args, run_dir: Path) -> list[str]:
    overrides = [f"data.train={Path(args.shards) / 'train'}", f"data.test={Path(args.shards) / 'test'}",
                 f"run.out_dir={run_dir}", f"model.arch={args.arch}", f"model.width={args.width}", "model.init=none",
                 f"data.pipeline.input_size={args.size}", f"data.batch_size={args.batch}",
                 f"data.eval_batch_size={args.batch}", f"data.num_workers={args.workers}",
                 f"optim.epochs={args.epochs}", f"run.steps_per_epoch={args.steps}",
                 f"run.checkpoint_every={args.checkpoint_every}", "run.log_every=1", f"run.precision={args.precision}"]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", args.accelerate_config,
            "--num_processes", str(args.processes), "--main_process_port", "0",
            str(ROOT / "bench" / "deterministic_train.py"), "baseline", "--config",
            str(ROOT / "configs" / "demo" / "baseline_rgb.yaml"), *overrides]


def run_to_end(args, run_dir: Path, log: Path) -> tuple[str, float]:
    """One launch to its end; (its console output, seconds). Raises on a failed launch."""
    start = time.perf_counter()
    result = subprocess.run(launch_cmd(args, run_dir), capture_output=True, text=True, timeout=args.launch_timeout)
    output = result.stdout + result.stderr
    log.write_text(output)
    if result.returncode:
        raise SystemExit(f"launch into {run_dir} failed (status {result.returncode}):\n{output[-3000:]}")
    return output, time.perf_counter() - start


def kill_inside_last_epoch(args, run_dir: Path, log: Path) -> list[int]:
    """Launch, SIGKILL every process of the launch once a checkpoint inside the last epoch
    exists; the checkpoint steps left behind."""
    total = args.epochs * args.steps
    kill_at = (args.steps * (args.epochs - 1) // args.checkpoint_every + 1) * args.checkpoint_every
    if kill_at >= total:
        raise SystemExit(f"--checkpoint-every {args.checkpoint_every} leaves no checkpoint inside the last epoch "
                         f"(steps {args.steps * (args.epochs - 1) + 1}..{total})")
    with log.open("w") as out:
        process = subprocess.Popen(launch_cmd(args, run_dir), stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            deadline = time.time() + args.launch_timeout
            while time.time() < deadline and process.poll() is None and not any(
                    int(p.name[5:]) >= kill_at for p in checkpoint_dirs(run_dir)):
                time.sleep(0.02)
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the launcher and every rank
            except ProcessLookupError:  # it had ended by itself
                pass
            process.wait()
    steps = [int(p.name[5:]) for p in checkpoint_dirs(run_dir)]
    if not steps or max(steps) >= total:
        raise SystemExit(f"the kill came too late or never found its checkpoint (step {kill_at}): checkpoints "
                         f"{steps} of a {total}-step run")
    return steps


def compare(whole: Path, resumed: Path) -> dict:
    """Tensor-by-tensor comparison of two runs' exported weights."""
    a, b = load_weights(whole / "export" / "last.pt"), load_weights(resumed / "export" / "last.pt")
    if a.keys() != b.keys():
        return {"bit_exact": False, "tensors": len(a), "differing": sorted(a.keys() ^ b.keys())[:5],
                "max_abs_diff": None}
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    diffs = [(a[k].double() - b[k].double()).abs().max().item() for k in differing if a[k].is_floating_point()]
    return {"bit_exact": not differing, "tensors": len(a), "differing_count": len(differing),
            "differing": differing[:5], "max_abs_diff": max(diffs, default=0.0)}


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, help="split root with train/ and test/")
    parser.add_argument("--processes", type=int, default=max(1, torch.cuda.device_count()))
    parser.add_argument("--accelerate-config", default=str(
        ROOT / "configs" / "accelerate" / ("multi_gpu.yaml" if cuda else "cpu_2proc.yaml")))
    parser.add_argument("--arch", default="resnet50", help="model.arch")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--size", type=int, default=65)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="steps per epoch")
    parser.add_argument("--checkpoint-every", type=int, default=3)
    parser.add_argument("--launch-timeout", type=float, default=600, help="seconds for one launch")
    parser.add_argument("--work", help="directory for the three runs (default: a temporary one)")
    parser.add_argument("--logs", help="directory for the three launches' console output (default: --work)")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args()
    # a SIGTERM (a step timeout) unwinds through kill_inside_last_epoch, which kills its launch
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        logs = Path(args.logs or work)
        for directory in (work, logs):
            directory.mkdir(parents=True, exist_ok=True)
        whole_output, whole_s = run_to_end(args, work / "whole", logs / "resume-whole.log")
        left = kill_inside_last_epoch(args, work / "killed", logs / "resume-killed.log")
        resumed_output, resumed_s = run_to_end(args, work / "killed", logs / "resume-resumed.log")
        backend = BACKEND_LINE.search(whole_output)
        report = {"processes": args.processes, "backend": backend and backend.group(1),
                  "world_size": backend and int(backend.group(2)), "whole_s": whole_s, "resumed_s": resumed_s,
                  "checkpoints_at_kill": left, "resumed": "resumed from" in resumed_output,
                  **compare(work / "whole", work / "killed")}
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if not (report["bit_exact"] and report["resumed"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
