"""The training engine for real: tiny models on tiny synthetic shards, on CPU.

Covers: loss decreases on an overfit set, a killed run (two ranks) resumes to the same
parameters, TensorBoard tags, a 2-process DDP run and a 2-process DeepSpeed ZeRO-2 run
through ``accelerate launch`` (gloo), and the student stage with an online teacher.
"""
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import subset_split, tb_scalars
from depthpi.config import load_config
from depthpi.data.shards import read_manifest
from depthpi.predict import evaluate_checkpoint
from depthpi.train.checkpoint import checkpoint_dirs
from depthpi.train.engine import train
from depthpi.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo"
SPREAD_OVER_WORKERS = True  # no module fixtures: each test may run on either worker (tests/conftest.py)


@pytest.fixture
def shards(synth_root):
    return synth_root


def _overrides(shards, out_dir, **extra):
    values = {"data.train": shards / "train", "data.test": shards / "test", "run.out_dir": out_dir,
              "data.num_workers": 0, "data.batch_size": 8, "data.eval_batch_size": 16,
              "data.pipeline.input_size": 65, "optim.epochs": 2, "run.log_every": 1, "run.checkpoint_every": 3}
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def test_loss_decreases_on_tiny_overfit_set_and_events_hold_expected_tags(shards, tmp_path):
    cfg = load_config(DEMO / "baseline_rgb.yaml", _overrides(
        shards, tmp_path / "run", **{"optim.epochs": 12, "run.steps_per_epoch": 2, "data.shuffle_buffer": 1,
                                     "data.pipeline.augment.geometry": False, "data.pipeline.augment.colour": False,
                                     "optim.lr_factors": "[1,1,1,1,1]"}))
    metrics = train(cfg)
    scalars = tb_scalars(tmp_path / "run")
    losses = scalars["train/loss"]
    assert sum(losses[-4:]) / 4 < 0.6 * sum(losses[:4]) / 4, losses
    for tag in ("train/loss", "train/regression", "train/lr", "train/grad_norm", "train/samples_per_s",
                "train/data_wait_share", "train/peak_memory_mib", "eval/mpjpe", "eval/pck", "eval/auc"):
        assert tag in scalars, f"missing TensorBoard tag {tag}"
    assert metrics["mpjpe"] == pytest.approx(scalars["eval/mpjpe"][-1], rel=1e-5)
    peak = scalars["train/peak_memory_mib"]
    assert all(a <= b for a, b in zip(peak, peak[1:])) and 50 < peak[-1] < 64 * 1024  # a peak never falls
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["count"] > 0
    assert (tmp_path / "run" / "export" / "best.pt").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()


def _corrupt_one_jpeg(split: Path, shard: int = 0) -> str:
    """Rewrite ``shard`` with its first sample's RGB JPEG broken; the manifest entry follows
    (a sample that went bad at conversion: the checks at start cannot see it). Returns its key."""
    import dataclasses

    import webdataset as wds

    from depthpi.data.shards import read_manifest, write_manifest
    from depthpi.io import file_sha256

    manifest = read_manifest(split)
    path = split / manifest.shards[shard].name
    members = list(wds.DataPipeline(wds.SimpleShardList([str(path)]), wds.tarfile_to_samples()))
    members[0]["rgb.jpg"] = b"\xff\xd8 not a jpeg"
    with wds.TarWriter(str(path)) as writer:
        for m in members:
            writer.write({k: v for k, v in m.items() if not k.startswith("__") or k == "__key__"})
    entry = manifest.shards[shard]
    manifest.shards[shard] = dataclasses.replace(entry, bytes=path.stat().st_size, sha256=file_sha256(path))
    write_manifest(split, manifest)
    return members[0]["__key__"]


