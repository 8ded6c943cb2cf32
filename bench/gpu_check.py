"""The GPU check: every part of depthpi's GPU path measured in one command, one folder.

Run through ``bench/gpu_check.sh`` (which finds a Python with torch and installs carried
wheels). Each step is a separate process under its own timeout; a step that fails or runs
out of time is reported with the last lines of its log, and the next step runs. The whole
stays within ``--budget-s`` (8 minutes on one H100-class GPU, setup included): a step never
gets more than the time left. Output, in ``--out``:

- ``gpu_check.md``: the tables (steps, model step eager and compiled, engine, convergence
  smoke test, precompute, DeepSpeed, kill-and-resume) and the goals, each marked met or not;
- ``gpu_check.json``: every figure the tables show, and each step's status;
- ``logs/<step>.log`` (and ``logs/*.log`` of the runs inside a step), ``logs.tar.gz`` of them.

``--tiny`` runs the same steps on a CPU at toy scale (ResNet-50 at 1/16 width, 33×33 crops,
a few steps; DeepSpeed and the distributed runs through gloo; torch.compile with the eager
backend, which traces but does not generate code). ``--steps`` runs only the steps named
and those they need (the test suite: the model step, compile and precompute).

    bash bench/gpu_check.sh --out runs/gpu_check
    python bench/gpu_check.py --tiny --out /tmp/gpu_check
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
ACCELERATE = ROOT / "configs" / "accelerate"
TAIL_LINES = 15
FIRST_ERROR = re.compile(r"^(?:\[rank\d+\]: )?((?:\w+\.)*\w*(?:Error|Exception): .*)$", re.MULTILINE)
RESERVE_S = 15  # kept back from the budget: stopping a step that ran out of time, then the report


@dataclass(frozen=True)
class Scale:
    """What each step runs at. ``budgets``: seconds per step (its timeout), see GPU below."""

    width: float
    size: int
    max_batch: int            # model step: largest power of two tried
    model_steps: int          # model step: timed steps
    compile_backend: str      # torch.compile backend of the compiled model step
    engine_batch: int
    engine_steps: int         # per epoch; two epochs, the second measured
    workers: int              # loader workers (engine), = the machine's cores on a GPU
    train_samples: int
    test_samples: int
    per_shard: int
    precision: str            # run.precision of the engine and model steps
    precompute_batch: int     # teacher views per forward pass
    ds_batch: int
    ds_steps: int
    resume_batch: int
    resume_steps: int         # per epoch, two epochs
    resume_checkpoint_every: int
    resume_workers: int
    accelerate_config: str
    jobs: int                 # steps run at once (1 on a GPU: timings must not share the machine)
    budget_s: int             # the whole, setup included
    budgets: dict = field(default_factory=dict)


def gpu_scale(cores: int) -> Scale:
    """Full scale on one H100-class GPU, sized to stay within 8 minutes with setup."""
    return Scale(
        width=1.0, size=257, max_batch=256, model_steps=20, compile_backend="inductor",
        engine_batch=128, engine_steps=40, workers=cores, train_samples=128 * 40, test_samples=512, per_shard=128,
        precision="bf16", precompute_batch=128, ds_batch=32, ds_steps=5, resume_batch=16, resume_steps=8, resume_checkpoint_every=3,
        resume_workers=min(4, cores), accelerate_config="multi_gpu.yaml", jobs=1, budget_s=480,
        # Budget per step, seconds (the step's timeout; expected times in brackets). Setup in
        # gpu_check.sh (wheels, imports) takes ~20 of the 480.
        budgets={
            "env": 20,          # [5] versions, devices, nvidia-smi
            "shards": 45,       # [15] 5,632 synthetic samples at 257×257 on every core
            "models": 90,       # [60] 5 workloads × (CUDA start, batch search from 256, 20 timed steps)
            "engine": 150,      # [110] 5 stages × 2 epochs × 40 steps + precompute of the train split
            "precompute": 40,   # [15] 512 samples × 4 views through a full-width teacher
            "zero1": 40,        # [25] DeepSpeed start + 5 steps + eval + export
            "zero2": 40,        # [25]
            "resume": 75,       # [50] three launches of 16 steps (one killed)
            "compile": 150,     # [~40 per workload] whatever is left: runs last
        })


def tiny_scale(cores: int) -> Scale:
    """Toy scale on a CPU: every step runs, in about a minute and a half on 2 cores."""
    return Scale(
        width=0.0625, size=33, max_batch=4, model_steps=2, compile_backend="eager",
        engine_batch=4, engine_steps=3, workers=0, train_samples=12, test_samples=4, per_shard=2,
        precision="fp32", precompute_batch=8, ds_batch=4, ds_steps=2, resume_batch=2, resume_steps=5, resume_checkpoint_every=2,
        resume_workers=0, accelerate_config="cpu_2proc.yaml", jobs=min(2, cores), budget_s=900,
        budgets={"env": 60, "shards": 120, "models": 180, "engine": 300, "precompute": 120, "zero1": 180,
                 "zero2": 180, "resume": 300, "compile": 180})


@dataclass
class Context:
    """What the steps share: the scale, folders, the budget's deadline, the results so far."""

    scale: Scale
    out: Path
    work: Path
    logs: Path
    deadline: float
    env: dict                 # the steps' environment
    tiny: bool
    results: dict = field(default_factory=dict)

    def json_of(self, step: str):
        path = self.work / f"{step}.json"
        return json.loads(path.read_text()) if path.is_file() else None


