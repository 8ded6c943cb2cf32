"""A sweep handed to submitit: one SLURM job array per array of the spec, or the same plan locally.

Every task of a job runs :class:`TrainJob`: it exports the ``env://`` variables of the job's
process group from submitit's environment (MASTER_ADDR: the job's first node; MASTER_PORT:
from the job id; RANK, WORLD_SIZE, LOCAL_RANK: the task's ids), and calls ``train(cfg)``,
whose accelerator forms the group. Rank 0 keeps the element's record. On preemption or
time-out SLURM signals every task ``signal_delay_s`` early; the engine saves a checkpoint at
its next log point on every rank, and submitit's ``checkpoint()`` on rank 0 requeues the
job, which resumes from that checkpoint.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shlex
import signal
import socket
import sys
import time
from pathlib import Path

import submitit

from depthpi.io import atomic_write_json
from depthpi.log import configure_logging
from depthpi.sweep.spec import Element, JobArray, Kind, Sweep

log = logging.getLogger(__name__)
ELEMENT_FILE, PLAN_FILE = "sweep_element.json", "sweep.json"


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
    record["job_ids"] += [job_env.job_id] if job_env.job_id not in record["job_ids"] else []
    record["history"].append({"attempt": record["attempts"], "job_id": job_env.job_id, "host": socket.gethostname(),
                              "tasks": job_env.num_tasks, "nodes": job_env.num_nodes, "started": _now()})
    record.update(state="running", log=str(job_env.paths.stdout), error_log=str(job_env.paths.stderr))
    record.pop("error", None)
    atomic_write_json(path, record)
    return record


def record_end(element: Element, state: str, **extra) -> None:
    """Mark the element ``done`` or ``failed`` (with its metrics or error)."""
    path = Path(element.run_dir) / ELEMENT_FILE
    atomic_write_json(path, {**(read_json(path) or element.to_dict()), "state": state, "finished": _now(), **extra})


def export_rendezvous(job_env) -> dict[str, str]:
    """The ``env://`` variables of this task's process group, set from submitit's environment.

    MASTER_PORT comes from the job id: the tasks of a job agree on it and array siblings on
    one node differ (an exported MASTER_PORT that sbatch passed on from the submitting shell
    would be shared by all of them). CUDA_VISIBLE_DEVICES is left alone: each task uses
    ``cuda:LOCAL_RANK``.
    """
    os.environ.pop("MASTER_PORT", None)
    dist = submitit.helpers.TorchDistributedEnvironment()
    if job_env.cluster == "local":
        dist.master_addr = "127.0.0.1"
    dist.export(set_cuda_visible_devices=False, overwrite=True)
    return {k: os.environ[k] for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                       "LOCAL_WORLD_SIZE")}


class TrainJob:
    """One training run of a sweep, a submitit callable run by every task of the job.

    Args:
        element: the expanded element (config, overrides, run directory).
        stop_grace_s: seconds the engine has, after the preemption signal, to reach a step
            boundary and save before the job is requeued without a new checkpoint.
    """

    def __init__(self, element: Element, stop_grace_s: float = 60.0):
        self.element, self.stop_grace_s = element, stop_grace_s

    def __call__(self) -> dict:
        job_env = submitit.JobEnvironment()
        rendezvous = export_rendezvous(job_env)
        configure_logging(job_env.global_rank, job_env.num_tasks)
        is_main = job_env.global_rank == 0
        if is_main:
            record = record_start(self.element, job_env)
            log.info("%s: attempt %d, job %s, %d task(s) on %d node(s), rendezvous %s:%s", self.element.name,
                     record["attempts"], job_env.job_id, job_env.num_tasks, job_env.num_nodes,
                     rendezvous["MASTER_ADDR"], rendezvous["MASTER_PORT"])
        from depthpi.config import load_config  # heavy imports inside the job only
        from depthpi.dist import joining_group
        from depthpi.train.engine import train
        from depthpi.train.preemption import Preempted, StopRequest

        signum = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG"))
        stop = StopRequest(signum, self.stop_grace_s).install()
        try:
            cfg = load_config(self.element.config, self.element.overrides)
            with joining_group(cfg.run.collective_timeout_s):
                metrics = train(cfg, stop=stop)
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
    """One depthpi CLI command of a command array, run as ``python -m depthpi.cli ARGS`` (no shell)."""

    def __init__(self, element: Element):
        self.element = element

    def __call__(self) -> str:
        is_main = submitit.JobEnvironment().global_rank == 0
        if is_main:
            record_start(self.element, submitit.JobEnvironment())
        try:
            output = submitit.helpers.CommandFunction([sys.executable, "-m", "depthpi.cli", *self.element.command],
                                                      verbose=True)()
        except Exception as err:
            if is_main:
                record_end(self.element, "failed", error=f"{type(err).__name__}: {str(err)[-2000:]}")
            raise
        if is_main:
            record_end(self.element, "done")
        return output

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Requeue the same command; a resumable command picks up where it stopped."""
        return submitit.helpers.DelayedSubmission(type(self)(self.element))


def make_job(array: JobArray, element: Element):
    """The submitit callable of an element; a training run gets half of SLURM's warning to save."""
    if element.kind is Kind.command:
        return CommandJob(element)
    return TrainJob(element, stop_grace_s=max(10.0, array.resources.signal_delay_s / 2))


