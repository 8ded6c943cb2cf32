"""The training engine for real: tiny models on tiny synthetic shards, on CPU.

Covers issue 5: loss decreases on an overfit set, a killed run resumes to the same
parameters, TensorBoard tags, a 2-process DDP run and a 2-process DeepSpeed ZeRO-2 run
through ``accelerate launch`` (gloo), and the student stage with an online teacher.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tb_scalars
from depthpi.config import load_config
from depthpi.data.build import build_synthetic
from depthpi.predict import evaluate_checkpoint
from depthpi.train.checkpoint import checkpoint_dirs
from depthpi.train.engine import train
from depthpi.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    build_synthetic(out, {"train": 64, "test": 16}, samples_per_shard=8, workers=1)
    return out


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

    from depthpi.data.shards import file_sha256, read_manifest, write_manifest

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


def test_bad_samples_are_skipped_and_reported_per_epoch_in_log_tensorboard_and_metrics(tmp_path, capsys):
    import shutil

    build_synthetic(tmp_path / "s", {"train": 16, "test": 8}, samples_per_shard=8, workers=1)
    bad_train, bad_test = _corrupt_one_jpeg(tmp_path / "s" / "train"), _corrupt_one_jpeg(tmp_path / "s" / "test")
    cfg = load_config(DEMO / "baseline_rgb.yaml", _overrides(
        tmp_path / "s", tmp_path / "run", **{"optim.epochs": 1, "data.batch_size": 4}))
    metrics = train(cfg)
    skipped = metrics["skipped"]
    assert skipped["train"]["total"] == 1 and skipped["eval"]["total"] == 1
    assert skipped["train"]["examples"]["decode:rgb.jpg"]["key"] == bad_train
    assert skipped["eval"]["examples"]["decode:rgb.jpg"]["key"] == bad_test
    assert metrics["count"] == 7 * 17  # 7 of 8 test samples scored, every joint valid
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["skipped"] == skipped
    scalars = tb_scalars(tmp_path / "run")
    assert scalars["data/skipped_train"] == [1.0] and scalars["data/skipped_eval"] == [1.0]
    assert f"skipped 1 bad eval samples this epoch (decode:rgb.jpg 1); e.g. {bad_test}" in capsys.readouterr().out
    report = evaluate_checkpoint(tmp_path / "run" / "export" / "last.pt", tmp_path / "s" / "test", tmp_path / "ev",
                                 batch_size=4, num_workers=0)
    assert report["skipped"]["total"] == 1 and report["count"] == 7 * 17
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
        shards, tmp_path / "run", **{"run.log_every": 3, "run.checkpoint_every": 100, "run.steps_per_epoch": 8}))
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


def test_stop_request_defers_the_signal_and_hands_it_back():
    import signal

    from depthpi.train.preemption import StopRequest

    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        stop = StopRequest(signal.SIGUSR2, grace_s=None).install()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.requested(torch.device("cpu")) and calls == []  # taken, not passed on
        stop.hand_over()
        assert calls == [signal.SIGUSR2] and signal.getsignal(signal.SIGUSR2) is not stop._on_signal
        # an engine that never reaches a log point: the watchdog passes the signal on by itself
        slow = StopRequest(signal.SIGUSR2, grace_s=0.2).install()
        os.kill(os.getpid(), signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert calls == [signal.SIGUSR2] * 2 and slow.requested(torch.device("cpu"))
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_compiled_run_matches_eager_and_exports_plain_weights(shards, tmp_path):
    """run.compile: same first-step loss as eager, exported keys without torch.compile's
    wrapper prefix, and the export reproduces the logged evaluation in an eager model."""
    common = {"optim.epochs": 1, "run.steps_per_epoch": 2, "model.init": "none"}
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


def _train_cmd(stage: str, config: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "launch" / f"train_{stage}.py"), "--config", str(config), *overrides]


def test_killed_run_resumes_to_the_parameters_of_an_uninterrupted_run(shards, tmp_path):
    common = {"optim.epochs": 2, "run.steps_per_epoch": 5, "run.checkpoint_every": 2}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_cmd("baseline", DEMO / "baseline_rgb.yaml",
                              _overrides(shards, tmp_path / "whole", **common)), check=True, env=env,
                   capture_output=True)

    run_dir = tmp_path / "killed"
    process = subprocess.Popen(_train_cmd("baseline", DEMO / "baseline_rgb.yaml",
                                          _overrides(shards, run_dir, **common)), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(int(p.name[5:]) >= 6 for p in checkpoint_dirs(run_dir)):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # mid-epoch 2: step 6 of 10
    process.wait()
    steps = [int(p.name[5:]) for p in checkpoint_dirs(run_dir)]
    assert steps and max(steps) < 10, f"the run should have been killed before its end, saw {steps}"

    resumed = subprocess.run(_train_cmd("baseline", DEMO / "baseline_rgb.yaml", _overrides(shards, run_dir, **common)),
                             env=env, capture_output=True, text=True, check=True)
    assert "resumed from" in resumed.stdout
    whole, again = load_weights(tmp_path / "whole" / "export" / "last.pt"), load_weights(run_dir / "export" / "last.pt")
    assert whole.keys() == again.keys()
    for name in whole:
        torch.testing.assert_close(again[name], whole[name], rtol=0, atol=0, msg=name)


def _launch_two(config_file: str, stage: str, config: Path, overrides: list[str], extra_env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / config_file),
           "--num_processes", "2", "--main_process_port", "0",
           str(ROOT / "launch" / f"train_{stage}.py"), "--config", str(config), *overrides]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
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


@pytest.mark.slow
def test_ddp_two_processes_through_accelerate_launch(shards, tmp_path):
    run_dir = tmp_path / "ddp"
    result = _launch_two("configs/accelerate/cpu_2proc.yaml", "baseline", DEMO / "baseline_rgb.yaml",
                         _overrides(shards, run_dir, **{"optim.epochs": 1, "run.steps_per_epoch": 3}))
    assert "2 process(es)" in result.stdout
    _assert_two_ranks_disjoint_and_in_sync(run_dir)


@pytest.mark.slow
def test_deepspeed_zero2_two_processes(shards, tmp_path, deepspeed_cpu_ops):
    run_dir = tmp_path / "zero2"
    _launch_two("configs/accelerate/deepspeed_zero2.yaml", "baseline", DEMO / "baseline_rgb.yaml",
                _overrides(shards, run_dir, **{"optim.epochs": 1, "run.steps_per_epoch": 3}),
                extra_env={"DS_ACCELERATOR": "cpu", "ACCELERATE_MIXED_PRECISION": "no"})
    _assert_two_ranks_disjoint_and_in_sync(run_dir)
    assert (run_dir / "export" / "last.pt").is_file()
    assert any((p / "deepspeed").is_dir() for p in checkpoint_dirs(run_dir))


def test_student_with_online_teacher_trains_and_teacher_stays_frozen(shards, tmp_path):
    teacher_dir = tmp_path / "teacher"
    train(load_config(DEMO / "teacher.yaml", _overrides(
        shards, teacher_dir, **{"optim.epochs": 1, "run.steps_per_epoch": 2, "model.depth_branch_checkpoint": "null"})))
    teacher_before = load_weights(teacher_dir / "export" / "last.pt")
    student_dir = tmp_path / "student"
    # teacher.model says width 0.25: the weights' run config (width 0.125) wins, and is recorded
    metrics = train(load_config(DEMO / "student.yaml", _overrides(
        shards, student_dir, **{"optim.epochs": 1, "run.steps_per_epoch": 3, "model.init": "none",
                                "teacher.weights": teacher_dir / "export" / "last.pt", "teacher.model.width": 0.25,
                                "distill.attention": True, "run.image_every": 2})))
    assert metrics["count"] > 0
    assert load_config(student_dir / "config.yaml").teacher.model.width == 0.125
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
    from depthpi.train.engine import build_stage
    from depthpi.weights import save_weights

    teacher_cfg = load_config(DEMO / "teacher.yaml", ["model.depth_branch_checkpoint=null", "model.init=none"])
    save_weights(build_model(teacher_cfg.model).state_dict(), tmp_path / "loose" / "teacher.pt")  # no config.yaml
    cfg = load_config(DEMO / "student.yaml", _overrides(shards, tmp_path / "student", **{
        "model.init": "none", "teacher.weights": tmp_path / "loose" / "teacher.pt", "teacher.model.width": 0.25}))
    with pytest.raises(ValueError, match=r"teacher.weights .*teacher.pt: does not fit teacher.model "
                                         r"\(kind teacher, arch resnet50, width 0.25, depth_bins 16\).*size mismatch"):
        build_stage(cfg, torch.device("cpu"))


def test_sharded_checkpoint_is_not_moved_while_another_rank_still_writes(tmp_path):
    """After a collective (DeepSpeed) save each rank writes its own files (accelerate's RNG
    states). Rank 1 is a thread that writes late; the barrier returns once every started
    rank is done. The checkpoint must hold both ranks' files."""
    import threading

    from depthpi.train.checkpoint import TrainerState, save_checkpoint

    ranks, errors = [], []

    def rank1_write(directory: Path):
        time.sleep(0.05)
        try:
            (directory / "random_states_1.pkl").write_bytes(b"rng")
        except OSError as error:  # the directory was moved under it
            errors.append(error)

    def save_sharded(directory: str):
        Path(directory).mkdir(parents=True)
        (Path(directory) / "random_states_0.pkl").write_bytes(b"rng")
        ranks.append(threading.Thread(target=rank1_write, args=(Path(directory),)))
        ranks[-1].start()

    def barrier():
        for rank in ranks:
            rank.join()

    final = save_checkpoint(tmp_path, TrainerState(step=3), None, keep_last=2, save_sharded=save_sharded,
                            barrier=barrier)
    assert not errors
    assert sorted(p.name for p in (final / "deepspeed").iterdir()) == ["random_states_0.pkl", "random_states_1.pkl"]