@dataclass(frozen=True)
class Step:
    """One step: the command it runs, what it needs first, and how its result is read.

    ``skip(ctx)`` returns a reason to skip (or None); ``collect(ctx, log)`` returns the
    step's figures and raises ``StepFailed`` when its output shows a failure.
    """

    name: str
    title: str
    command: Callable[[Context], list[str]]
    needs: tuple[str, ...] = ()
    skip: Callable[[Context], str | None] = lambda ctx: None
    collect: Callable[[Context, str], object] = lambda ctx, log: None


class StepFailed(Exception):
    """A step's output shows it failed; ``data``: what it did measure."""

    def __init__(self, message: str, data=None):
        super().__init__(message)
        self.data = data


# --- the steps -------------------------------------------------------------------------
ENV_PROBE = r"""
import importlib, json, os, platform, subprocess, sys
import torch
info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "gpus": torch.cuda.device_count(), "cores": os.cpu_count(),
        "platform": platform.platform()}
if torch.cuda.is_available():
    info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    probes = {"capability": lambda: list(torch.cuda.get_device_capability(0)),
              "memory_gib": lambda: torch.cuda.get_device_properties(0).total_memory / 2**30,
              "bf16": torch.cuda.is_bf16_supported, "cudnn": torch.backends.cudnn.version,
              "nccl": lambda: str(torch.cuda.nccl.version())}
    for key, probe in probes.items():
        try:
            info[key] = probe()
        except Exception as err:
            info[key] = f"{type(err).__name__}: {err}"
for name in ("accelerate", "deepspeed", "webdataset", "omegaconf", "tensorboard", "numpy", "cv2", "triton"):
    try:
        info[name] = getattr(importlib.import_module(name), "__version__", "present")
    except Exception as err:
        info[name] = None
        info[name + "_error"] = f"{type(err).__name__}: {err}"
try:
    info["nvidia_smi"] = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
except Exception as err:
    info["nvidia_smi"] = f"not available: {err}"
open(sys.argv[1], "w").write(json.dumps(info, indent=1))
print(json.dumps({k: v for k, v in info.items() if k != "nvidia_smi"}, indent=1))
print(info["nvidia_smi"])
"""


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _python(*args) -> list[str]:
    return [sys.executable, *map(str, args)]


def env_command(ctx: Context) -> list[str]:
    return _python("-c", ENV_PROBE, ctx.work / "env.json")


def collect_env(ctx: Context, log: str) -> dict:
    info = ctx.json_of("env")
    if info is None:
        raise StepFailed("the probe wrote no env.json")
    if not ctx.tiny and not info["cuda_available"]:
        raise StepFailed("torch sees no CUDA device: the full check needs a GPU (or run --tiny)")
    return info


