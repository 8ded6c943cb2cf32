"""The resumable shard builder: deterministic bytes, kept and redone shards, sidecars."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
from conftest import make_indexed_sample

from depthpi.data.shard_build import ShardJob, build, build_shards, params_digest, sidecar_path
from depthpi.data.shard_verify import require_intact
from depthpi.data.shards import read_manifest
from depthpi.io import file_sha256, temporary_path

TESTS = Path(__file__).resolve().parent


def _build(out, workers=2, **params):
    return build_shards(out, 23, 5, partial(make_indexed_sample, prefix="b", skip_every=7), workers=workers,
                        params={"source": "fake", **params}, desc="test", progress=False)


def _tree(out: Path) -> dict[str, bytes]:
    """Every file of a split but the sidecars (they hold no data), by name."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if not p.name.endswith(".done.json")}


def test_build_is_deterministic_across_workers_and_records_skips(tmp_path):
    reference = _build(tmp_path / "a")
    assert len(reference.shards) == 5 and reference.skipped["count"] == 6
    assert reference.total_count == 23 - 6
    assert {e["reason"] for e in reference.skipped["examples"]} >= {"make_sample returned None",
                                                                    "joints: fake converter rejected it"}
    assert _build(tmp_path / "b", workers=1) == reference
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    assert all(file_sha256(tmp_path / "a" / s.name) == s.sha256 for s in reference.shards)


def test_the_sidecar_certifies_a_shard_by_the_digest_of_its_parameters(tmp_path):
    manifest = _build(tmp_path, workers=1)
    record = json.loads(sidecar_path(tmp_path / "shard-000001.tar").read_text())
    params = {"build": {"source": "fake"}, "skeleton": "h36m_17", "start": 5, "stop": 10}
    assert record["params"] == params and record["format"] == 1
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
    assert record["digest"] == params_digest(params) == hashlib.sha256(canonical).hexdigest()
    assert params_digest({"b": 1, "a": [2]}) == params_digest({"a": [2], "b": 1})
    assert record["shard"] == vars(manifest.shards[1])


def test_a_rerun_keeps_finished_shards_and_redoes_lost_or_half_written_ones(tmp_path):
    out = tmp_path / "a"
    reference, files = _build(out, workers=1), _tree(out)
    kept = (out / "shard-000000.tar").stat().st_mtime_ns
    (out / "shard-000001.tar").unlink()                                   # lost
    (out / "shard-000002.tar").write_bytes(b"half a tar")                 # a size the sidecar disowns
    sidecar_path(out / "shard-000003.tar").write_text("{not json")         # a sidecar cut short
    leftover = temporary_path(out / "shard-000004.tar")                    # a writer killed mid-shard
    leftover.write_bytes(b"half")
    assert _build(out, workers=1) == reference
    assert _tree(out) == files
    assert (out / "shard-000000.tar").stat().st_mtime_ns == kept  # finished shards are not redone


def test_a_changed_parameter_redoes_the_shards_it_concerns(tmp_path):
    calls = []

    def fill(job, shard):
        calls.append(job.path.name)
        shard.write({"__key__": job.path.stem, "txt": json.dumps(job.params).encode()})
        return {}

    jobs = [ShardJob(tmp_path / f"s-{i}.tar", {"i": i, "scale": 1.0}) for i in range(3)]
    build(jobs, fill, progress=False)
    assert build(jobs, fill, progress=False) and calls == ["s-0.tar", "s-1.tar", "s-2.tar"]
    jobs[1] = ShardJob(jobs[1].path, {"i": 1, "scale": 2.0})
    records = build(jobs, fill, progress=False)
    assert calls[3:] == ["s-1.tar"] and records[1]["params"]["scale"] == 2.0
    assert b"2.0" in (tmp_path / "s-1.tar").read_bytes()


def test_empty_shards_are_left_out_unless_kept(tmp_path):
    def fill(job, shard):
        return {"note": "nothing to write"}

    job = ShardJob(tmp_path / "empty.tar", {"x": 1})
    (record,) = build([job], fill, progress=False)
    assert record["shard"] is None and not job.path.exists() and record["report"] == {"note": "nothing to write"}
    (record,) = build([ShardJob(job.path, {"x": 2})], fill, progress=False, keep_empty=True)
    assert record["shard"]["count"] == 0 and job.path.stat().st_size == record["shard"]["bytes"]


def test_a_fill_that_fails_leaves_no_shard_and_no_sidecar(tmp_path):
    def fill(job, shard):
        shard.write({"__key__": "a", "txt": b"x"})
        raise RuntimeError("converter bug")

    job = ShardJob(tmp_path / "s.tar", {})
    with pytest.raises(RuntimeError):
        build([job], fill, progress=False)
    assert os.listdir(tmp_path) == []


KILLED_BUILD = """
import sys, time
from functools import partial
sys.path.insert(0, {tests!r})
from conftest import make_indexed_sample
from depthpi.data.shard_build import build_shards

def slow(index):
    time.sleep(0.05)
    return make_indexed_sample(index, prefix="k", skip_every=7)

if __name__ == "__main__":
    build_shards({out!r}, 40, 4, slow, workers=1, params={{"source": "fake"}}, progress=False)
"""


def test_a_killed_build_resumes_to_the_bytes_of_an_uninterrupted_one(tmp_path):
    out = tmp_path / "killed"
    script = tmp_path / "build.py"
    script.write_text(KILLED_BUILD.format(tests=str(TESTS), out=str(out)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script)], env=env)
    deadline = time.monotonic() + 120
    while len(list(out.glob(".*.done.json"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name[1:-len(".done.json")]: p.stat().st_mtime_ns for p in out.glob(".*.done.json")}
    assert 3 <= len(finished) < 10 and not (out / "manifest.json").exists()
    resumed = build_shards(out, 40, 4, partial(make_indexed_sample, prefix="k", skip_every=7), workers=1,
                           params={"source": "fake"}, progress=False)
    clean = build_shards(tmp_path / "clean", 40, 4, partial(make_indexed_sample, prefix="k", skip_every=7),
                         workers=1, params={"source": "fake"}, progress=False)
    assert resumed == clean and _tree(out) == _tree(tmp_path / "clean")
    assert {name: (out / f".{name}.done.json").stat().st_mtime_ns for name in finished} == finished
    assert not [p for p in os.listdir(out) if ".tmp" in p]
    assert read_manifest(out).total_count == 40 - 10  # indices 5, 6, 12, 13, ... skipped
    require_intact(out)


def test_build_shards_refuses_nonsense_sizes(tmp_path):
    with pytest.raises(ValueError, match="samples_per_shard"):
        build_shards(tmp_path, 10, 0, make_indexed_sample)