def slurm_parameters(array: JobArray, sweep: Sweep, dependency: str | None = None) -> dict:
    """``SlurmExecutor.update_parameters`` arguments of an array (= its sbatch flags)."""
    res = array.resources
    params = {"job_name": f"{sweep.name}.{array.name}", "nodes": res.nodes, "ntasks_per_node": res.tasks,
              "cpus_per_task": res.cpus_per_task, "time": res.minutes, "array_parallelism": res.array_parallelism,
              "signal_delay_s": res.signal_delay_s, "additional_parameters": {"requeue": True},
              "gpus_per_node": res.gpus_per_node or None, "dependency": dependency, "setup": res.setup or None,
              "mem": None if res.mem_gb is None else f"{res.mem_gb:g}GB" if float(res.mem_gb).is_integer()
              else f"{round(res.mem_gb * 1024)}MB",
              **{k: getattr(res, k) for k in ("partition", "account", "qos", "constraint")}}
    return {k: v for k, v in params.items() if v is not None}


def submitit_folder(sweep: Sweep, array: JobArray) -> Path:
    return Path(sweep.out_dir) / "submitit" / array.name / "%j"


def sbatch_script(array: JobArray, sweep: Sweep, dependency: str | None = None) -> str:
    """The sbatch file submitit writes for this array (for ``--dry-run``), by submitit's own
    builder, so the preview cannot drift from what is submitted (a SLURM test compares them)."""
    from submitit.slurm.slurm import _make_sbatch_string  # no public call gives the file

    params = {**slurm_parameters(array, sweep, dependency),
              "map_count": len(array.elements) if len(array.elements) > 1 else None}
    folder = submitit_folder(sweep, array)
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    return _make_sbatch_string(command=command, folder=folder, **params)


def _write_plan(sweep: Sweep, executor: str, job_ids: dict[str, str], element_jobs: dict[str, str]) -> None:
    """``<sweep_dir>/sweep.json``: the expanded plan and its job ids (what status and collect read)."""
    arrays = [{"name": a.name, "kind": a.kind.value, "after": list(a.after), "job_id": job_ids.get(a.name),
               "folder": str(submitit_folder(sweep, a)),
               "elements": [{**e.to_dict(), "job_id": element_jobs.get(e.name)} for e in a.elements]}
              for a in sweep.arrays]
    atomic_write_json(Path(sweep.out_dir) / PLAN_FILE, {"name": sweep.name, "spec": sweep.spec_path,
                                                        "executor": executor, "out_dir": sweep.out_dir,
                                                        "submitted": _now(), "arrays": arrays})


def submit_slurm(sweep: Sweep) -> dict[str, str]:
    """Submit every array as one job array, ``afterok`` the arrays it names; array name → job id."""
    job_ids, element_jobs = {}, {}
    for array in sweep.arrays:
        dependency = "afterok:" + ":".join(job_ids[a] for a in array.after) if array.after else None
        executor = submitit.SlurmExecutor(folder=submitit_folder(sweep, array),
                                          max_num_timeout=array.resources.max_requeue)
        executor.update_parameters(**slurm_parameters(array, sweep, dependency))
        with executor.batch():
            jobs = [executor.submit(make_job(array, e)) for e in array.elements]
        job_ids[array.name] = jobs[0].job_id.split("_")[0]
        element_jobs.update({e.name: j.job_id for e, j in zip(array.elements, jobs)})
        _write_plan(sweep, "slurm", job_ids, element_jobs)
    return job_ids


def run_local(sweep: Sweep, poll_s: float = 0.25) -> dict[str, str]:
    """Run the plan on this machine with submitit's LocalExecutor and wait for it.

    Arrays run in order, at most ``array_parallelism`` elements at once; an array whose
    dependencies failed is skipped (as ``afterok``). One node: ``tasks_per_node`` tasks,
    on as many GPUs as are here (up to ``gpus_per_node``). Returns element name →
    ``done`` / ``failed`` / ``skipped``.
    """
    import torch

    states, element_jobs, failed = {}, {}, set()
    for array in sweep.arrays:
        if failed & set(array.after):
            states.update({e.name: "skipped" for e in array.elements})
            failed.add(array.name)
            continue
        res = array.resources
        gpus = min(res.gpus_per_node, torch.cuda.device_count())
        executor = submitit.LocalExecutor(folder=submitit_folder(sweep, array), max_num_timeout=res.max_requeue)
        executor.update_parameters(timeout_min=res.minutes, gpus_per_node=gpus,
                                   tasks_per_node=max(1, gpus) if res.gpus_per_node else res.tasks,
                                   signal_delay_s=min(res.signal_delay_s, res.minutes * 30))
        pending, running = list(array.elements), []
        while pending or running:
            while pending and len(running) < res.array_parallelism:
                element = pending.pop(0)
                running.append((element, executor.submit(make_job(array, element))))
                element_jobs[element.name] = running[-1][1].job_id
                _write_plan(sweep, "local", {}, element_jobs)
            time.sleep(poll_s)
            for element, job in [r for r in running if r[1].done()]:
                running.remove((element, job))
                states[element.name] = "failed" if job.exception() is not None else "done"
                log.info("%s: %s (log %s)", element.name, states[element.name], job.paths.stdout)
        failed |= {array.name} if any(states[e.name] != "done" for e in array.elements) else set()
    return states
