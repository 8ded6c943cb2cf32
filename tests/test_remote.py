"""Reading splits from a server: commands without a shell, timeouts, bounded retries, outages.

Real servers on 127.0.0.1: the HTTP server of ``conftest.http_root`` (with shards that stall
halfway), one that accepts connections and never answers, and one that goes away.
"""
import logging
import shutil
import threading
import time
from pathlib import Path

import pytest

from conftest import _ShardHandler, map_identity, serve_directory, stop_server
from depthpi.data import remote
from depthpi.data.loader import make_loader, skip_summary
from depthpi.data.remote import RemoteConfig, ServerUnreachable, command
from depthpi.data.shard_verify import verify_split
from depthpi.data.shards import ManifestError, read_manifest

QUICK = RemoteConfig(connect_timeout_s=2, stall_timeout_s=1, retries=1, retry_delay_s=0.01)


@pytest.fixture
def quick():
    remote.configure(QUICK)  # conftest restores the settings after the test


def _published(split, server, name="train"):
    shutil.copytree(split, server.root / name)
    return name


def test_a_command_is_an_argument_list_with_the_name_inside_one_argument():
    assert command("pipe:curl -s 'https://host/a b'", "shard-000001.tar") == [
        "curl", "-s", "https://host/a b/shard-000001.tar"]
    argv = command("https://host/ntu/train", "shard-000001.tar", QUICK)
    assert argv[0] == "curl" and argv[-1] == "https://host/ntu/train/shard-000001.tar"
    assert argv[argv.index("--connect-timeout") + 1] == "2" and argv[argv.index("--speed-time") + 1] == "1"
    with pytest.raises(ValueError, match="scheme 'hf'"):
        command("hf://org/data", "shard-000001.tar")


@pytest.mark.timeout(60)
def test_a_server_that_accepts_and_never_answers_fails_the_read_after_the_stall_timeout(silent_server, quick):
    start = time.monotonic()
    with pytest.raises(ManifestError, match="no data for 1 s"):
        read_manifest(f"{silent_server}/train")
    assert time.monotonic() - start < 10  # two tries of ~1 s, not forever


@pytest.mark.timeout(60)
def test_a_shard_that_stalls_is_retried_then_missing_and_the_epoch_goes_on(make_split, http_root, quick):
    base, server = http_root
    split = make_split([4, 4, 4])
    url = f"{base}/{_published(split, server)}"
    server.stall.add("shard-000001.tar")
    loader = make_loader(url, 2, map_identity, rank=0, world_size=1, shuffle=False, drop_last=False)
    keys = [k for batch in loader for k in batch["key"]]
    assert len(keys) == 8 and not any(k.startswith("s001_") for k in keys)
    assert server.requests["shard-000001.tar"] == 1 + QUICK.retries
    record = skip_summary([loader.pass_stats()])["shortfalls"]["shard-000001.tar"]
    assert record["read"] == 0 and "no data for 1 s" in record["error"]


def _stalled_split(make_split, http_root, stalled: str) -> str:
    """URL of a published two-shard split whose server sends half of ``stalled`` and then nothing."""
    base, server = http_root
    url = f"{base}/{_published(make_split([3, 3]), server)}"
    server.stall.add(stalled)
    return url


@pytest.mark.timeout(60)
def test_verify_reports_a_stalled_shard_instead_of_hanging(make_split, http_root, quick):
    url = _stalled_split(make_split, http_root, "shard-000000.tar")
    verdict = verify_split(url)
    assert not verdict.ok and [v.name for v in verdict.bad] == ["shard-000000.tar"]
    assert "no data for 1 s" in verdict.bad[0].line()


@pytest.mark.timeout(60)
def test_a_server_gone_mid_epoch_ends_iteration_in_one_line_naming_it(make_split, http_root, quick):
    """Through a loader worker: the main process gets the outage as one line, not a DataLoader traceback."""
    base, server = http_root
    split = make_split([4, 4])
    url = f"{base}/{_published(split, server)}"
    loader = make_loader(url, 2, map_identity, rank=0, world_size=1, num_workers=1, shuffle=False, drop_last=False)
    server.shutdown()
    server.server_close()  # connections are refused from now on
    with pytest.raises(ServerUnreachable) as err:
        list(loader)
    message = str(err.value)
    assert base in message and "unreachable" in message and "shard-000000.tar" in message
    assert "\n" not in message and "Traceback" not in message


class _GoesAwayAfterACheckpoint(_ShardHandler):
    """A shard server that goes away (connections refused) at the first shard request made
    after the run directory ``server.run_dir`` holds a complete checkpoint."""

    def do_GET(self):
        checkpointed = list(self.server.run_dir.glob("checkpoints/step-*/trainer.json"))
        if checkpointed and self.path.endswith(".tar") and not self.server.gone.is_set():
            self.server.gone.set()
            threading.Thread(target=stop_server, args=(self.server,)).start()
            self.close_connection = True
            return  # no answer at all, then the port closes
        return super().do_GET()


@pytest.mark.timeout(240)
def test_a_server_outage_stops_training_in_one_line_and_the_same_command_resumes(synth_root, tmp_path, capsys,
                                                                                   caplog):
    from depthpi.train.checkpoint import checkpoint_dirs
    from depthpi.train.entry import main as train_main

    www, run_dir = tmp_path / "www", tmp_path / "run"
    shutil.copytree(synth_root / "train", www / "train")
    server = serve_directory(www, handler=_GoesAwayAfterACheckpoint)
    server.run_dir, server.gone = run_dir, threading.Event()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    overrides = {"data.train": f"{base}/train", "data.test": synth_root / "test", "run.out_dir": run_dir,
                 "data.num_workers": 0, "data.batch_size": 4, "data.eval_batch_size": 16, "optim.epochs": 2,
                 "run.steps_per_epoch": 2, "run.log_every": 1, "data.remote.retries": 1,
                 "data.remote.retry_delay_s": 0.01}
    argv = ["--config", str(Path(__file__).parents[1] / "configs/demo/baseline_rgb.yaml"),
            *[f"{k}={v}" for k, v in overrides.items()]]
    with pytest.raises(SystemExit) as stopped:
        train_main("baseline", argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 1 and server.gone.is_set()
    assert "Traceback" not in "\n".join(err)
    line = err[-1]
    assert line.startswith("train_baseline.py: error: ") and f"{base}: unreachable" in line
    assert "step-00000002 (epoch 1, step 2): the same command resumes from it" in line
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step-00000002"]

    server = serve_directory(www, port=server.server_address[1])  # the server is back
    try:
        with caplog.at_level(logging.INFO, logger="depthpi"):
            metrics = train_main("baseline", argv)
    finally:
        stop_server(server)
    assert f"resumed from {run_dir / 'checkpoints' / 'step-00000002'}" in caplog.text
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step-00000002", "step-00000004"] and metrics["count"] > 0


@pytest.mark.timeout(60)
def test_shards_verify_gives_up_on_a_stalled_shard_in_its_worker_processes(make_split, http_root, capsys):
    from depthpi.cli import main

    url = _stalled_split(make_split, http_root, "shard-000001.tar")
    with pytest.raises(SystemExit) as stopped:
        main(["shards", "verify", url, "--workers", "2", "--stall-timeout", "1", "--retries", "0"])
    out = capsys.readouterr().out
    assert stopped.value.code == 1 and "shard-000001.tar: unreadable" in out and "no data for 1 s" in out
