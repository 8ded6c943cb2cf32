"""A sweep handed to submitit: one SLURM job array per array of the spec, or the same plan locally;
what runs in a job, its record, its requeue after a preemption (``docs/sweeps.md``)."""
from __future__ import annotations

import datetime as _dt
import logging
import os
import shlex
import signal
import socket
import sys
from pathlib import Path

import submitit

from depthpi.io import atomic_write_json, read_json
from depthpi.log import configure_logging
from depthpi.sweep.spec import Element, JobArray, Kind, Sweep

log = logging.getLogger(__name__)
ELEMENT_FILE, PLAN_FILE = "sweep_element.json", "sweep.json"


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def record_start(element: Element, job_env) -> dict:
    """Count this attempt in ``<run_dir>/sweep_element.json`` (atomically); returns the record."""
    path = Path(element.run_dir) / ELEMENT_FILE
    record = read_json(path) or {**element._asdict(), "attempts": 0, "job_ids": []}
    record["attempts"] += 1
    record["job_ids"] += [job_env.job_id] if job_env.job_id not in record["job_ids"] else []
    record.update(state="running", started=_now(), host=socket.gethostname(), tasks=job_env.num_tasks,
                  nodes=job_env.num_nodes, log=str(job_env.paths.stdout), error_log=str(job_env.paths.stderr))
    record.pop("error", None)
    atomic_write_json(path, record)
    return record


def record_end(element: Element, state: str, **extra) -> None:
    """Mark the element ``done`` or ``failed`` (with its metrics or error)."""
    path = Path(element.run_dir) / ELEMENT_FILE
    atomic_write_json(path, {**(read_json(path) or element._asdict()), "state": state, "finished": _now(), **extra})


def export_rendezvous(job_env) -> dict[str, str]:
    """This task's ``env://`` variables from submitit: MASTER_ADDR the job's first node, RANK,
    WORLD_SIZE, LOCAL_RANK its ids, MASTER_PORT from the job id (array siblings on a node differ;
    one passed on from the submitting shell would be shared by all). Each task uses ``cuda:LOCAL_RANK``."""
    os.environ.pop("MASTER_PORT", None)
    dist = submitit.helpers.TorchDistributedEnvironment()
    if job_env.cluster == "local":
        dist.master_addr = "127.0.0.1"
    dist.export(set_cuda_visible_devices=False, overwrite=True)
    return {k: os.environ[k] for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                       "LOCAL_WORLD_SIZE")}


class ElementJob:
    """What every task of an element's job runs: a training run, or ``python -m depthpi.cli ARGS`` (no shell).
    ``stop_grace_s``: how long a run has, after the preemption signal, to save before it is requeued anyway."""

    def __init__(self, element: Element, stop_grace_s: float = 60.0):
        self.element, self.stop_grace_s = element, stop_grace_s

    def __call__(self):
        job_env, training = submitit.JobEnvironment(), self.element.kind is Kind.train
        is_main = job_env.global_rank == 0
        if training:
            rendezvous = export_rendezvous(job_env)
            configure_logging(job_env.global_rank, job_env.num_tasks)
        if is_main:
            record = record_start(self.element, job_env)
            log.info("%s: attempt %d, job %s, %d task(s) on %d node(s)%s", self.element.name, record["attempts"],
                     job_env.job_id, job_env.num_tasks, job_env.num_nodes,
                     f", rendezvous {rendezvous['MASTER_ADDR']}:{rendezvous['MASTER_PORT']}" if training else "")
        try:
            result = self._train() if training else submitit.helpers.CommandFunction(
                [sys.executable, "-m", "depthpi.cli", *self.element.command], verbose=True)()
        except Exception as err:  # a preempted run raises SystemExit: no failure, the job is requeued
            if is_main:
                record_end(self.element, "failed", error=f"{type(err).__name__}: {str(err)[-2000:]}")
            raise
        if is_main:
            record_end(self.element, "done", **({"metrics": result} if training else {}))
        return result

    def _train(self) -> dict:
        from depthpi.config import load_config  # heavy imports inside the job only
        from depthpi.dist import joining_group
        from depthpi.train.engine import train
        from depthpi.train.preemption import Preempted, StopRequest

        signum = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG"))
        stop = StopRequest(signum, self.stop_grace_s).install()
        try:
            cfg = load_config(self.element.config, self.element.overrides)
            with joining_group(cfg.run.collective_timeout_s):
                return train(cfg, stop=stop)
        except Preempted:
            stop.hand_over()  # submitit: checkpoint() → requeue → exit on rank 0; other ranks end here
            raise SystemExit(-1) from None
        finally:
            stop.uninstall()

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Requeue the same element: a run resumes from its last checkpoint, a resumable command where it stopped."""
        return submitit.helpers.DelayedSubmission(type(self)(self.element, self.stop_grace_s))


def make_job(array: JobArray, element: Element) -> ElementJob:
    """The callable of an element; a training run gets half of SLURM's warning to save."""
    return ElementJob(element, stop_grace_s=max(10.0, array.resources.signal_delay_s / 2))


