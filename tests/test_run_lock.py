"""One writer per run directory, with real processes: the second is refused naming the first;
a killed holder leaves nothing stuck. (Ranks of one run sharing the lock: the 2-rank runs of
``test_engine.py`` train through it.)"""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from depthpi.train.run_lock import RunDirBusy, RunDirLock

ROOT = Path(__file__).resolve().parents[1]


def _training(synth_root: Path, run_dir: Path) -> list[str]:
    overrides = {"data.train": synth_root / "train", "data.test": synth_root / "test", "run.out_dir": run_dir,
                 "data.num_workers": 0, "data.batch_size": 4, "data.eval_batch_size": 16, "optim.epochs": 1,
                 "run.steps_per_epoch": 2, "run.log_every": 1}
    return [sys.executable, str(ROOT / "launch" / "train_baseline.py"), "--config",
            str(ROOT / "configs" / "demo" / "baseline_rgb.yaml"), *[f"{k}={v}" for k, v in overrides.items()]]


@pytest.mark.timeout(300)
def test_two_runs_started_at_once_on_one_directory_one_trains_the_other_is_refused(synth_root, tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen(_training(synth_root, run_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env) for _ in range(2)]
    results = [(run.pid, run.wait(timeout=280), run.communicate()[1]) for run in runs]
    finished = [r for r in results if r[1] == 0]
    refused = [r for r in results if r[1] != 0]
    assert len(finished) == 1 and len(refused) == 1, [(code, err[-500:]) for _, code, err in results]
    _, code, err = refused[0]
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err
    assert f"in use by pid {finished[0][0]} on host {socket.gethostname()}" in last
    assert not list(run_dir.glob("config.previous-*.yaml"))
    writers = {p.name.split(".")[-2] for p in (run_dir / "tensorboard").rglob("events.out.tfevents.*")}
    assert writers == {str(finished[0][0])}  # event files name their writer's pid: one writer


@pytest.mark.timeout(60)
def test_a_killed_holder_leaves_the_directory_free(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from depthpi.train.run_lock import RunDirLock; "
        f"RunDirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirBusy, match=f"pid {holder.pid} on host"):
            RunDirLock(tmp_path).acquire()
        holder.send_signal(signal.SIGKILL)  # a crash: no clean-up runs
        holder.wait(timeout=10)
        lock = RunDirLock(tmp_path)
        lock.acquire()
        lock.release()
    finally:
        holder.kill()
        holder.wait()
