"""Checkpoints: accelerate's format in an atomic directory; damaged ones skipped, crafted ones refused."""
import json
import logging
import os
import pickle
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from depthpi.io import DiskFullError
from depthpi.train.checkpoint import (MARKER, CheckpointError, TrainerState, checkpoint_dirs, latest_checkpoint,
                                      load_checkpoint, resume_latest, save_checkpoint)


@pytest.fixture
def trained():
    """An accelerator with a prepared model and optimiser that have taken one step."""
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)

    def step():
        model(torch.randn(4, 3)).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    return accelerator, model, optimizer, step


def _weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_round_trip_restores_model_optimiser_rng_and_trainer_state(trained, tmp_path):
    accelerator, model, optimizer, step = trained
    saved = _weights(model)
    final = save_checkpoint(accelerator, tmp_path, TrainerState(epoch=1, step=7, data={"train": {"batches": 3}}), 2)
    assert final.name == "step-00000007" and (final / MARKER).is_file() and (final / "random_states_0.pkl").is_file()
    expected_draw = torch.rand(3)  # the RNG stream right after the save
    step()
    trainer = load_checkpoint(accelerator, final)
    assert (trainer.epoch, trainer.step, trainer.data) == (1, 7, {"train": {"batches": 3}})
    for name, value in saved.items():
        assert torch.equal(model.state_dict()[name], value)
    assert torch.equal(torch.rand(3), expected_draw)
    assert optimizer.state_dict()["state"][0]["step"].item() == 1


def test_rotation_keeps_the_newest_and_incomplete_directories_never_count(trained, tmp_path):
    accelerator, *_ = trained
    for step in (2, 4, 6):
        save_checkpoint(accelerator, tmp_path, TrainerState(step=step), keep_last=2)
    (tmp_path / "checkpoints" / "step-00000009").mkdir()  # no marker: a save that died
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-00000004", "step-00000006"]
    assert latest_checkpoint(tmp_path).name == "step-00000006"


def test_saving_a_step_again_swaps_the_new_checkpoint_in_atomically(trained, tmp_path):
    accelerator, model, _, step = trained
    save_checkpoint(accelerator, tmp_path, TrainerState(step=5, epoch=0), keep_last=2)
    step()
    save_checkpoint(accelerator, tmp_path, TrainerState(step=5, epoch=1), keep_last=2)
    assert json.loads((latest_checkpoint(tmp_path) / MARKER).read_text())["epoch"] == 1
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no temporary or old directory left
    # A kill between the two renames leaves only the moved-aside copy: it is restored, not lost.
    root = tmp_path / "checkpoints"
    os.replace(root / "step-00000005", root / ".old-step-00000005")
    assert latest_checkpoint(tmp_path).name == "step-00000005"


def test_damaged_latest_checkpoint_is_skipped_for_the_previous_one(trained, tmp_path, caplog):
    accelerator, model, _, step = trained
    save_checkpoint(accelerator, tmp_path, TrainerState(step=1), keep_last=3)
    good = _weights(model)
    step()
    latest = save_checkpoint(accelerator, tmp_path, TrainerState(step=2), keep_last=3)
    (latest / "model.safetensors").write_bytes(b"\x00" * 16)  # truncated by a full disk, say
    trainer, path = resume_latest(accelerator, tmp_path)
    assert trainer.step == 1 and path.name == "step-00000001"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in good.items())
    assert "skipping damaged checkpoint" in caplog.text and "step-00000002" in caplog.text
    (path / "optimizer.bin").unlink()
    with pytest.raises(CheckpointError, match="no checkpoint could be loaded"):
        resume_latest(accelerator, tmp_path)


class _Payload:
    """Unpickling this runs ``touch`` on a marker file: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_pickle_in_a_checkpoint_is_refused_and_never_run(trained, tmp_path):
    accelerator, *_ = trained
    path = save_checkpoint(accelerator, tmp_path, TrainerState(step=3), keep_last=2)
    marker = tmp_path / "code-ran"
    (path / "random_states_0.pkl").write_bytes(pickle.dumps({"random_state": _Payload(marker)}))
    with pytest.raises(CheckpointError, match=r"random_states_0\.pkl: refused.*weights_only"):
        load_checkpoint(accelerator, path)
    assert not marker.exists()


def test_a_missing_marker_or_unreadable_state_is_an_error_naming_the_checkpoint(trained, tmp_path):
    accelerator, *_ = trained
    path = save_checkpoint(accelerator, tmp_path, TrainerState(step=3), keep_last=2)
    (path / MARKER).write_text("{not json")
    with pytest.raises(CheckpointError, match="step-00000003.*unreadable trainer state"):
        load_checkpoint(accelerator, path)
    (path / MARKER).unlink()
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        load_checkpoint(accelerator, path)


# --- a full disk: one line naming the directory and the space, earlier checkpoints intact ---------
def test_a_checkpoint_on_a_full_disk_fails_in_one_line_and_the_earlier_one_stays(small_disk):
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(512, 512)  # ~1 MiB of weights, 3 MiB with Adam's two moments
    optimizer = torch.optim.Adam(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.randn(2, 512)).sum().backward()
    optimizer.step()
    run_dir = small_disk(5)  # room for one checkpoint, not two
    save_checkpoint(accelerator, run_dir, TrainerState(epoch=1, step=2), keep_last=2)
    first = sum(f.stat().st_size for f in (run_dir / "checkpoints" / "step-00000002").iterdir())
    with pytest.raises(DiskFullError) as full:
        save_checkpoint(accelerator, run_dir, TrainerState(epoch=2, step=4), keep_last=2)
    message = str(full.value)
    assert "\n" not in message and message.startswith(f"{run_dir / 'checkpoints'}: disk full: checkpoint step-00000004")
    assert f"needs about {first / 2**20:.1f} MiB" in message and "the earlier checkpoints are intact" in message
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000002"]  # the partial one removed
    trainer, path = resume_latest(accelerator, run_dir)
    assert (path.name, trainer.step) == ("step-00000002", 2)


@pytest.mark.timeout(300)
def test_training_on_a_disk_that_fills_stops_in_one_line_and_resumes_once_there_is_room(synth_root, small_disk,
                                                                                      capsys, caplog):
    from depthpi.train.entry import main as train_main

    run_dir = small_disk(30)  # one epoch's checkpoint (12 MiB) and exports (2 × 4 MiB); the next one does not fit
    overrides = {"data.train": synth_root / "train", "data.test": synth_root / "test", "run.out_dir": run_dir,
                 "data.num_workers": 0, "data.batch_size": 4, "data.eval_batch_size": 16, "optim.epochs": 2,
                 "run.steps_per_epoch": 2, "run.log_every": 1}
    argv = ["--config", str(Path(__file__).parents[1] / "configs/demo/baseline_rgb.yaml"),
            *[f"{k}={v}" for k, v in overrides.items()]]
    with pytest.raises(SystemExit) as stopped:
        train_main("baseline", argv)
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert stopped.value.code == 1 and "Traceback" not in err and "unexpected pos" not in err
    assert line.startswith(f"train_baseline.py: error: {run_dir}/") and ": disk full: " in line and "MiB" in line
    assert "the last checkpoint is" in line and "step-00000002 (epoch 1, step 2)" in line
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step-00000002"]
    small_disk.resize(run_dir, 80)
    with caplog.at_level(logging.INFO, logger="depthpi"):
        train_main("baseline", argv)  # the same command, with room: resumes and finishes
    assert f"resumed from {run_dir / 'checkpoints' / 'step-00000002'}" in caplog.text
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step-00000002", "step-00000004"]
