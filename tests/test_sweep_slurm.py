"""Sweeps on a real SLURM cluster (tests/slurm_cluster.py): a command array with an afterok
dependency, and training jobs of two tasks whose ranks form one process group — two tasks on
one node, and one task on each of two test hosts in their own network namespaces — one of them
preempted, requeued and resumed on every rank to the parameters of an uninterrupted job.

Kept short: every task pays a Python + torch start of several seconds, so the runs are a few
steps on the suite's tiny synthetic set, and the polls a fraction of a second apart.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from slurm_cluster import wait_for

from depthpi.cli import main as depthpi_main
from depthpi.sweep import report, submit
from depthpi.sweep.spec import load_spec
from depthpi.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo" / "baseline_rgb.yaml"
ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "SUSPENDED", "")


def sweep_main(argv: list[str]) -> None:
    depthpi_main(["sweep", *argv])


def write_spec(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def wait_done(cluster, job_ids: list[str], timeout: float) -> dict[str, str]:
    """Wait until no job is pending or running; their final states from scontrol."""
    wait_for(lambda: all(cluster.job_state(j) not in ACTIVE for j in job_ids), timeout, f"jobs {job_ids}", 0.25)
    return {j: cluster.job_state(j) for j in job_ids}


@pytest.mark.slow
def test_slurm_command_arrays_with_afterok_dependency(slurm_cluster, tmp_path):
    """A 2-job command array, then a job afterok on it that gets the sweep directory (its path
    has a space) as one argument; the dry run's sbatch files are the submitted ones, byte for byte."""
    sweep_dir = tmp_path / "sw dir"
    spec = write_spec(tmp_path, {
        "resources": {"cpus_per_task": 1, "time": "5", "signal_delay_s": 10},
        "arrays": [{"name": "first", "command": "eval --help", "count": 2},
                   {"name": "second", "command": ["sweep", "status", "{sweep_dir}"]}]})
    sweep_main([str(spec), "--out", str(sweep_dir)])
    plan = json.loads((sweep_dir / "sweep.json").read_text())
    first, second = plan["arrays"]
    assert [e["job_id"] for e in first["elements"]] == [f"{first['job_id']}_0", f"{first['job_id']}_1"]
    dependency = slurm_cluster.run("scontrol", "-o", "show", "job", second["job_id"], check=False)
    assert f"afterok:{first['job_id']}" in dependency or "JobState=COMPLETED" in dependency
    states = wait_done(slurm_cluster, [e["job_id"] for a in plan["arrays"] for e in a["elements"]], 90)
    assert set(states.values()) == {"COMPLETED"}, states
    sweep = load_spec(spec, sweep_dir)
    for array, dependency in zip(sweep.arrays, (None, f"afterok:{first['job_id']}")):
        submitted = list((sweep_dir / "submitit" / array.name).glob("*/*_submission.sh"))
        assert submitted, f"no submission file of array {array.name}"
        assert submitted[0].read_text() == submit.sbatch_script(array, sweep, dependency)
    logs = {}
    for name in ("first-0", "first-1", "second"):
        record = json.loads((sweep_dir / name / "sweep_element.json").read_text())
        assert record["state"] == "done" and record["attempts"] == 1
        logs[name] = Path(record["log"]).read_text()
    assert "usage: depthpi" in logs["first-0"] and "usage: depthpi" in logs["first-1"]
    assert re.search(r"first-1\s+done", logs["second"]), logs["second"][-2000:]  # it read the sweep directory


# --- jobs of two tasks: one process group, preempted and resumed -------------------------------
def training_started(run_dir: Path) -> bool:
    """The engine's first log line is written: every rank's preemption handler is in place."""
    record = run_dir / "sweep_element.json"
    return record.is_file() and "stage baseline" in Path(json.loads(record.read_text())["error_log"]).read_text()


