"""Submitting a sweep with submitit: one SLURM job array per stage, or the same plan locally.

Inside a job, :class:`TrainJob` sets the ``env://`` rendezvous variables from SLURM's
environment (submitit's ``TorchDistributedEnvironment``: MASTER_ADDR = first host of
SLURM_JOB_NODELIST, MASTER_PORT derived from the job id, RANK / WORLD_SIZE / LOCAL_RANK /
LOCAL_WORLD_SIZE from the task ids) and calls ``train(cfg)``; that is all it sets. The
run config alone chooses precision and DeepSpeed (``run.precision``, ``run.deepspeed``),
as it does for a run started by hand, and SLURM the process layout.
On preemption or time-out SLURM sends the preemption signal ``signal_delay_s`` early;
:class:`TrainJob` takes it from submitit, lets the engine save a checkpoint at its next log
point, then hands it back: submitit calls ``checkpoint()``, which requeues the same job,
and the engine resumes from that checkpoint.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shlex
import socket
import sys
import time
from pathlib import Path

import submitit

from depthpi.io import atomic_write_text
from depthpi.log import configure_logging
from depthpi.sweep.spec import Element, Stage, Sweep

log = logging.getLogger(__name__)

ELEMENT_FILE = "sweep_element.json"
PLAN_FILE = "sweep.json"


def write_json(path: str | Path, data: dict) -> None:
    """Write JSON atomically (temp file in the same directory + rename)."""
    atomic_write_text(path, json.dumps(data, indent=1, default=str))


def read_json(path: str | Path) -> dict | None:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def record_start(element: Element, job_env) -> dict:
    """Count this attempt in ``<run_dir>/sweep_element.json`` (atomically); returns the record."""
    path = Path(element.run_dir) / ELEMENT_FILE
    record = read_json(path) or {**element.to_dict(), "attempts": 0, "job_ids": [], "history": []}
    record["attempts"] += 1
    if job_env.job_id not in record["job_ids"]:
        record["job_ids"].append(job_env.job_id)
    paths = job_env.paths
    record["history"].append({"attempt": record["attempts"], "job_id": job_env.job_id, "host": socket.gethostname(),
                              "started": _now(), "stdout": str(paths.stdout), "stderr": str(paths.stderr)})
    record.update(state="running", log=str(paths.stdout), error_log=str(paths.stderr))
    record.pop("error", None)
    write_json(path, record)
    return record


def record_end(element: Element, state: str, **extra) -> None:
    """Mark the element ``done`` or ``failed`` (with metrics or the error)."""
    path = Path(element.run_dir) / ELEMENT_FILE
    record = read_json(path) or element.to_dict()
    record.update(state=state, finished=_now(), **extra)
    write_json(path, record)


def export_rendezvous(job_env) -> dict[str, str]:
    """torch.distributed ``env://`` variables of this task, from the job's environment.

    MASTER_ADDR is the first node of SLURM_JOB_NODELIST (loopback for the local executor);
    MASTER_PORT is derived from the job id, so the tasks of one job agree and array
    siblings on the same node do not collide; RANK/WORLD_SIZE/LOCAL_RANK are the task ids.
    CUDA_VISIBLE_DEVICES is left alone: each task selects ``cuda:LOCAL_RANK``.
    """
    # sbatch passes the submitting shell's environment on: a MASTER_PORT exported there would
    # be shared by every element of the array on a node. The port always comes from the job id.
    os.environ.pop("MASTER_PORT", None)
    dist = submitit.helpers.TorchDistributedEnvironment()
    if job_env.cluster == "local":
        dist.master_addr = "127.0.0.1"
    dist.export(set_cuda_visible_devices=False, overwrite=True)
    keys = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    return {k: os.environ[k] for k in keys}


def _preemption_signal() -> int:
    """The signal submitit requeues on (``SUBMITIT_PREEMPT_SIGNAL``, USR2 by default)."""
    import signal

    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG"))


class TrainJob:
    """One training run of a sweep, as a submitit callable (one instance per task).

    Args:
        element: the expanded element (config, overrides, run directory).
        stop_grace_s: seconds the engine has, after the preemption signal, to reach a step
            boundary and save before the job is requeued without a new checkpoint.
    """

    def __init__(self, element: Element, stop_grace_s: float = 60.0):
        self.element = element
        self.stop_grace_s = stop_grace_s

    def __call__(self) -> dict:
        job_env = submitit.JobEnvironment()
        rendezvous = export_rendezvous(job_env)
        configure_logging(job_env.global_rank, job_env.num_tasks)
        is_main = job_env.global_rank == 0
        if is_main:
            record = record_start(self.element, job_env)
            log.info("%s: attempt %d, job %s, rendezvous %s:%s world %s", self.element.name, record["attempts"],
                     job_env.job_id, rendezvous["MASTER_ADDR"], rendezvous["MASTER_PORT"], rendezvous["WORLD_SIZE"])
        from depthpi.train.preemption import Preempted, StopRequest  # heavy imports inside the job only

        stop = StopRequest(_preemption_signal(), self.stop_grace_s).install()
        try:
            from depthpi.config import load_config
            from depthpi.train.engine import train

            metrics = train(load_config(self.element.config, list(self.element.overrides)), stop=stop)
        except Preempted:
            stop.hand_over()  # submitit: checkpoint() → requeue → exit on rank 0; other ranks end here
            raise SystemExit(-1) from None
        except Exception as err:  # SystemExit (preemption) is not a failure: the job is requeued
            stop.uninstall()
            if is_main:
                record_end(self.element, "failed", error=f"{type(err).__name__}: {err}")
            raise
        stop.uninstall()
        if is_main:
            record_end(self.element, "done", metrics=metrics)
        return metrics

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Requeue the same run; the engine resumes from the run directory's last checkpoint."""
        return submitit.helpers.DelayedSubmission(type(self)(self.element, self.stop_grace_s))