def slurm_parameters(array: JobArray, sweep: Sweep, dependency: str | None = None) -> dict:
    """``SlurmExecutor.update_parameters`` arguments of an array (= its sbatch flags)."""
    res = array.resources
    mem = None if res.mem_gb is None else f"{int(res.mem_gb)}GB" if float(res.mem_gb).is_integer() else \
        f"{round(res.mem_gb * 1024)}MB"
    params = {"job_name": f"{sweep.name}.{array.name}", "nodes": res.nodes, "ntasks_per_node": res.tasks,
              "cpus_per_task": res.cpus_per_task, "time": res.minutes, "array_parallelism": res.array_parallelism,
              "signal_delay_s": res.signal_delay_s, "additional_parameters": {"requeue": True}, "mem": mem,
              "gpus_per_node": res.gpus_per_node or None, "dependency": dependency, "setup": res.setup or None,
              **{k: getattr(res, k) for k in ("partition", "account", "qos", "constraint")}}
    return {k: v for k, v in params.items() if v is not None}


def submitit_folder(sweep: Sweep, array: JobArray) -> Path:
    return Path(sweep.out_dir) / "submitit" / array.name / "%j"


def sbatch_script(array: JobArray, sweep: Sweep, dependency: str | None = None) -> str:
    """The sbatch file submitit writes for this array (``--dry-run``), by its own builder: the preview cannot drift."""
    from submitit.slurm.slurm import _make_sbatch_string  # no public call gives the file

    params = {**slurm_parameters(array, sweep, dependency),
              "map_count": len(array.elements) if len(array.elements) > 1 else None}
    folder = submitit_folder(sweep, array)
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    return _make_sbatch_string(command=command, folder=folder, **params)


def describe(sweep: Sweep, executor: str) -> str:
    """The plan: arrays, their resources and dependencies, each element's overrides (and sbatch files)."""
    lines = [f"sweep {sweep.name} ({sweep.spec_path}) -> {sweep.out_dir}", f"executor: {executor}"]
    for array in sweep.arrays:
        res = array.resources
        lines += ["", f"== array {array.name}: {array.kind.value} × {len(array.elements)}"
                      f"{' after ' + ', '.join(array.after) if array.after else ''}",
                  f"   {res.nodes} node(s) × {res.tasks} task(s), {res.gpus_per_node} GPU(s)/node, "
                  f"{res.cpus_per_task} CPU(s)/task, time {res.time}, at most {res.array_parallelism} at once"]
        for i, e in enumerate(array.elements):
            what = shlex.join(e.command) if e.kind is Kind.command else \
                " ".join([e.config, *(f"{k}={v!r}" for k, v in e.overrides.items())])
            lines.append(f"   [{i}] {e.name}: {what}")
        if executor == "slurm":
            dependency = "afterok:" + ":".join(f"JOBID_OF_{a}" for a in array.after) if array.after else None
            lines += ["", f"--- sbatch file of array {array.name}", sbatch_script(array, sweep, dependency)]
    return "\n".join(lines)


def _write_plan(sweep: Sweep, executor: str, element_jobs: dict[str, str], job_ids: dict | None = None) -> None:
    """``<sweep_dir>/sweep.json``: the expanded plan and its job ids (what status and collect read)."""
    arrays = [{"name": a.name, "kind": a.kind.value, "after": list(a.after), "job_id": (job_ids or {}).get(a.name),
               "elements": [{**e._asdict(), "job_id": element_jobs.get(e.name)} for e in a.elements]}
              for a in sweep.arrays]
    atomic_write_json(Path(sweep.out_dir) / PLAN_FILE, {"name": sweep.name, "spec": sweep.spec_path,
                                                        "executor": executor, "submitted": _now(), "arrays": arrays})


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
        _write_plan(sweep, "slurm", element_jobs, job_ids)
    return job_ids


def run_local(sweep: Sweep) -> dict[str, str]:
    """The plan run here by submitit's LocalExecutor, ``array_parallelism`` elements at a time on the GPUs
    here, an array skipped where one it follows failed (``afterok``); element name → done/failed/skipped."""
    import torch

    states, element_jobs = {}, {}
    for array in sweep.arrays:
        if any(states.get(e.name) != "done" for a in sweep.arrays if a.name in array.after for e in a.elements):
            states.update({e.name: "skipped" for e in array.elements})
            continue
        res = array.resources
        gpus = min(res.gpus_per_node, torch.cuda.device_count())
        executor = submitit.LocalExecutor(folder=submitit_folder(sweep, array), max_num_timeout=res.max_requeue)
        executor.update_parameters(timeout_min=res.minutes, gpus_per_node=gpus,
                                   tasks_per_node=max(1, gpus) if res.gpus_per_node else res.tasks,
                                   signal_delay_s=min(res.signal_delay_s, res.minutes * 30))
        for start in range(0, len(array.elements), res.array_parallelism):
            batch = array.elements[start:start + res.array_parallelism]
            jobs = [executor.submit(make_job(array, e)) for e in batch]
            element_jobs.update({e.name: j.job_id for e, j in zip(batch, jobs)})
            _write_plan(sweep, "local", element_jobs)
            for element, job in zip(batch, jobs):
                states[element.name] = "failed" if job.exception() is not None else "done"
                log.info("%s: %s (log %s)", element.name, states[element.name], job.paths.stdout)
    return states
