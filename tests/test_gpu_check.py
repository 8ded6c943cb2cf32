"""bench/gpu_check.sh at toy scale on CPU (``--tiny``), its own steps only (environment,
shards, model step eager and compiled, precompute; the trainings of its engine, DeepSpeed and
resume steps are what test_engine.py runs for real): the steps run, both report files are
written, and the JSON holds every figure the markdown shows, also for the training steps'
tables (from records of their form); and the driver's handling of a step that fails or runs
out of time."""
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402

TINY_STEPS = ("models", "compile", "precompute")  # and env, shards: what they need
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "DEPTHPI_PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--tiny", "--out", str(out),
                             "--steps", *TINY_STEPS], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_the_chosen_steps_and_their_needs_ran_and_the_others_are_marked_not_run(tiny_run):
    out, doc, markdown = tiny_run
    assert list(doc["steps"]) == [step.name for step in gpu_check.STEPS]
    ran = {"env", "shards", *TINY_STEPS}
    for name, record in doc["steps"].items():
        if name not in ran:
            assert record["status"] == "not run" and f"| {name} | " in markdown, (name, record)
            continue
        assert record["status"] == "ok", (name, record)
        assert (out / record["log"]).is_file() and record["seconds"] <= record["budget_s"]
        assert f"| {name} | " in markdown
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert {f"logs/{name}.log" for name in ran} <= set(names)


def test_the_json_holds_every_figure_the_tables_show(tiny_run):
    _, doc, markdown = tiny_run
    steps = doc["steps"]
    eager, compiled = steps["models"]["data"], steps["compile"]["data"]
    assert [r["workload"] for r in eager] == list(gpu_check_workloads())
    assert {r["workload"] for r in compiled} == set(gpu_check_workloads())
    for row in eager + compiled:
        assert row["rate"] > 0 and f"| {row['rate']:,.1f} |" in markdown
    assert all(r["compile"] == "eager" for r in compiled)  # --tiny traces only
    precompute = steps["precompute"]["data"]
    assert precompute["samples"] == 4 and f"{precompute['samples_per_s']:,.1f}" in markdown
    for goal in doc["goals"]:
        assert f"| {goal['goal']} | {goal['where']} | {gpu_check._fmt(goal['value'], goal['unit'])} |" in markdown
    assert {g["where"] for g in doc["goals"]} >= {"model step, eager", "model step, compiled"}


def test_the_training_steps_tables_show_every_figure_of_their_records():
    """The engine, DeepSpeed and resume tables and goals, from records of the form their
    steps collect (bench_train.py's, collect_zero's, bench_resume.py's)."""
    stages = ("baseline RGB", "baseline depth", "teacher RGB-D", "student, online teacher",
              "student, precomputed features")
    engine = {stage: {"samples_per_s": 100.0 + i, "data_wait_share": 0.01 * i, "steady_samples_per_s": 120.5 + i,
                      "steady_data_wait_share": 0.02 * i, "peak_memory_mib": 512.0, "train_loss": [0.9, 0.4 + i / 10],
                      "mpjpe": 80.25 + i, "mean_pose_mpjpe": 200.0, "pck": 0.5} for i, stage in enumerate(stages)}
    resume = {"backend": "nccl", "world_size": 2, "checkpoints_at_kill": [2, 4], "resumed": True, "bit_exact": True,
              "differing_count": 0, "tensors": 321, "max_abs_diff": 0.0}
    results = {"engine": {"status": "ok", "data": engine}, "resume": {"status": "ok", "data": resume},
               "zero1": {"status": "ok", "data": {"zero_stage": 1, "steps": 5, "batch": 32, "mixed_precision": "bf16",
                                                  "mpjpe": 91.5}},
               "zero2": {"status": "failed", "data": None, "note": "exit status 1", "tail": ["boom"], "log": "logs/zero2.log"}}
    doc = {"date": "d", "tiny": False, "command": "c", "budget_s": 480, "elapsed_s": 1, "environment": {},
           "steps": results, "goals": gpu_check.goals(results)}
    markdown = gpu_check.report_markdown(doc)
    for stage, figures in engine.items():
        assert f"| {stage} | {figures['samples_per_s']:,.1f} |" in markdown
        assert f"{figures['data_wait_share']:.1%}" in markdown and f"{figures['mpjpe']:,.1f}" in markdown
        assert f"| {figures['steady_samples_per_s']:,.1f} | {figures['steady_data_wait_share']:.1%} |" in markdown
        assert " → ".join(f"{v:.3f}" for v in figures["train_loss"]) in markdown
    steady = {g["where"]: g for g in doc["goals"] if g["where"].startswith("engine (steady)")}
    assert steady["engine (steady), teacher RGB-D"]["value"] == engine["teacher RGB-D"]["steady_data_wait_share"]
    for goal in doc["goals"]:
        assert f"| {goal['goal']} | {goal['where']} | {gpu_check._fmt(goal['value'], goal['unit'])} |" in markdown
    assert "| zero1 | ok | bf16 | 5 × 32 | 91.5 |" in markdown and "| zero2 | failed | – |" in markdown
    assert "| nccl | 2 | [2, 4] | True | yes | 0 of 321 | 0.0 |" in markdown
    assert "### zero2: failed, last lines of `logs/zero2.log`" in markdown and "boom" in markdown


