"""Faults and bad input, tried as an attacker and a careless user would: nothing hangs,
nothing is silently wrong, a user error is one line with exit status 2.

Shard-level damage (truncation, garbage over a header, ``depthpi shards verify``) is in
``test_shard_stream.py`` / ``test_shard_verify.py``; checkpoints in ``test_checkpoint.py``;
sweep values in ``test_sweep.py``.
"""
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from depthpi.config import load_config
from depthpi.data.build import iter_split
from depthpi.data.features import replay_map
from depthpi.data.pipeline import PipelineConfig
from depthpi.data.schema import SampleError, decode_sample
from depthpi.predict import evaluate_checkpoint
from depthpi.train.engine import train
from depthpi.train.entry import main as train_main
from shard_faults import edit_json, members_of, shard_path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo"


@pytest.fixture
def synth(synth_root):
    return synth_root


def _overrides(root: Path, out: Path, **extra) -> list[str]:
    values = {"data.train": root / "train", "data.test": root / "test", "run.out_dir": out, "data.num_workers": 0,
              "data.batch_size": 4, "data.eval_batch_size": 8, "optim.epochs": 1, "run.steps_per_epoch": 2,
              "run.log_every": 1}
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


# --- one bad sample: a field the schema refuses, whatever the pipeline would have done with it ----
def _set(path: str, value):
    def change(record):
        target = record
        *parents, last = path.split(".")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value
    return change


def _scale(key: str, factor: float):
    return lambda record: record.update({key: (np.asarray(record[key]) * factor).tolist()})