def shards_command(ctx: Context) -> list[str]:
    s = ctx.scale
    return _python("-m", "depthpi.cli", "shards", "build", "--source", "synthetic", "--out", ctx.work / "synth",
                   "--train", s.train_samples, "--test", s.test_samples, "--unlabeled", 0,
                   "--per-shard", s.per_shard, "--workers", available_cores())


def collect_shards(ctx: Context, log: str) -> dict:
    counts = {}
    for split in ("train", "test"):
        manifest = ctx.work / "synth" / split / "manifest.json"
        if not manifest.is_file():
            raise StepFailed(f"{manifest} was not written")
        counts[split] = json.loads(manifest.read_text())["total_count"]
    return counts


def models_command(ctx: Context, compiled: bool = False) -> list[str]:
    s = ctx.scale
    cmd = _python(BENCH / "bench_models.py", "--width", s.width, "--size", s.size, "--steps", s.model_steps,
                  "--json", ctx.work / ("compile.json" if compiled else "models.json"))
    if s.precision == "bf16":
        cmd += ["--bf16", "--channels-last"]
    if not compiled:
        return cmd + ["--max-batch", s.max_batch]
    eager = {row["workload"]: row["batch"] for row in ctx.json_of("models") or []}
    order = ["student-online", "student-stored", "baseline-rgb", "teacher", "baseline-depth"]  # by importance
    cmd += ["--compile", "--compile-backend", s.compile_backend, "--workloads", *order, "--max-batch", s.max_batch]
    return cmd + (["--batches", *(f"{w}={b}" for w, b in eager.items())] if eager else [])


def collect_rows(name: str, expected: int | None = None):
    def collect(ctx: Context, log: str) -> list[dict]:
        rows = ctx.json_of(name) or []
        if expected is not None and len(rows) < expected:
            raise StepFailed(f"{len(rows)} of {expected} workloads measured", rows)
        return rows
    return collect


def engine_command(ctx: Context) -> list[str]:
    s = ctx.scale
    cmd = _python(BENCH / "bench_train.py", "--shards", ctx.work / "synth", "--size", s.size, "--width", s.width,
                  "--batch", s.engine_batch, "--steps", s.engine_steps, "--epochs", 2, "--workers", s.workers,
                  "--precision", s.precision, "--precompute-parts", max(1, min(8, s.workers)), "--views", 2,
                  "--json", ctx.work / "engine.json", "--logs", ctx.logs / "engine")
    return cmd + (["--channels-last"] if s.precision == "bf16" else [])


def collect_engine(ctx: Context, log: str) -> dict:
    results = ctx.json_of("engine") or {}
    if len(results) < 5:
        raise StepFailed(f"{len(results)} of 5 stages trained", results)
    return results


def precompute_command(ctx: Context) -> list[str]:
    s = ctx.scale
    return _python(BENCH / "bench_precompute.py", "--shards", ctx.work / "synth" / "test", "--views", 4,
                   "--size", s.size, "--width", s.width, "--batch", s.precompute_batch,
                   "--json", ctx.work / "precompute.json")


def collect_json(name: str):
    def collect(ctx: Context, log: str):
        data = ctx.json_of(name)
        if data is None:
            raise StepFailed(f"no {name}.json written")
        return data
    return collect


def _launch(ctx: Context, processes: int) -> list[str]:
    return _python("-m", "accelerate.commands.launch", "--config_file", ACCELERATE / ctx.scale.accelerate_config,
                   "--num_processes", processes, "--main_process_port", 0)


def zero_command(stage: int):
    def command(ctx: Context) -> list[str]:
        s = ctx.scale
        shards = ctx.work / "synth"
        return _launch(ctx, 1) + [
            str(ROOT / "launch" / "train_baseline.py"), "--config", str(ROOT / "configs" / "demo" / "baseline_rgb.yaml"),
            f"data.train={shards / 'train'}", f"data.test={shards / 'test'}", f"run.out_dir={ctx.work / f'zero{stage}'}",
            "model.arch=resnet50", f"model.width={s.width}", "model.init=none", f"data.pipeline.input_size={s.size}",
            f"data.batch_size={s.ds_batch}", f"data.eval_batch_size={s.ds_batch}", f"data.num_workers={s.resume_workers}",
            "optim.epochs=1", f"run.steps_per_epoch={s.ds_steps}", "run.log_every=1", "run.precision=auto",
            f"run.deepspeed.zero_stage={stage}"]
    return command