def test_bad_samples_are_skipped_and_reported_per_epoch_in_log_tensorboard_and_metrics(synth_root, tmp_path, caplog):
    shutil.copytree(synth_root, tmp_path / "s")
    bad_train, bad_test = _corrupt_one_jpeg(tmp_path / "s" / "train"), _corrupt_one_jpeg(tmp_path / "s" / "test")
    cfg = load_config(DEMO / "baseline_rgb.yaml", _overrides(
        tmp_path / "s", tmp_path / "run", **{"optim.epochs": 1, "data.batch_size": 4}))
    metrics = train(cfg)
    skipped = metrics["skipped"]
    assert skipped["train"]["total"] == 1 and skipped["eval"]["total"] == 1
    assert skipped["train"]["examples"]["decode:rgb.jpg"]["key"] == bad_train
    assert skipped["eval"]["examples"]["decode:rgb.jpg"]["key"] == bad_test
    assert metrics["count"] == 15 * 17  # 15 of 16 test samples scored, every joint valid
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["skipped"] == skipped
    scalars = tb_scalars(tmp_path / "run")
    assert scalars["data/skipped_train"] == [1.0] and scalars["data/skipped_eval"] == [1.0]
    assert f"skipped 1 bad eval samples this epoch (decode:rgb.jpg 1); e.g. {bad_test}" in caplog.text
    report = evaluate_checkpoint(tmp_path / "run" / "export" / "last.pt", tmp_path / "s" / "test", tmp_path / "ev",
                                 batch_size=4, num_workers=0)
    assert report["skipped"]["total"] == 1 and report["count"] == 15 * 17
    shutil.rmtree(tmp_path / "s")


def test_extra_test_sets_are_scored_after_the_last_epoch_and_checked_at_start(shards, tmp_path):
    overrides = {"run.steps_per_epoch": 2, "data.extra_tests": "{again: %s}" % (shards / "test")}
    metrics = train(load_config(DEMO / "baseline_rgb.yaml", _overrides(shards, tmp_path / "run", **overrides)))
    again = metrics["tests"]["again"]  # the test split once more: the same numbers, by the same code path
    assert (again["mpjpe"], again["pck"], again["count"]) == (metrics["mpjpe"], metrics["pck"], metrics["count"])
    assert again["threshold_mm"] == 50.0 and again["skipped"]["total"] == 0
    scalars = tb_scalars(tmp_path / "run")
    assert len(scalars["eval/mpjpe"]) == 2 and scalars["eval_again/mpjpe"] == [pytest.approx(again["mpjpe"])]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["tests"]["again"]["mpjpe"] == again["mpjpe"]
    missing = {**overrides, "data.extra_tests": "{h36m: %s}" % (tmp_path / "nowhere")}
    with pytest.raises(ValueError, match="data.extra_tests.h36m: .*manifest.json.*data.extra_tests.h36m=null"):
        train(load_config(DEMO / "baseline_rgb.yaml", _overrides(shards, tmp_path / "run2", **missing)))
    assert not (tmp_path / "run2" / "checkpoints").exists()  # failed at start


def test_preemption_saves_at_the_next_log_point_and_the_run_resumes_to_the_end(shards, tmp_path):
    from depthpi.train.checkpoint import latest_checkpoint
    from depthpi.train.preemption import Preempted, StopRequest

    cfg = load_config(DEMO / "baseline_rgb.yaml", _overrides(
        shards, tmp_path / "run", **{"run.log_every": 3, "run.checkpoint_every": 100, "run.steps_per_epoch": 8,
                                     "data.batch_size": 4}))
    stop = StopRequest(grace_s=None)
    stop._event.set()  # as if the signal came during step 1
    with pytest.raises(Preempted) as stopped:
        train(cfg, stop=stop)
    assert stopped.value.step == 3  # the first log point, not the next periodic checkpoint (100)
    state = json.loads((latest_checkpoint(tmp_path / "run") / "trainer.json").read_text())
    assert (state["step"], state["epoch"], state["batches_in_epoch"]) == (3, 0, 3)
    assert state["data"]["train"] == {**state["data"]["train"], "epoch": 0, "batches": 3}  # the loader's position
    train(cfg)
    final = json.loads((latest_checkpoint(tmp_path / "run") / "trainer.json").read_text())
    assert (final["step"], final["epoch"]) == (16, 2)