def requeued_attempt_started(cluster, job_id: str, run_dir: Path, watch: dict) -> bool:
    """True once a second attempt started. SLURM holds a requeued job for 120 s (BeginTime);
    the test releases it early, as an administrator would with ``scontrol update``, once and
    2 s ahead: slurmd refuses to launch a job whose credential is from the same second as the
    kill that revoked its previous one. ``watch["seen"]`` keeps the scheduler's last word."""
    job = cluster.run("scontrol", "-o", "show", "job", job_id, check=False)
    watch["seen"] = job.strip()
    if "JobState=PENDING" in job and "Reason=BeginTime" in job and not watch.get("released"):
        cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now+2")
        watch["released"] = True
    return json.loads((run_dir / "sweep_element.json").read_text())["attempts"] >= 2


@pytest.fixture(scope="module")
def two_task_sweep(slurm_cluster, synth_root, tmp_path_factory):
    """One sweep, two arrays side by side: ``whole``, 2 tasks on ``localhost``, uninterrupted;
    ``preempted``, 2 nodes × 1 task on the test hosts (2 tasks on localhost where none could be
    made), sent the preemption signal mid-epoch. Both train 2 epochs of 4 steps; the engine saves
    at its log points (every 3 steps, never an epoch's end), not before."""
    tmp = tmp_path_factory.mktemp("two-task")
    overrides = {"data.train": str(synth_root / "train"), "data.test": str(synth_root / "test"),
                 "data.num_workers": 0, "data.batch_size": 4, "data.eval_batch_size": 8, "data.shuffle_buffer": 8,
                 "optim.epochs": 2, "run.steps_per_epoch": 4, "run.log_every": 3, "run.checkpoint_every": 1000,
                 "run.collective_timeout_s": 120}
    one_node = {"tasks_per_node": 2, "setup": ["export OMP_NUM_THREADS=1"]}
    # The ranks' gloo binds the host's own interface, as NCCL_SOCKET_IFNAME would pick a cluster's network.
    two_nodes = {"nodes": 2, "tasks_per_node": 1, "partition": "hosts",
                 "setup": ["export OMP_NUM_THREADS=1", "export GLOO_SOCKET_IFNAME=eth0"]}
    spec = write_spec(tmp, {
        "name": "two-task", "config": str(DEMO), "overrides": overrides,
        "resources": {"cpus_per_task": 1, "time": "10", "signal_delay_s": 60},
        "arrays": [{"name": "one-node", "elements": [{"name": "whole"}], "resources": one_node},
                   {"name": "later", "after": [], "elements": [{"name": "preempted"}],
                    "resources": two_nodes if slurm_cluster.hosts else one_node}]})
    sweep_dir = tmp / "sw"
    sweep_main([str(spec), "--out", str(sweep_dir)])
    plan = json.loads((sweep_dir / "sweep.json").read_text())
    job_ids = {e["name"]: e["job_id"] for a in plan["arrays"] for e in a["elements"]}
    preempted = sweep_dir / "preempted"
    wait_for(lambda: training_started(preempted), 180, "'preempted' to start training", 0.2)
    slurm_cluster.run("scancel", "--signal=USR2", job_ids["preempted"])  # what a preempting scheduler does
    watch: dict = {}
    try:
        wait_for(lambda: requeued_attempt_started(slurm_cluster, job_ids["preempted"], preempted, watch), 120,
                 "the requeued attempt to start", 0.25)
    except TimeoutError as err:
        raise TimeoutError(f"{err}; the scheduler's last word: {watch.get('seen')}") from None
    states = wait_done(slurm_cluster, list(job_ids.values()), 240)
    records = {n: json.loads((sweep_dir / n / "sweep_element.json").read_text()) for n in job_ids}
    logs = {n: Path(r["log"]).read_text() + Path(r["error_log"]).read_text() for n, r in records.items()}
    assert set(states.values()) == {"COMPLETED"}, (states, {n: log[-3000:] for n, log in logs.items()})
    return {"dir": sweep_dir, "job_ids": job_ids, "records": records, "logs": logs}


