"""bench/gpu_check.sh at toy scale on CPU (``--tiny``): every step runs (or says why not),
both report files are written, and the JSON holds every figure the markdown shows; and
the driver's handling of a step that fails or runs out of time."""
import importlib.util
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


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, request):
    if importlib.util.find_spec("deepspeed") is not None:
        request.getfixturevalue("deepspeed_cpu_ops")  # DeepSpeed's CPU op built before the timed steps
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "DEPTHPI_PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--tiny", "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_every_step_ran_or_says_why_not(tiny_run):
    out, doc, markdown = tiny_run
    assert list(doc["steps"]) == [step.name for step in gpu_check.STEPS]
    for name, record in doc["steps"].items():
        if record["status"] == "skipped":  # only DeepSpeed may be missing on a CPU machine
            assert name in ("zero1", "zero2") and "deepspeed" in record["note"], (name, record)
            continue
        assert record["status"] == "ok", (name, record)
        assert (out / record["log"]).is_file() and record["seconds"] <= record["budget_s"]
        assert f"| {name} | " in markdown
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert {f"logs/{s.name}.log" for s in gpu_check.STEPS if doc["steps"][s.name]["status"] == "ok"} <= set(names)
    assert "logs/engine/teacher.log" in names and "logs/resume/resume-killed.log" in names


def test_the_json_holds_every_figure_the_tables_show(tiny_run):
    _, doc, markdown = tiny_run
    steps = doc["steps"]
    eager, compiled = steps["models"]["data"], steps["compile"]["data"]
    assert [r["workload"] for r in eager] == list(gpu_check_workloads())
    assert {r["workload"] for r in compiled} == set(gpu_check_workloads())
    for row in eager + compiled:
        assert row["rate"] > 0 and f"| {row['rate']:,.1f} |" in markdown
    assert all(r["compile"] == "eager" for r in compiled)  # --tiny traces only
    engine = steps["engine"]["data"]
    assert len(engine) == 5
    for stage, figures in engine.items():
        assert f"| {stage} | {figures['samples_per_s']:,.1f} |" in markdown
        assert f"{figures['data_wait_share']:.1%}" in markdown and f"{figures['mpjpe']:,.1f}" in markdown
        assert f"| {figures['steady_samples_per_s']:,.1f} | {figures['steady_data_wait_share']:.1%} |" in markdown
        assert 0 <= figures["steady_data_wait_share"] <= 1 and figures["steady_samples_per_s"] > 0
        assert figures["mean_pose_mpjpe"] > 0 and len(figures["train_loss"]) == 2
    precompute = steps["precompute"]["data"]
    assert precompute["samples"] == 4 and f"{precompute['samples_per_s']:,.1f}" in markdown
    resume = steps["resume"]["data"]
    assert resume["backend"] == "gloo" and resume["bit_exact"] and resume["resumed"]
    assert max(resume["checkpoints_at_kill"]) < 10  # killed inside the second epoch
    for name in ("zero1", "zero2"):
        if steps[name]["status"] == "ok":
            assert steps[name]["data"]["zero_stage"] == int(name[-1])
    for goal in doc["goals"]:
        assert f"| {goal['goal']} | {goal['where']} | {gpu_check._fmt(goal['value'], goal['unit'])} |" in markdown
    assert {g["where"] for g in doc["goals"]} >= {"model step, eager", "model step, compiled", "engine (steady)"}


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