def test_a_step_and_what_it_needs_are_chosen_in_list_order():
    assert [s.name for s in gpu_check.selected_steps(["resume", "models"])] == ["env", "shards", "models", "resume"]
    assert gpu_check.selected_steps(None) == gpu_check.STEPS


def gpu_check_workloads():
    import bench_models

    return bench_models.WORKLOADS


def _context(tmp_path, budget: int) -> gpu_check.Context:
    scale = gpu_check.tiny_scale(1)
    scale = gpu_check.replace(scale, budgets={**scale.budgets, "probe": budget})
    (tmp_path / "logs").mkdir()
    ctx = gpu_check.Context(scale, tmp_path, tmp_path, tmp_path / "logs", time.time() + 600, dict(os.environ), True)
    ctx.results["env"] = {"status": "ok"}
    return ctx


def test_a_failing_step_is_reported_with_its_log_tail(tmp_path):
    ctx = _context(tmp_path, 60)
    step = gpu_check.Step("probe", "fails", lambda c: [sys.executable, "-c", "print('first'); "
                                                        "raise ValueError('the cause')"])
    record = gpu_check.run_step(step, ctx, {})
    assert record["status"] == "failed" and record["returncode"] == 1
    assert record["note"] == "exit status 1; first error: ValueError: the cause"
    assert record["tail"][-1] == "ValueError: the cause" and "first" in record["tail"]
    ctx.results["probe"] = record
    markdown = gpu_check.report_markdown({"date": "d", "tiny": True, "command": "c", "budget_s": 1, "elapsed_s": 1,
                                          "environment": {}, "steps": ctx.results, "goals": []})
    assert "### probe: failed, last lines of `logs/probe.log`" in markdown and "the cause" in markdown


def test_a_step_past_its_timeout_is_stopped_with_its_children(tmp_path):
    ctx = _context(tmp_path, 6)
    marker = tmp_path / "grandchild.pid"
    script = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
              f"time.sleep(120)']); open({str(marker)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    started = time.time()
    record = gpu_check.run_step(gpu_check.Step("probe", "hangs", lambda c: [sys.executable, "-c", script]), ctx, {})
    assert record["status"] == "timed out" and "timeout" in record["note"] and time.time() - started < 30
    grandchild = int(marker.read_text())
    deadline = time.time() + 10
    while time.time() < deadline and _alive(grandchild):
        time.sleep(0.1)
    assert not _alive(grandchild), "the step's own children must be stopped with it"


def test_a_step_whose_dependency_failed_or_budget_is_spent_is_skipped(tmp_path):
    ctx = _context(tmp_path, 60)
    ctx.results["shards"] = {"status": "failed"}
    done = gpu_check.concurrent.futures.Future()
    done.set_result(None)
    step = gpu_check.Step("probe", "needs shards", lambda c: ["true"], needs=("shards",))
    assert "needs step shards" in gpu_check.run_step(step, ctx, {"shards": done})["note"]
    ctx.deadline = time.time() + 5
    assert "no time left" in gpu_check.run_step(gpu_check.Step("probe", "x", lambda c: ["true"]), ctx, {})["note"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.is_file() and status.read_text().split()[2] == "Z")  # a zombie has ended