def rank_records(run_dir: Path) -> list[dict]:
    return [json.loads((run_dir / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]


def assert_one_group_of_two(run_dir: Path) -> list[dict]:
    """Both ranks' ledgers (of the last attempt): world 2, disjoint samples and equal counts per
    epoch, the same parameters at the end."""
    ranks = rank_records(run_dir)
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [8, 8]
    assert set(ranks[0]["keys"]) == set(ranks[1]["keys"]) == {"0", "1"}
    for epoch in ranks[0]["keys"]:
        assert ranks[0]["keys"][epoch] and not set(ranks[0]["keys"][epoch]) & set(ranks[1]["keys"][epoch]), epoch
        assert ranks[0]["samples_per_epoch"][epoch] == ranks[1]["samples_per_epoch"][epoch], epoch
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]
    return ranks


@pytest.mark.slow
def test_two_tasks_on_one_node_form_one_group_and_are_one_element(two_task_sweep):
    ranks = assert_one_group_of_two(two_task_sweep["dir"] / "whole")
    assert [r["samples_per_epoch"] for r in ranks] == [{"0": 16, "1": 16}] * 2  # 4 steps × batch 4, each epoch
    assert "2 task(s) on 1 node(s), rendezvous localhost:" in two_task_sweep["logs"]["whole"]
    assert "2 process(es)" in two_task_sweep["logs"]["whole"]
    rows = report.status(two_task_sweep["dir"])
    assert [(r["name"], r["state"], r["attempts"]) for r in rows] == [("whole", "done", 1), ("preempted", "done", 2)]
    keys, table = report.collect_rows(two_task_sweep["dir"])
    assert [r["element"] for r in table] == ["whole", "preempted"] and all(r["n"] == 1 for r in table)


@pytest.mark.slow
def test_a_preempted_two_task_job_resumes_every_rank_to_the_uninterrupted_parameters(two_task_sweep):
    """Requeued as the same job, every rank resumes from the one checkpoint saved at the signal,
    reads the rest of the epoch each read before, and the job ends with the parameters of the
    uninterrupted job, bit for bit."""
    sweep_dir, log = two_task_sweep["dir"], two_task_sweep["logs"]["preempted"]
    record = two_task_sweep["records"]["preempted"]
    assert record["attempts"] == 2 and record["job_ids"] == [two_task_sweep["job_ids"]["preempted"]]
    second_task = Path(record["error_log"].replace("_0_log.err", "_1_log.err")).read_text()
    assert "Caught signal SIGUSR2" in log and "Caught signal SIGUSR2" in second_task  # every task took it
    saved = [int(s) for s in re.findall(r"preempted: checkpoint at step (\d+)", log)]
    resumed = [int(s) for s in re.findall(r"resumed from \S+checkpoints/step-(\d+)", log)]
    assert saved and resumed == saved and saved[0] % 4, log[-3000:]  # a step inside an epoch
    # Each rank's second attempt read the rest of its epoch and the next, as it would have unpreempted.
    for whole, preempted in zip(rank_records(sweep_dir / "whole"), assert_one_group_of_two(sweep_dir / "preempted")):
        rest = whole["keys"]["0"][4 * (saved[0] % 4):]
        assert preempted["keys"] == {"0": rest, "1": whole["keys"]["1"]} and len(rest) == 4 * (4 - saved[0] % 4)
    first, second = (load_weights(sweep_dir / name / "export/last.pt") for name in ("whole", "preempted"))
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(second[name], first[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_two_nodes_one_task_each_rendezvous_across_the_test_hosts(slurm_cluster, two_task_sweep):
    if slurm_cluster.hosts is None:
        pytest.skip(f"no two test hosts on this machine: {slurm_cluster.no_hosts}")
    job = two_task_sweep["job_ids"]["preempted"]
    assert slurm_cluster.job_field(job, "NodeList") == "h[1-2]" and slurm_cluster.job_field(job, "NumNodes") == "2"
    # MASTER_ADDR: the first node's name, which both hosts resolve to its address on the bridge.
    assert "2 task(s) on 2 node(s), rendezvous h1:" in two_task_sweep["logs"]["preempted"]