class CommandJob:
    """One depthpi CLI command of a command stage (e.g. ``precompute --shard-index I``)."""

    def __init__(self, element: Element):
        self.element = element

    def __call__(self) -> str:
        job_env = submitit.JobEnvironment()
        if job_env.global_rank == 0:
            record_start(self.element, job_env)
        command = [sys.executable, "-m", "depthpi.cli", *self.element.command]
        try:
            output = submitit.helpers.CommandFunction(command, verbose=True)()
        except Exception as err:
            if job_env.global_rank == 0:
                record_end(self.element, "failed", error=f"{type(err).__name__}: {str(err)[-2000:]}")
            raise
        if job_env.global_rank == 0:
            record_end(self.element, "done")
        return output

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Requeue the same command; a resumable command picks up where it stopped."""
        return submitit.helpers.DelayedSubmission(type(self)(self.element))


def make_job(stage: Stage, element: Element):
    """The submitit callable of an element."""
    if element.kind == "command":
        return CommandJob(element)
    # half the warning SLURM gives: the rest is for the save, the requeue and the exit
    return TrainJob(element, stop_grace_s=max(10.0, stage.resources.signal_delay_s / 2))


def slurm_parameters(stage: Stage, sweep: Sweep, dependency: str | None = None) -> dict:
    """``SlurmExecutor.update_parameters`` arguments of a stage (= the sbatch flags)."""
    res = stage.resources
    params = {"job_name": f"{sweep.name}.{stage.name}", "nodes": res.nodes, "ntasks_per_node": res.tasks_per_node,
              "cpus_per_task": res.cpus_per_task, "time": res.time_min, "array_parallelism": res.array_parallelism,
              "signal_delay_s": res.signal_delay_s, "additional_parameters": {"requeue": True}}
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if res.mem_gb is not None:
        params["mem"] = f"{int(res.mem_gb)}GB" if float(res.mem_gb).is_integer() else f"{int(res.mem_gb * 1024)}MB"
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(res, key) is not None:
            params[key] = getattr(res, key)
    if res.setup:
        params["setup"] = list(res.setup)
    if dependency:
        params["dependency"] = dependency
    return params


def submitit_folder(sweep: Sweep, stage: Stage) -> Path:
    return Path(sweep.out_dir) / "submitit" / stage.name


def sbatch_script(stage: Stage, sweep: Sweep, dependency: str | None = None) -> str:
    """The sbatch file submitit writes for this stage's array (for ``--dry-run``).

    submitit has no public call for this; its own script builder is used so the preview
    cannot drift from what is submitted (tests/test_sweep.py compares the two on a real SLURM).
    """
    try:
        from submitit.slurm.slurm import _make_sbatch_string
    except ImportError as err:
        raise RuntimeError(f"--dry-run: submitit {submitit.__version__} no longer provides the sbatch "
                           f"builder depthpi previews with ({err}); submit without --dry-run, or pin "
                           f"submitit to a version that does") from None

    params = slurm_parameters(stage, sweep, dependency)
    params["map_count"] = len(stage.elements) if len(stage.elements) > 1 else None
    folder = submitit_folder(sweep, stage) / "%j"
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, **params)


def _write_plan(sweep: Sweep, executor: str, job_ids: dict[str, str], element_jobs: dict[str, str]) -> None:
    """``<sweep_dir>/sweep.json``: the expanded plan and its job ids (read by status/collect)."""
    stages = [{"name": s.name, "kind": s.kind, "after": list(s.after), "job_id": job_ids.get(s.name),
               "elements": [{**e.to_dict(), "job_id": element_jobs.get(e.name)} for e in s.elements]}
              for s in sweep.stages]
    write_json(Path(sweep.out_dir) / PLAN_FILE, {"name": sweep.name, "spec": sweep.spec_path, "executor": executor,
                                                  "out_dir": sweep.out_dir, "submitted": _now(), "stages": stages})


def submit_slurm(sweep: Sweep) -> dict[str, str]:
    """Submit every stage as one job array, later stages ``afterok`` the ones they name.

    Returns:
        stage name → SLURM (array) job id.
    """
    job_ids, element_jobs = {}, {}
    for stage in sweep.stages:
        dependency = "afterok:" + ":".join(job_ids[a] for a in stage.after) if stage.after else None
        executor = submitit.SlurmExecutor(folder=submitit_folder(sweep, stage) / "%j",
                                          max_num_timeout=stage.resources.max_requeue)
        executor.update_parameters(**slurm_parameters(stage, sweep, dependency))
        with executor.batch():
            jobs = [executor.submit(make_job(stage, e)) for e in stage.elements]
        job_ids[stage.name] = jobs[0].job_id.split("_")[0]
        element_jobs.update({e.name: j.job_id for e, j in zip(stage.elements, jobs)})
        _write_plan(sweep, "slurm", job_ids, element_jobs)
    return job_ids


def run_local(sweep: Sweep, poll_s: float = 0.25) -> dict[str, str]:
    """Run the plan on this machine through submitit's LocalExecutor and wait for it.

    Stages run in order; within a stage at most ``array_parallelism`` elements run at
    once; a stage whose dependencies failed is skipped (as ``afterok`` would). One node;
    one task per GPU present (up to ``gpus_per_node``), else one task.

    Returns:
        element name → ``done`` / ``failed`` / ``skipped``.
    """
    import torch

    states: dict[str, str] = {}
    job_ids, element_jobs = {}, {}
    failed_stages: set[str] = set()
    for stage in sweep.stages:
        if failed_stages & set(stage.after):
            states.update({e.name: "skipped" for e in stage.elements})
            failed_stages.add(stage.name)
            continue
        res = stage.resources
        gpus = min(res.gpus_per_node, torch.cuda.device_count())
        executor = submitit.LocalExecutor(folder=submitit_folder(sweep, stage) / "%j", max_num_timeout=res.max_requeue)
        executor.update_parameters(timeout_min=res.time_min, tasks_per_node=max(1, gpus), gpus_per_node=gpus,
                                   signal_delay_s=min(res.signal_delay_s, max(1, res.time_min * 30)))
        pending, running = list(stage.elements), []
        while pending or running:
            while pending and len(running) < res.array_parallelism:
                element = pending.pop(0)
                job = executor.submit(make_job(stage, element))
                element_jobs[element.name] = job.job_id
                running.append((element, job))
                _write_plan(sweep, "local", job_ids, element_jobs)
                log.info("%s: started (local job %s)", element.name, job.job_id)
            time.sleep(poll_s)
            for element, job in [r for r in running if r[1].done()]:
                running.remove((element, job))
                states[element.name] = "failed" if job.exception() is not None else "done"
                log.info("%s: %s (log %s)", element.name, states[element.name], job.paths.stdout)
        if any(states[e.name] != "done" for e in stage.elements):
            failed_stages.add(stage.name)
    return states