FAULTS = {  # reason → (change to the sample's JSON, field the skip names)
    "unknown skeleton": (_set("skeleton", "smpl_24"), "skeleton"),
    "singular camera": (_set("rgb_K.0.0", 0.0), "rgb_K"),
    "negative focal length": (_set("rgb_K.1.1", -500.0), "rgb_K"),
    "joint_valid of the wrong shape": (_set("joint_valid", [True] * 5), "joint_valid"),
    "root at 1e39 mm (infinite in float32)": (_set("joints.0.0", 1e39), "joints"),
    "root at 1e30 mm (finite, implausible)": (_set("joints.0.0", 1e30), "joints"),
    "joints in metres, not mm": (_scale("joints", 1000.0), "joints"),
    "R not a rotation": (_scale("R", 2.0), "R"),
    "box outside the image": (_set("bbox.0", 1e4), "bbox"),
    "NaN in t": (_set("t.1", float("nan")), "t"),
    "joints as a string": (_set("joints", "many"), "joints"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_bad_field_is_refused_by_name_when_decoding(synth, tmp_path, fault):
    change, field = FAULTS[fault]
    split = tmp_path / "train"
    shutil.copytree(synth / "train", split)
    key = edit_json(split, 0, 2, change)
    members = next(m for m in members_of(shard_path(split, 0)) if m["__key__"] == key)
    with pytest.raises(SampleError) as err:
        decode_sample(members)
    assert err.value.field == field and err.value.key == key


def test_bad_samples_are_skipped_and_counted_in_training_and_evaluation(synth, tmp_path):
    """Several faults planted in the training and the test split: the run and `depthpi eval`
    finish, and every one is reported under its reason, with its key."""
    data = tmp_path / "data"
    shutil.copytree(synth, data)
    planted = {}
    for index, fault in enumerate(("unknown skeleton", "singular camera", "root at 1e39 mm (infinite in float32)")):
        change, field = FAULTS[fault]
        planted[f"decode:{field}"] = edit_json(data / "train", index, 1, change)
        edit_json(data / "test", 0, index, change)
    metrics = train(load_config(DEMO / "baseline_rgb.yaml", _overrides(
        data, tmp_path / "run", **{"run.steps_per_epoch": 0, "data.batch_size": 8})))
    train_skips = metrics["skipped"]["train"]
    assert train_skips["total"] == 3 and set(train_skips["by_reason"]) == set(planted)
    assert {reason: example["key"] for reason, example in train_skips["examples"].items()} == planted
    assert metrics["skipped"]["eval"]["total"] == 3 and metrics["count"] == 13 * 17
    assert np.isfinite(metrics["mpjpe"]) and metrics["mpjpe"] < 5000
    report = evaluate_checkpoint(tmp_path / "run" / "export" / "last.pt", data / "test", tmp_path / "eval",
                                 num_workers=0)
    assert report["skipped"]["total"] == 3 and report["count"] == 13 * 17
    assert report["mpjpe"] == pytest.approx(metrics["mpjpe"], rel=1e-6)


def test_a_map_failure_the_schema_missed_is_skipped_and_reported_not_fatal(synth, tmp_path, caplog):
    """A sample the pipeline cannot process for a reason nobody foresaw: skipped under the
    exception's type, its traceback logged once; the epoch goes on."""
    from depthpi.data.loader import make_loader

    bad = next(iter_split(synth / "test")).key

    def fragile(sample, epoch):
        if sample.key == bad:
            raise np.linalg.LinAlgError("Singular matrix")
        return {"key": sample.key}

    loader = make_loader(synth / "test", 4, fragile, num_workers=0, shuffle=False, drop_last=False)
    keys = [k for batch in loader for k in batch["key"]]
    assert len(keys) == 15 and bad not in keys
    stats = loader.pass_stats()
    assert stats["skipped"] == {"map:LinAlgError": 1} and stats["examples"]["map:LinAlgError"]["key"] == bad
    assert "Traceback" in caplog.text and "Singular matrix" in caplog.text


def _view(index=0, view=None, **extra) -> bytes:
    return json.dumps({"seed": 0, "index": index, "view": {} if view is None else view, **extra}).encode()


def _npy(shape) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.zeros(shape, np.float16))
    return buffer.getvalue()


@pytest.mark.parametrize("extras, field", [
    ({"view.json": b"{not json", "feat.npy": _npy((4, 5, 5))}, "view.json"),
    ({"view.json": json.dumps({"view": {}}).encode(), "feat.npy": _npy((4, 5, 5))}, "view.json"),  # no index
    ({"view.json": _view(index="all"), "feat.npy": _npy((4, 5, 5))}, "view.json"),
    ({"view.json": _view(index=-1), "feat.npy": _npy((4, 5, 5))}, "view.json"),
    ({"view.json": _view(view={"roll": "left"}), "feat.npy": _npy((4, 5, 5))}, "view.json"),
    ({"view.json": _view(), "feat.npy": b"\x93NUMPY garbage"}, "feat.npy"),
    ({"view.json": _view()}, "feat.npy"),
    ({"feat.npy": _npy((4, 5, 5))}, "view.json"),
])
def test_a_corrupt_stored_feature_member_is_a_sample_error(synth, extras, field):
    sample = next(iter_split(synth / "train"))
    sample.extras = extras
    with pytest.raises(SampleError) as err:
        replay_map(sample, 0, cfg=PipelineConfig(input_size=65), seed=0)
    assert err.value.field == field


def test_stored_features_of_more_than_one_view_are_refused(synth):
    # a member of the earlier layout's shape (K, C, h, w) met in a set: one view is (C, h, w)
    sample = next(iter_split(synth / "train"))
    sample.extras = {"view.json": _view(), "feat.npy": _npy((3, 4, 5, 5))}
    with pytest.raises(SampleError, match=r"expected one view \(C, h, w\)"):
        replay_map(sample, 0, cfg=PipelineConfig(input_size=65), seed=0)


@pytest.mark.parametrize("value", [b"5", b"null", b"true", b'"text"', b"[1, 2]"])
def test_metadata_that_is_json_but_not_an_object_is_a_sample_error_naming_json(value):
    from depthpi.data.schema import SampleMeta

    with pytest.raises(SampleError) as err:
        SampleMeta.from_json(value, "k000001")
    assert err.value.field == "json" and err.value.key == "k000001"


def test_metadata_that_is_json_but_not_an_object_is_skipped_and_named_in_training(synth, tmp_path, caplog):
    """``5`` as a training sample's JSON: the run trains on; the mean pose and the epoch skip the
    sample, naming its key (as eval, inspect and precompute do)."""
    import logging

    from shard_faults import _edit_sample

    data = tmp_path / "data"
    shutil.copytree(synth, data)
    key = _edit_sample(data / "train", 1, 0, lambda members: members.update({"json": b"5"}))
    with caplog.at_level(logging.WARNING):
        metrics = train(load_config(DEMO / "baseline_rgb.yaml", _overrides(
            data, tmp_path / "run", **{"run.steps_per_epoch": 0, "data.batch_size": 16})))
    skipped = metrics["skipped"]["train"]
    assert skipped["by_reason"] == {"decode:json": 1} and skipped["examples"]["decode:json"]["key"] == key
    assert "expected a JSON object" in skipped["examples"]["decode:json"]["message"]
    assert f"mean pose of {data / 'train'}: skipped sample {key}" in caplog.text


# --- files a config names: loaded or refused at start, recorded ------------------------------
class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_hostile_depth_branch_file_is_refused_at_start_even_under_init_none(synth, tmp_path, capsys):
    hostile = tmp_path / "depth.pt"
    marker = tmp_path / "code-ran"
    hostile.write_bytes(pickle.dumps({"backbone.conv1.weight": _Payload(marker)}))
    argv = ["--config", str(DEMO / "teacher.yaml"), *_overrides(synth, tmp_path / "run"),
            f"model.depth_branch_checkpoint={hostile}"]
    with pytest.raises(SystemExit) as exit_status:
        train_main("teacher", argv)
    assert exit_status.value.code == 2 and not marker.exists()
    err = capsys.readouterr().err
    assert "depth.pt: not a weights file that loads safely" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_refusal_under_a_launcher_is_one_line_and_the_launchers_root_cause(synth, tmp_path, capsys, monkeypatch):
    """``accelerate launch --use_deepspeed`` without run.deepspeed: rank 0 prints the line, the
    other ranks stay quiet, and each hands it to the launcher (torchrun's error file) for its report."""
    argv = ["--config", str(DEMO / "baseline_rgb.yaml"), *_overrides(synth, tmp_path / "run")]
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    for rank in (1, 0):
        error_file = tmp_path / f"error-{rank}.json"
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        with pytest.raises(SystemExit) as exit_status:
            train_main("baseline", argv)
        err = capsys.readouterr().err
        reported = json.loads(error_file.read_text())["message"]
        assert exit_status.value.code == 2 and reported.startswith("train_baseline.py: error: accelerate launch asked "
                                                                   "for DeepSpeed")
        assert err == ("" if rank else reported + "\n")


def test_what_a_run_loaded_is_recorded_with_its_sha256(synth, tmp_path):
    from depthpi.data.shards import manifest_sha256
    from depthpi.io import file_sha256

    depth_run = tmp_path / "depth"
    train(load_config(DEMO / "baseline_depth.yaml", _overrides(synth, depth_run)))
    teacher_run = tmp_path / "teacher"
    weights = depth_run / "export" / "last.pt"
    train(load_config(DEMO / "teacher.yaml", _overrides(synth, teacher_run, **{
        "model.depth_branch_checkpoint": weights})))
    inputs = json.loads((teacher_run / "inputs.json").read_text())
    assert inputs["model.depth_branch_checkpoint"] == {"path": str(weights), "sha256": file_sha256(weights)}
    assert inputs["data.train"]["manifest_sha256"] == manifest_sha256(synth / "train")
    # and the teacher's depth branch does start from it (the thesis' model 3.2) under init none
    from depthpi.models.posenet import build_model

    config = load_config(teacher_run / "config.yaml")
    assert config.model.init == "none"
    depth = torch.load(weights, weights_only=True)
    assert torch.equal(build_model(config.model).depth.layer2[0].conv1.weight, depth["backbone.layer2.0.conv1.weight"])


# --- user errors: one line, exit status 2 ----------------------------------------------------
@pytest.mark.parametrize("overrides, expected", [
    (["data.batch_size=-4"], "data.batch_size"),
    (["data.num_workers=-1"], "data.num_workers"),
    (["run.checkpoint_every=0"], "run.checkpoint_every"),
    (["run.log_every=0"], "run.log_every"),
    (["optim.epochs=0"], "optim.epochs"),
    (["run.steps_per_epoch=-3"], "run.steps_per_epoch"),
    (["data.train=/nowhere/train"], "/nowhere/train/manifest.json"),
    (["optim.lrr=1"], "optim.lrr"),
])
def test_a_user_error_is_one_line_and_exit_status_2(synth, tmp_path, capsys, overrides, expected):
    argv = ["--config", str(DEMO / "baseline_rgb.yaml"), *_overrides(synth, tmp_path / "run"), *overrides]
    with pytest.raises(SystemExit) as exit_status:
        train_main("baseline", argv)
    err = capsys.readouterr().err
    assert exit_status.value.code == 2 and expected in err and "Traceback" not in err, err


def test_an_empty_split_directory_and_bad_yaml_are_user_errors(synth, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("base: configs/demo/common.yaml\nmodel: {kind: baseline\n")
    for argv, expected in (
            (["--config", str(DEMO / "baseline_rgb.yaml"), *_overrides(synth, tmp_path / "r1"),
              f"data.test={tmp_path / 'empty'}"], "empty/manifest.json"),
            (["--config", str(bad_yaml)], "bad.yaml: not valid YAML")):
        with pytest.raises(SystemExit) as exit_status:
            train_main("baseline", argv)
        err = capsys.readouterr().err
        assert exit_status.value.code == 2 and expected in err and "Traceback" not in err, err


def test_the_process_exit_status_of_a_user_error_is_2(synth, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "launch" / "train_baseline.py"), "--config",
                             str(DEMO / "baseline_rgb.yaml"), *_overrides(synth, tmp_path / "run"),
                             "data.num_workers=-1"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("train_baseline.py: error:")


# --- split roles and config drift -------------------------------------------------------------
def test_a_test_split_as_training_data_is_refused_unless_allowed(synth, tmp_path):
    as_train = _overrides(synth, tmp_path / "run", **{"data.train": synth / "test"})
    with pytest.raises(Exception, match=r"data.train.*'test' split") as err:
        train(load_config(DEMO / "baseline_rgb.yaml", as_train))
    assert "data.allow_split_roles=true" in str(err.value)
    same = _overrides(synth, tmp_path / "run2", **{"data.test": synth / "train"})
    with pytest.raises(Exception, match="name the same split"):
        train(load_config(DEMO / "baseline_rgb.yaml", same))
    metrics = train(load_config(DEMO / "baseline_rgb.yaml", same + ["data.allow_split_roles=true"]))
    assert metrics["count"] > 0


def test_resuming_with_another_config_is_refused_naming_the_keys(synth, tmp_path):
    run = tmp_path / "run"
    train(load_config(DEMO / "baseline_rgb.yaml", _overrides(synth, run)))
    changed = _overrides(synth, run, **{"optim.lr": 0.5, "optim.epochs": 2})
    before = load_config(run / "config.yaml").optim.lr
    with pytest.raises(Exception, match=rf"optim.epochs: 1 -> 2; optim.lr: {before} -> 0.5") as err:
        train(load_config(DEMO / "baseline_rgb.yaml", changed))
    assert "run.allow_config_change=true" in str(err.value)
    assert load_config(run / "config.yaml").optim.lr == before  # the record is untouched
    # bookkeeping keys may change freely; an allowed change is recorded
    train(load_config(DEMO / "baseline_rgb.yaml", _overrides(synth, run, **{"run.log_every": 7})))
    train(load_config(DEMO / "baseline_rgb.yaml", changed + ["run.allow_config_change=true"]))
    assert load_config(run / "config.yaml").optim.lr == 0.5
    assert load_config(run / "config.previous-1.yaml").optim.lr == before
    assert json.loads((run / "metrics.json").read_text())["count"] > 0


def test_verify_at_start_refuses_a_shard_that_differs_from_its_manifest(synth, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth, data)
    path = shard_path(data / "train", 1)
    raw = bytearray(path.read_bytes())
    raw[-2000] ^= 0xFF  # one flipped bit deep in the shard: same size, so only a hash sees it
    path.write_bytes(bytes(raw))
    with pytest.raises(Exception, match=r"data.verify_shards: .*shards differ") as err:
        train(load_config(DEMO / "baseline_rgb.yaml", _overrides(data, tmp_path / "run", **{
            "data.verify_shards": True})))
    assert path.name in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- ranks: no collective may depend on a rank having data ------------------------------------
def _gather_on_one_rank(rank: int, port: int, out: str) -> None:
    from datetime import timedelta

    from accelerate import PartialState

    from depthpi.dist import gather_objects

    # the group as a run forms it: accelerate's, from the launcher's variables
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    PartialState(cpu=True, backend="gloo", timeout=timedelta(seconds=2))
    if rank == 1:
        try:
            gather_objects([{"skips": 0}], "skip reports")
        except RuntimeError as err:
            Path(out).write_text(str(err))
    else:  # busy elsewhere for longer than the timeout: it never joins the collective
        time.sleep(4)
    os._exit(0)  # a timed-out gloo group cannot be torn down cleanly (it aborts): leave at once


@pytest.mark.timeout(120)
def test_a_collective_a_rank_misses_fails_by_name_instead_of_hanging(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "error.txt"
    mp.start_processes(_gather_on_one_rank, args=(port, str(out)), nprocs=2, start_method="spawn", join=True)
    message = out.read_text()
    assert message.startswith("rank 1 of 2: collective 'skip reports' failed or timed out")


# --- a shard name from a manifest is data: never a shell word, never a path out of its folder --------
HOSTILE_NAMES = {
    "shell": "shard-000000.tar;touch {marker};#",
    "escape": "a/../../planted.tar",
    "parent": "../planted.tar",
    "control": "shard-000000.tar\n",
}


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, synth_root):
    """A randomly initialised tiny teacher 'run' (config.yaml + export/last.pt) reading the synthetic set."""
    from depthpi.config import DataConfig, TrainConfig, save_config
    from depthpi.data.pipeline import PipelineConfig
    from depthpi.models.posenet import ModelConfig, build_model

    run = tmp_path_factory.mktemp("teacher")
    model_cfg = ModelConfig(kind="teacher", arch="resnet18", width=0.25, depth_bins=8, init="none")
    save_config(TrainConfig(stage="teacher", model=model_cfg, data=DataConfig(
        train=str(synth_root / "train"), test=str(synth_root / "test"), pipeline=PipelineConfig(input_size=65))),
        run / "config.yaml")
    (run / "export").mkdir()
    torch.save(build_model(model_cfg).state_dict(), run / "export" / "last.pt")
    return run / "export" / "last.pt"


def _read_with(reader: str, split: str, tmp_path: Path, teacher: Path) -> None:
    from depthpi.data.build import inspect_split
    from depthpi.data.loader import make_loader
    from depthpi.data.reference import mean_pose
    from depthpi.data.shard_verify import verify_split
    from depthpi.precompute import PrecomputeConfig, precompute
    from conftest import map_identity

    if reader in ("train", "cache"):
        cache = tmp_path / "cache" if reader == "cache" else None
        loader = make_loader(split, 2, map_identity, rank=0, world_size=1, cache_dir=cache)
        list(loader)
    elif reader == "eval":
        evaluate_checkpoint(teacher, split, tmp_path / "eval", num_workers=0)
    elif reader == "inspect":
        inspect_split(split, tmp_path / "sheet.png")
    elif reader == "verify":
        verify_split(split)
    elif reader == "precompute":
        precompute(PrecomputeConfig(teacher=str(teacher), shards=split, out=str(tmp_path / "out" / "features"),
                                    tap="layer3.1.post_relu", views=1, batch_size=8), device="cpu")
    elif reader == "mean pose":
        mean_pose(split)


# each name where it would do harm: a shell word behind a pipe: command, a path on disk and in a cache
PLACES = [("shell", "pipe"), ("shell", "http"), ("escape", "local"), ("escape", "http"), ("parent", "pipe"),
          ("control", "local")]


@pytest.mark.parametrize("name, where", PLACES, ids=[f"{name}-{where}" for name, where in PLACES])
@pytest.mark.parametrize("reader", ["train", "eval", "inspect", "verify", "precompute", "cache", "mean pose"])
def test_a_hostile_shard_name_is_refused_by_every_reader(synth, tmp_path, request, tiny_teacher, reader, name,
                                                           where):
    """A manifest (on disk, behind a pipe: command or on a server) listing a shard name that is
    a shell command or a path out of the split: refused naming the field before anything is
    run or written; no command runs, no file lands outside its folder."""
    from depthpi.data.shards import ManifestError

    if where == "local" and reader == "cache":
        pytest.skip("a local split has no cache")
    base = request.getfixturevalue("http_root")[0] if where == "http" else None  # serves tmp_path/www
    marker = tmp_path / "pwned"
    split = tmp_path / "www" / "data" / "split"
    split.mkdir(parents=True)
    for shard in read_manifest_of(synth / "train").shards[:2]:
        shutil.copy(synth / "train" / shard.name, split / shard.name)
    manifest = json.loads((synth / "train" / "manifest.json").read_text())
    manifest["shards"] = manifest["shards"][:2]
    manifest["total_count"] = sum(s["count"] for s in manifest["shards"])
    hostile = HOSTILE_NAMES[name].format(marker=marker)
    manifest["shards"][0]["name"] = hostile
    (split / "manifest.json").write_text(json.dumps(manifest))
    location = {"local": str(split), "pipe": f"pipe:cat {split}", "http": f"{base}/data/split"}[where]
    with pytest.raises(ManifestError, match=r"field 'shards\[0\]\.name'.*not a plain file name"):
        _read_with(reader, location, tmp_path, tiny_teacher)
    assert not marker.exists(), "a manifest's shard name ran as a shell command"
    assert not list(tmp_path.rglob("planted.tar")), "a manifest's shard name wrote outside its folder"
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def read_manifest_of(split: Path):
    from depthpi.data.shards import read_manifest

    return read_manifest(split)