def skip_without_deepspeed(ctx: Context) -> str | None:
    env = ctx.results.get("env", {}).get("data") or {}
    if env and not env.get("deepspeed"):
        return ("deepspeed does not import here (" + str(env.get("deepspeed_error")) + "); install the extra "
                "(pip install -e '.[deepspeed]') or carry its wheel (bench/gpu_wheels.sh)")
    return None


def collect_zero(stage: int):
    def collect(ctx: Context, log: str) -> dict:
        if f"DeepSpeed ZeRO-{stage}" not in log:
            raise StepFailed(f"the run's log does not say 'DeepSpeed ZeRO-{stage}'")
        run = ctx.work / f"zero{stage}"
        if not (run / "export" / "last.pt").is_file():
            raise StepFailed(f"{run}/export/last.pt was not written")
        metrics = json.loads((run / "metrics.json").read_text())
        precision = re.search(r"mixed precision (\w+)", log)
        return {"zero_stage": stage, "steps": ctx.scale.ds_steps, "batch": ctx.scale.ds_batch,
                "mixed_precision": precision and precision.group(1), "mpjpe": metrics["mpjpe"]}
    return collect


def resume_command(ctx: Context) -> list[str]:
    s = ctx.scale
    gpus = (ctx.results.get("env", {}).get("data") or {}).get("gpus", 0)
    return _python(BENCH / "bench_resume.py", "--shards", ctx.work / "synth",
                   "--processes", 2 if gpus >= 2 else 1, "--accelerate-config", ACCELERATE / s.accelerate_config,
                   "--width", s.width, "--size", s.size, "--batch", s.resume_batch, "--workers", s.resume_workers,
                   "--steps", s.resume_steps, "--checkpoint-every", s.resume_checkpoint_every,
                   "--work", ctx.work / "resume", "--logs", ctx.logs / "resume", "--json", ctx.work / "resume.json")


def collect_resume(ctx: Context, log: str) -> dict:
    report = ctx.json_of("resume")
    if report is None:
        raise StepFailed("no report written")
    expected = "gloo" if ctx.tiny else "nccl"
    if report["backend"] != expected:
        raise StepFailed(f"process group backend {report['backend']!r}, expected {expected!r}", report)
    if not (report["bit_exact"] and report["resumed"]):
        raise StepFailed("the resumed run's weights differ from the uninterrupted run's", report)
    return report


STEPS = [
    Step("env", "environment: Python, torch, CUDA, devices, packages", env_command, collect=collect_env),
    Step("shards", "synthetic shards (train + test) on every core", shards_command, needs=("env",),
         collect=collect_shards),
    Step("models", "model step of 5 stages, largest batch ≤ max (bf16 + channels_last on a GPU)", models_command,
         needs=("env",), collect=collect_rows("models", 5)),
    Step("engine", "5 stages through the engine and loaders (2 epochs from scratch)", engine_command,
         needs=("env", "shards"), collect=collect_engine),
    Step("precompute", "precompute: teacher features of the test split, K=4", precompute_command,
         needs=("env", "shards"), collect=collect_json("precompute")),
    Step("zero1", "DeepSpeed ZeRO-1 through accelerate launch", zero_command(1), needs=("env", "shards"),
         skip=skip_without_deepspeed, collect=collect_zero(1)),
    Step("zero2", "DeepSpeed ZeRO-2 through accelerate launch", zero_command(2), needs=("env", "shards"),
         skip=skip_without_deepspeed, collect=collect_zero(2)),
    Step("resume", "checkpoint, kill, resume through accelerate launch; bit-exact vs uninterrupted",
         resume_command, needs=("env", "shards"), collect=collect_resume),
    Step("compile", "model step with torch.compile (batch of the eager step)", lambda ctx: models_command(ctx, True),
         needs=("env",), collect=collect_rows("compile", 5)),
]