def test_a_finished_run_re_run_says_so_and_can_be_extended(shards, tmp_path, caplog):
    """Re-running a complete run changes nothing and says how to extend it; that way works. Its
    run directory and its checkpoint directory serve as weights like export/last.pt."""
    import logging

    run = tmp_path / "run"
    common = {"optim.epochs": 1, "run.steps_per_epoch": 2}
    first = train(load_config(DEMO / "baseline_rgb.yaml", _overrides(shards, run, **common)))
    ledger, steps = (run / "ranks" / "rank-0.json").read_text(), [p.name for p in checkpoint_dirs(run)]
    with caplog.at_level(logging.INFO, logger="depthpi"):
        again = train(load_config(DEMO / "baseline_rgb.yaml", _overrides(shards, run, **common)))
    assert "run complete (1 epochs, step 2): nothing to do" in caplog.text
    assert "run.allow_config_change=true optim.epochs=<more>" in caplog.text
    assert again == json.loads((run / "metrics.json").read_text()) and again["mpjpe"] == first["mpjpe"]
    assert (run / "ranks" / "rank-0.json").read_text() == ledger  # the record of what it trained on is kept
    assert [p.name for p in checkpoint_dirs(run)] == steps

    scores = {name: evaluate_checkpoint(weights, shards / "test", tmp_path / name, num_workers=0)["mpjpe"]
              for name, weights in {"file": run / "export" / "last.pt", "run": run,
                                    "checkpoint": checkpoint_dirs(run)[-1]}.items()}
    assert scores["run"] == scores["file"] == scores["checkpoint"]

    longer = train(load_config(DEMO / "baseline_rgb.yaml", _overrides(
        shards, run, **{**common, "optim.epochs": 2, "run.allow_config_change": True})))
    assert json.loads((checkpoint_dirs(run)[-1] / "trainer.json").read_text())["step"] == 4
    assert longer["mpjpe"] != first["mpjpe"]


