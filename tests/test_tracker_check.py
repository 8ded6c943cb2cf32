"""Trackers are checked before the first step: a missing package, an unusable MLflow store or a
silent MLflow server ends the run at start in one line naming the tracker, exit status 2."""
import importlib.util
import time
from pathlib import Path

import pytest

from depthpi.train.entry import main as train_main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo" / "baseline_rgb.yaml"


def _argv(synth_root: Path, run_dir: Path, **extra) -> list[str]:
    values = {"data.train": synth_root / "train", "data.test": synth_root / "test", "run.out_dir": run_dir,
              "data.num_workers": 0, "data.batch_size": 4, "optim.epochs": 1, "run.steps_per_epoch": 1, **extra}
    return ["--config", str(CONFIG), *[f"{k}={v}" for k, v in values.items()]]


def _refused(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stopped:
        train_main("baseline", argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "Traceback" not in err, err[-2000:]
    return err.strip().splitlines()[-1]


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_tracker_that_is_not_installed_is_named_with_its_install_line(synth_root, tmp_path, capsys):
    line = _refused(_argv(synth_root, tmp_path / "run", **{"run.log_with": "[tensorboard,wandb]"}), capsys)
    assert "run.log_with" in line and "wandb is not installed (pip install wandb)" in line
    assert "run.log_with=[tensorboard]" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_mlflow_store_under_a_regular_file_is_refused_at_start(synth_root, tmp_path, capsys, monkeypatch):
    pytest.importorskip("mlflow")
    (tmp_path / "afile").write_text("not a directory")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path}/afile/mlruns")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    line = _refused(_argv(synth_root, tmp_path / "run", **{"run.log_with": "[tensorboard,mlflow]"}), capsys)
    assert "mlflow cannot use its tracking store" in line and f"{tmp_path}/afile/mlruns" in line
    assert "MLFLOW_TRACKING_URI" in line and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.timeout(60)
def test_a_silent_mlflow_server_is_given_up_after_the_tracker_timeout(synth_root, tmp_path, capsys, monkeypatch,
                                                                      silent_server):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", silent_server)
    start = time.monotonic()
    line = _refused(_argv(synth_root, tmp_path / "run", **{"run.log_with": "[mlflow]",
                                                           "run.tracker_timeout_s": 1}), capsys)
    assert f"mlflow cannot use its tracking store {silent_server}" in line and "timed out" in line.lower()
    assert time.monotonic() - start < 30  # MLflow alone retries for minutes