# --- running a step ----------------------------------------------------------------------
def run_step(step: Step, ctx: Context, waits: dict[str, concurrent.futures.Future]) -> dict:
    """Run one step (after those it needs) under its timeout; its result record."""
    for need in step.needs:
        waits[need].result()
    failed = [n for n in step.needs if ctx.results[n]["status"] != "ok"]
    if failed:
        return _skipped(step, ctx, f"needs step {', '.join(failed)}, which did not succeed")
    reason = step.skip(ctx)
    if reason:
        return _skipped(step, ctx, reason)
    budget = ctx.scale.budgets[step.name]
    timeout = min(budget, ctx.deadline - time.time() - RESERVE_S)
    if timeout < 5:
        return _skipped(step, ctx, f"no time left in the {ctx.scale.budget_s} s budget")
    log_path = ctx.logs / f"{step.name}.log"
    started = time.time()
    status, returncode = _run_logged(step.command(ctx), log_path, timeout, ctx.env)
    record = {"status": status, "seconds": round(time.time() - started, 1), "budget_s": budget,
              "timeout_s": round(timeout, 1), "returncode": returncode, "log": str(log_path.relative_to(ctx.out)),
              "data": None}
    problems = {"timed out": [f"ran past its {timeout:.0f} s timeout"], "failed": [f"exit status {returncode}"]}.get(
        status, [])
    log = log_path.read_text(errors="replace")
    try:  # also after a failure: what the step did measure is kept
        record["data"] = step.collect(ctx, log)
    except StepFailed as err:
        problems.append(str(err))
        record["data"] = err.data
    except (OSError, ValueError, KeyError, TypeError) as err:
        problems.append(f"its output could not be read: {type(err).__name__}: {err}")
    if problems and status == "ok":
        record["status"] = "failed"
    record["note"] = "; ".join(problems)
    if record["status"] != "ok":
        record["tail"] = log.splitlines()[-TAIL_LINES:]
        error = FIRST_ERROR.search(log)
        if error and status != "ok":  # the cause, often far above a launcher's closing summary
            record["note"] += f"; first error: {error.group(1)[:300]}"
    return record


def _skipped(step: Step, ctx: Context, reason: str) -> dict:
    return {"status": "skipped", "seconds": 0.0, "budget_s": ctx.scale.budgets[step.name], "note": reason,
            "data": None}