def test_compiled_run_matches_eager_and_exports_plain_weights(shards, tmp_path, monkeypatch):
    """run.compile: same first-step loss as eager, exported keys without torch.compile's
    wrapper prefix, and the export reproduces the logged evaluation in an eager model.
    Compiled with the aot_eager backend: Dynamo's graph and AOTAutograd's joint graph as
    with inductor, and the same wrapper, without generating and building C++ on a CPU."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    common = {"optim.epochs": 1, "run.steps_per_epoch": 2, "model.init": "none", "model.init_checkpoint": "null"}
    train(load_config(DEMO / "baseline_rgb.yaml", _overrides(shards, tmp_path / "eager", **common)))
    compiled = train(load_config(DEMO / "baseline_rgb.yaml", _overrides(
        shards, tmp_path / "compiled", **common, **{"run.compile": True})))
    losses = {run: tb_scalars(tmp_path / run)["train/loss"] for run in ("eager", "compiled")}
    # Same weights, same batch: the compiled forward is the eager one. Later steps are not
    # compared: Adam's first updates are ~sign(gradient), so rounding-level gradient
    # differences move near-zero coordinates by a full step (seen: 0.6 % at step 2).
    assert losses["compiled"][0] == pytest.approx(losses["eager"][0], rel=1e-4)
    assert len(losses["compiled"]) == 2 and all(map(math.isfinite, losses["compiled"]))
    exported = load_weights(tmp_path / "compiled" / "export" / "last.pt")
    assert exported.keys() == load_weights(tmp_path / "eager" / "export" / "last.pt").keys()
    again = evaluate_checkpoint(tmp_path / "compiled" / "export" / "last.pt", shards / "test",
                                tmp_path / "eval", num_workers=0)
    assert again["mpjpe"] == pytest.approx(compiled["mpjpe"], rel=1e-4)


def _launch_two_cmd(stage: str, config: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "configs/accelerate/cpu_2proc.yaml"), "--num_processes", "2", "--main_process_port", "0",
            str(ROOT / "launch" / f"train_{stage}.py"), "--config", str(config), *overrides]


def _launch_two(stage: str, config: Path, overrides: list[str], extra_env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    result = subprocess.run(_launch_two_cmd(stage, config, overrides), env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _rank_records(run_dir: Path) -> list[dict]:
    return [json.loads((run_dir / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]


def _assert_two_ranks_disjoint_and_in_sync(run_dir: Path):
    records = _rank_records(run_dir)
    assert [r["world_size"] for r in records] == [2, 2]
    assert records[0]["step"] == records[1]["step"] > 0
    for epoch in records[0]["keys"]:
        keys0, keys1 = set(records[0]["keys"][epoch]), set(records[1]["keys"][epoch])
        assert keys0 and keys1 and not keys0 & keys1, f"ranks shared samples in epoch {epoch}"
        assert records[0]["samples_per_epoch"][epoch] == records[1]["samples_per_epoch"][epoch]
    assert records[0]["param_checksum"] == pytest.approx(records[1]["param_checksum"], rel=1e-6)


def _assert_same_weights(a: Path, b: Path):
    first, second = load_weights(a / "export" / "last.pt"), load_weights(b / "export" / "last.pt")
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(second[name], first[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ddp_two_ranks_stay_in_sync_and_a_killed_run_resumes_bit_exactly(shards, tmp_path):
    """Two gloo ranks; the test split is one shard, so rank 1 evaluates nothing (it must not
    wait for rank 0 in a collective rank 0 never enters: a hang fails the run's own timeout)."""
    subset_split(shards / "test", tmp_path / "one" / "test", [0])
    common = _overrides(shards, tmp_path / "whole", **{"optim.epochs": 2, "run.steps_per_epoch": 3,
                                                        "run.checkpoint_every": 2, "data.test": tmp_path / "one" / "test",
                                                        "run.collective_timeout_s": 120, "data.batch_size": 4})
    result = _launch_two("baseline", DEMO / "baseline_rgb.yaml", common)
    assert "2 process(es)" in result.stderr
    _assert_two_ranks_disjoint_and_in_sync(tmp_path / "whole")
    assert json.loads((tmp_path / "whole" / "metrics.json").read_text())["count"] == 8 * 17  # rank 0's shard only
    latest = checkpoint_dirs(tmp_path / "whole")[-1]
    assert {p.name for p in latest.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}

    run_dir = tmp_path / "killed"
    overrides = [o.replace(str(tmp_path / "whole"), str(run_dir)) for o in common]
    launcher = subprocess.Popen(_launch_two_cmd("baseline", DEMO / "baseline_rgb.yaml", overrides),
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not any(int(p.name[5:]) >= 4 for p in checkpoint_dirs(run_dir)):
        time.sleep(0.05)
    os.killpg(launcher.pid, signal.SIGKILL)  # both ranks and the launcher, mid-epoch 2
    launcher.wait()
    assert max(int(p.name[5:]) for p in checkpoint_dirs(run_dir)) < 6, "killed too late"
    resumed = _launch_two("baseline", DEMO / "baseline_rgb.yaml", overrides)
    assert "resumed from" in resumed.stderr
    _assert_same_weights(tmp_path / "whole", run_dir)


@pytest.mark.slow
def test_deepspeed_zero2_from_the_run_config_trains_two_ranks_and_resumes(shards, tmp_path, deepspeed_cpu_ops):
    run_dir = tmp_path / "zero2"
    # bf16 as on a GPU: DeepSpeed's torch_autocast keeps fp32 weights under an autocast forward
    overrides = _overrides(shards, run_dir, **{"optim.epochs": 1, "run.steps_per_epoch": 3, "data.batch_size": 4,
                                               "run.deepspeed.zero_stage": 2, "run.precision": "bf16"})
    result = _launch_two("baseline", DEMO / "baseline_rgb.yaml", overrides)
    assert "precision bf16, DeepSpeed ZeRO-2" in result.stderr
    _assert_two_ranks_disjoint_and_in_sync(run_dir)
    norms = tb_scalars(run_dir)["train/grad_norm"]  # DeepSpeed's own, from the step that clipped by it
    assert norms and all(math.isfinite(n) and n > 0 for n in norms)
    assert (run_dir / "export" / "last.pt").is_file()
    # one checkpoint format: the same directory layout as DDP, DeepSpeed's files inside
    latest = checkpoint_dirs(run_dir)[-1]
    assert (latest / "trainer.json").is_file() and (latest / "random_states_1.pkl").is_file()
    resumed = _launch_two("baseline", DEMO / "baseline_rgb.yaml",
                          overrides + ["optim.epochs=2", "run.allow_config_change=true"])
    assert "resumed from" in resumed.stderr
    assert json.loads((checkpoint_dirs(run_dir)[-1] / "trainer.json").read_text())["epoch"] == 2


def test_student_with_online_teacher_trains_and_teacher_stays_frozen(shards, tmp_path):
    teacher_dir = tmp_path / "teacher"
    train(load_config(DEMO / "teacher.yaml", _overrides(
        shards, teacher_dir, **{"optim.epochs": 1, "run.steps_per_epoch": 2, "model.depth_branch_checkpoint": "null"})))
    teacher_before = load_weights(teacher_dir / "export" / "last.pt")
    student_dir = tmp_path / "student"
    # teacher.model says width 0.5: the weights' run config (width 0.25) wins, and is recorded
    metrics = train(load_config(DEMO / "student.yaml", _overrides(
        shards, student_dir, **{"optim.epochs": 1, "run.steps_per_epoch": 3, "model.init": "none", "model.init_checkpoint": "null",
                                "teacher.weights": teacher_dir / "export" / "last.pt", "teacher.model.width": 0.5,
                                "distill.attention": True, "run.image_every": 2})))
    assert metrics["count"] > 0
    assert load_config(student_dir / "config.yaml").teacher.model.width == 0.25
    scalars = tb_scalars(student_dir)
    assert scalars["train/distillation"][0] > 0 and scalars["train/alpha"][0] == pytest.approx(0.1)
    after = load_weights(teacher_dir / "export" / "last.pt")
    for name in teacher_before:
        assert torch.equal(teacher_before[name], after[name])
    # The exported weights are the evaluated ones: image summaries must not move BN statistics.
    again = evaluate_checkpoint(student_dir / "export" / "last.pt", shards / "test", tmp_path / "eval", num_workers=0)
    assert again["mpjpe"] == pytest.approx(metrics["mpjpe"], rel=1e-6)


def test_teacher_weights_without_a_run_that_do_not_fit_name_the_architecture(shards, tmp_path):
    from depthpi.models.posenet import build_model
    from depthpi.train.run import build_stage
    from depthpi.weights import save_weights

    teacher_cfg = load_config(DEMO / "teacher.yaml", ["model.depth_branch_checkpoint=null", "model.init=none"])
    save_weights(build_model(teacher_cfg.model).state_dict(), tmp_path / "loose" / "teacher.pt")  # no config.yaml
    cfg = load_config(DEMO / "student.yaml", _overrides(shards, tmp_path / "student", **{
        "model.init": "none", "model.init_checkpoint": "null", "teacher.weights": tmp_path / "loose" / "teacher.pt", "teacher.model.width": 0.5}))
    with pytest.raises(ValueError, match=r"teacher.pt: does not fit the model "
                                         r"\(kind teacher, input rgb, arch resnet18, width 0.5, depth_bins 16\).*size mismatch"):
        build_stage(cfg, torch.device("cpu"))


def test_trackers_tensorboard_and_mlflow_receive_the_run_and_a_resume_continues_it(shards, tmp_path, monkeypatch):
    """``run.log_with: [tensorboard, mlflow]`` through accelerate's tracker API; MLflow's local
    file store read back with its own client, and a resumed run logs into the same MLflow run."""
    mlflow = pytest.importorskip("mlflow")
    store = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    run_dir = tmp_path / "run"
    first = _overrides(shards, run_dir, **{"optim.epochs": 1, "run.steps_per_epoch": 2,
                                           "run.log_with": "[tensorboard,mlflow]"})
    train(load_config(DEMO / "baseline_rgb.yaml", first))
    train(load_config(DEMO / "baseline_rgb.yaml", first + ["optim.epochs=2", "run.allow_config_change=true"]))
    client = mlflow.tracking.MlflowClient(store)
    [experiment] = [e for e in client.search_experiments() if e.name == "depthpi"]
    [run] = client.search_runs([experiment.experiment_id])
    assert run.data.params["optim.lr"] == "0.001" and run.data.tags["experiment"] == "demo-1.2"
    history = client.get_metric_history(run.info.run_id, "eval/mpjpe")
    assert [m.step for m in history] == [2, 4]  # both epochs, in one MLflow run
    assert [m.value for m in history] == pytest.approx(tb_scalars(run_dir)["eval/mpjpe"])
    assert "eval/mean_pose_mpjpe" in run.data.metrics and "train/loss" in run.data.metrics


def test_training_reads_its_splits_from_a_url(shards, tmp_path, http_root):
    """data.train / data.test as http URLs: the same run as from disk, the mean pose read remotely."""
    base, server = http_root
    for split in ("train", "test"):
        shutil.copytree(shards / split, server.root / split)
    common = {"optim.epochs": 1, "run.steps_per_epoch": 3}
    local = train(load_config(DEMO / "baseline_rgb.yaml", _overrides(shards, tmp_path / "local", **common)))
    remote = train(load_config(DEMO / "baseline_rgb.yaml", _overrides(shards, tmp_path / "remote", **{
        **common, "data.train": f"{base}/train", "data.test": f"{base}/test"})))
    assert remote["count"] == local["count"] and remote["mpjpe"] == pytest.approx(local["mpjpe"], rel=1e-6)
    assert remote["mean_pose_mpjpe"] == pytest.approx(local["mean_pose_mpjpe"], rel=1e-9)
    assert server.requests["manifest.json"] > 0 and server.requests[read_manifest(shards / "train").shards[0].name]