def _run_logged(cmd: list[str], log_path: Path, timeout: float, env: dict) -> tuple[str, int | None]:
    """Run ``cmd`` in its own process group, output to ``log_path``; on timeout the whole
    group (launchers and their ranks too) is stopped."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        log.write("$ " + " ".join(map(str, cmd))[:4000] + "\n")
        log.flush()
        process = subprocess.Popen(list(map(str, cmd)), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop_group(process)
            return "timed out", None
    return ("ok" if code == 0 else "failed"), code


def _stop_group(process: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def selected_steps(names: list[str] | None) -> list[Step]:
    """The steps named (all where None) and the steps they need, in list order."""
    wanted = set(names or [s.name for s in STEPS])
    for step in reversed(STEPS):  # a step's needs come before it in the list
        if step.name in wanted:
            wanted.update(step.needs)
    return [s for s in STEPS if s.name in wanted]


def run_all(ctx: Context, names: list[str] | None = None) -> None:
    """Run the steps ``names`` (all where None) and those they need; the others are "not run"."""
    lock = threading.Lock()
    with concurrent.futures.ThreadPoolExecutor(max_workers=ctx.scale.jobs) as pool:
        waits: dict[str, concurrent.futures.Future] = {}
        for step in selected_steps(names):  # in list order: a step's needs are submitted (and started) before it
            def task(step=step):
                try:
                    record = run_step(step, ctx, waits)
                except Exception as err:  # a bug in this driver must not hide the other steps
                    record = {"status": "failed", "seconds": 0.0, "budget_s": ctx.scale.budgets[step.name],
                              "note": f"gpu_check error: {type(err).__name__}: {err}", "data": None}
                with lock:
                    ctx.results[step.name] = record
                print(f"[gpu_check] {step.name}: {record['status']} in {record['seconds']:.0f} s"
                      f"{' — ' + record['note'] if record['note'] else ''}", flush=True)
            waits[step.name] = pool.submit(task)
        for future in waits.values():
            future.result()


# --- the report ---------------------------------------------------------------------------
GOAL_STUDENT, GOAL_TEACHER, GOAL_WAIT, GOAL_RATIO = 2500.0, 1800.0, 0.05, 1.35


def _data(ctx_results: dict, step: str):
    return (ctx_results.get(step) or {}).get("data")


def goals(results: dict) -> list[dict]:
    """Each goal against each place it was measured: {goal, where, value, unit, met}."""
    rows = []

    def add(goal, where, value, unit, met):
        if value is not None:
            rows.append({"goal": goal, "where": where, "value": value, "unit": unit, "met": bool(met)})

    for step, label in (("models", "model step, eager"), ("compile", "model step, compiled")):
        by = {r["workload"]: r for r in _data(results, step) or []}
        for workload, goal in (("student-online", GOAL_STUDENT), ("student-stored", GOAL_STUDENT),
                               ("teacher", GOAL_TEACHER)):
            if workload in by:
                rate = by[workload]["rate"]
                add(f"{workload} ≥ {goal:,.0f} samples/s", label, rate, "samples/s", rate >= goal)
        if "student-online" in by and "baseline-rgb" in by:
            ratio = by["baseline-rgb"]["rate"] / by["student-online"]["rate"]  # per-sample step time
            add(f"online student step ≤ {GOAL_RATIO}× the baseline step", label, ratio, "×", ratio <= GOAL_RATIO)
    engine = {stage: _steady(figures) for stage, figures in (_data(results, "engine") or {}).items()}
    for stage, goal in (("student, online teacher", GOAL_STUDENT), ("student, precomputed features", GOAL_STUDENT),
                        ("teacher RGB-D", GOAL_TEACHER)):
        if stage in engine:
            rate = engine[stage][0]
            add(f"{stage} ≥ {goal:,.0f} samples/s", "engine (steady)", rate, "samples/s", rate >= goal)
    if "student, online teacher" in engine and "baseline RGB" in engine:
        ratio = engine["baseline RGB"][0] / engine["student, online teacher"][0]
        add(f"online student step ≤ {GOAL_RATIO}× the baseline step", "engine (steady)", ratio, "×",
            ratio <= GOAL_RATIO)
    for stage, (_, share) in engine.items():
        add(f"data wait < {GOAL_WAIT:.0%}", f"engine (steady), {stage}", share, "share", share < GOAL_WAIT)
    return rows


def _steady(figures: dict) -> tuple[float, float]:
    """(samples/s, data-wait share) of an engine run without its epoch's start-up, or of the
    whole epoch where the run logged too rarely to tell."""
    if figures.get("steady_samples_per_s"):
        return figures["steady_samples_per_s"], figures["steady_data_wait_share"]
    return figures["samples_per_s"], figures["data_wait_share"]


def _fmt(value, unit=""):
    if value is None:
        return "–"
    if unit == "share":
        return f"{value:.1%}"
    if unit == "×":
        return f"{value:.2f}×"
    return f"{value:,.1f}"


def report_markdown(doc: dict) -> str:
    r, env = doc["steps"], doc["environment"] or {}
    devices = ", ".join(env.get("devices") or []) or "no GPU"
    lines = [f"# GPU check — {doc['date']}", "",
             f"Mode: {'tiny (CPU, toy scale: the figures only show the check runs)' if doc['tiny'] else 'full'}. "
             f"Machine: {devices}, {env.get('cores')} cores, Python {env.get('python')}, torch {env.get('torch')}, "
             f"CUDA {env.get('cuda')}, accelerate {env.get('accelerate')}, deepspeed {env.get('deepspeed')}.  ",
             f"Command: `{doc['command']}`; {doc['elapsed_s']:.0f} s of the {doc['budget_s']} s budget "
             f"(setup included).", "", "## Steps", "",
             "| step | what | status | seconds | budget s | note |", "|---|---|---|---:|---:|---|"]
    for step in STEPS:
        rec = r.get(step.name) or {}
        lines.append(f"| {step.name} | {step.title} | {rec.get('status', 'not run')} | {rec.get('seconds', 0):.0f} | "
                     f"{rec.get('budget_s', '')} | {str(rec.get('note', '')).replace('|', '/')[:300]} |")
    lines += _goal_table(doc["goals"]) + _model_table(r) + _engine_tables(r) + _precompute_table(r)
    lines += _zero_table(r) + _resume_table(r) + _tails(r)
    return "\n".join(lines) + "\n"


def _goal_table(rows: list[dict]) -> list[str]:
    lines = ["", "## Goals", "", "| goal | measured in | figure | met? |", "|---|---|---:|---|"]
    lines += [f"| {g['goal']} | {g['where']} | {_fmt(g['value'], g['unit'])} | {'yes' if g['met'] else 'no'} |"
              for g in rows]
    return lines if rows else lines + ["| (no figures) | | | |"]


def _model_table(r: dict) -> list[str]:
    eager = {row["workload"]: row for row in _data(r, "models") or []}
    compiled = {row["workload"]: row for row in _data(r, "compile") or []}
    if not eager and not compiled:
        return []
    any_row = next(iter({**compiled, **eager}.values()))
    lines = ["", f"## Model step (`bench/bench_models.py`): ResNet-50 width {any_row['width']}, "
             f"{any_row['size']}×{any_row['size']}{', bf16' if any_row['bf16'] else ''}"
             f"{', channels_last' if any_row['channels_last'] else ''}", "",
             "| workload | config | batch | eager samples/s | eager peak MiB | compiled batch | compiled samples/s | "
             "compiled peak MiB | compile warm-up s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in {**eager, **compiled}:
        e, c = eager.get(name, {}), compiled.get(name, {})
        lines.append(f"| {name} | {(e or c)['config']} | {e.get('batch', '–')} | {_fmt(e.get('rate'))} | "
                     f"{_fmt(e.get('peak_mib'))} | {c.get('batch', '–')} | {_fmt(c.get('rate'))} | "
                     f"{_fmt(c.get('peak_mib'))} | {_fmt(c.get('warmup_s'))} |")
    return lines


def _engine_tables(r: dict) -> list[str]:
    engine = _data(r, "engine") or {}
    if not engine:
        return []
    base = engine.get("baseline RGB", {}).get("samples_per_s")
    lines = ["", "## Through the engine (`bench/bench_train.py`, real loaders; figures of the second epoch; "
             "steady: without its first batch, the workers' start-up)", "",
             "| stage | samples/s | step time vs baseline | data wait share | steady samples/s | steady data wait | "
             "peak memory MiB |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in engine.items():
        ratio = base / s["samples_per_s"] if base else None
        lines.append(f"| {name} | {_fmt(s['samples_per_s'])} | {_fmt(ratio, '×')} | "
                     f"{_fmt(s['data_wait_share'], 'share')} | {_fmt(s.get('steady_samples_per_s'))} | "
                     f"{_fmt(s.get('steady_data_wait_share'), 'share')} | {_fmt(s['peak_memory_mib'])} |")
    lines += ["", "## Convergence smoke test (the same runs: two epochs from scratch, then evaluated)", "",
              "| stage | train loss, epoch 1 → 2 | eval MPJPE mm | mean-pose MPJPE mm | PCK |",
              "|---|---|---:|---:|---:|"]
    for name, s in engine.items():
        loss = " → ".join(f"{v:.3f}" for v in s["train_loss"])
        lines.append(f"| {name} | {loss} | {_fmt(s['mpjpe'])} | {_fmt(s['mean_pose_mpjpe'])} | {s['pck']:.3f} |")
    return lines


def _precompute_table(r: dict) -> list[str]:
    p = _data(r, "precompute")
    if not p:
        return []
    return ["", f"## Precompute (`bench/bench_precompute.py`, one process, {p['device']})", "",
            "| samples | views | source samples/s | teacher views/s | feature bytes written | KiB per sample |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {p['samples']} | {p['views']} | {_fmt(p['samples_per_s'])} | {_fmt(p['views_per_s'])} | "
            f"{_fmt(p['bytes_per_s'] / 2**20)} MiB/s | {_fmt(p['bytes_per_sample'] / 1024)} |"]


def _zero_table(r: dict) -> list[str]:
    lines = ["", "## DeepSpeed (one process, `run.deepspeed.zero_stage`, `run.precision: auto`)", "",
             "| step | status | mixed precision | steps × batch | eval MPJPE mm |", "|---|---|---|---|---:|"]
    for name in ("zero1", "zero2"):
        rec = r.get(name) or {}
        d = rec.get("data") or {}
        lines.append(f"| {name} | {rec.get('status', 'not run')} | {d.get('mixed_precision', '–')} | "
                     f"{d.get('steps', '–')} × {d.get('batch', '–')} | {_fmt(d.get('mpjpe'))} |")
    return lines


def _resume_table(r: dict) -> list[str]:
    d = _data(r, "resume")
    if not d:
        return []
    return ["", "## Kill and resume (`bench/bench_resume.py`)", "",
            "| backend | world size | checkpoints left by the kill | resumed | bit-exact | tensors differing | "
            "max abs difference |", "|---|---:|---|---|---|---:|---:|",
            f"| {d['backend']} | {d['world_size']} | {d['checkpoints_at_kill']} | {d['resumed']} | "
            f"{'yes' if d['bit_exact'] else 'no'} | {d.get('differing_count', '–')} of {d['tensors']} | "
            f"{d['max_abs_diff']} |"]


def _tails(r: dict) -> list[str]:
    lines = []
    for name, rec in r.items():
        if rec.get("tail"):
            lines += ["", f"### {name}: {rec['status']}, last lines of `{rec['log']}`", "", "```",
                      *[line[:300] for line in rec["tail"]], "```"]
    return ["", "## Logs of the steps that did not succeed"] + lines if lines else []


def write_outputs(ctx: Context, started: float, command: str) -> dict:
    doc = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "tiny": ctx.tiny, "command": command,
           "budget_s": ctx.scale.budget_s, "elapsed_s": round(time.time() - started, 1),
           "environment": _data(ctx.results, "env"),
           "steps": {s.name: ctx.results.get(s.name, {"status": "not run"}) for s in STEPS},
           "goals": goals(ctx.results)}
    (ctx.out / "gpu_check.json").write_text(json.dumps(doc, indent=1))
    (ctx.out / "gpu_check.md").write_text(report_markdown(doc))
    with tarfile.open(ctx.out / "logs.tar.gz", "w:gz") as tar:
        tar.add(ctx.logs, arcname="logs")
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/gpu_check", help="output folder")
    parser.add_argument("--tiny", action="store_true", help="toy scale on a CPU (the test suite's run)")
    parser.add_argument("--budget-s", type=int, help="the whole run's seconds (default: 480 full, 900 tiny)")
    parser.add_argument("--keep-work", action="store_true", help="keep shards and runs in OUT/work")
    parser.add_argument("--steps", nargs="+", choices=[s.name for s in STEPS], metavar="STEP",
                        help="run only these steps and those they need (default: all): "
                             + ", ".join(s.name for s in STEPS))
    args = parser.parse_args()
    started = float(os.environ.get("GPU_CHECK_STARTED", time.time()))  # gpu_check.sh's start: setup counts
    cores = available_cores()
    scale = tiny_scale(cores) if args.tiny else gpu_scale(cores)
    if args.budget_s:
        scale = replace(scale, budget_s=args.budget_s)
    out = Path(args.out).resolve()
    logs = out / "logs"
    if logs.exists():
        shutil.rmtree(logs)
    logs.mkdir(parents=True)
    work = out / "work" if args.keep_work else Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.tiny:  # steps run two at a time on a small CPU: one thread each
        env.setdefault("OMP_NUM_THREADS", "1")
    ctx = Context(scale, out, work, logs, started + scale.budget_s, env, args.tiny)
    try:
        run_all(ctx, args.steps)
    finally:
        doc = write_outputs(ctx, started, " ".join(["bench/gpu_check.sh", *sys.argv[1:]]))
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    print((out / "gpu_check.md").read_text())
    print(f"[gpu_check] {out / 'gpu_check.md'}, {out / 'gpu_check.json'}, {out / 'logs.tar.gz'}; "
          f"{doc['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
