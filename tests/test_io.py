"""Atomic writes: readers see the old file or the new one, and nothing is left behind; sha256 digests."""
import hashlib
import io
import os
import threading

import pytest

from depthpi.io import DiskFullError, HashingStream, atomic_path, atomic_write_json, atomic_write_text, file_sha256


def test_digests_are_sha256_of_the_bytes_read_or_written(tmp_path):
    data = os.urandom(3 << 20 | 5)  # several 1 MiB reads and a ragged end
    expected = hashlib.sha256(data).hexdigest()
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == expected
    reader = HashingStream(io.BytesIO(data))
    assert reader.read(7) + reader.read() == data and (reader.hexdigest(), reader.bytes) == (expected, len(data))
    sink = io.BytesIO()
    writer = HashingStream(sink)
    for start in range(0, len(data), 1 << 16):
        writer.write(data[start:start + (1 << 16)])
    assert sink.getvalue() == data and (writer.hexdigest(), writer.bytes) == (expected, len(data))


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"mpjpe": 1.5})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == '{\n "mpjpe": 1.5\n}\n'
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_temporary_keeps_the_suffix_and_sits_beside_the_target(tmp_path):
    target = tmp_path / "sub" / "model.pt2"  # parent made on demand
    with atomic_path(target, fsync=True) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".pt2" and tmp != target
        assert not target.exists()  # nothing visible before the block ends
        tmp.write_bytes(b"x")
    assert target.read_bytes() == b"x"


def test_concurrent_writers_of_one_file_do_not_share_a_temporary(tmp_path):
    path, names = tmp_path / "manifest.json", set()
    barrier = threading.Barrier(4)

    def write(i):
        with atomic_path(path) as tmp:
            names.add(tmp.name)
            barrier.wait()  # all four temporaries exist at once
            tmp.write_text(str(i))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(names) == 4
    assert path.read_text() in {"0", "1", "2", "3"} and os.listdir(tmp_path) == ["manifest.json"]


def test_json_turns_numpy_scalars_into_numbers(tmp_path):
    import numpy as np
    atomic_write_json(tmp_path / "m.json", {"pck": np.float32(0.5)}, indent=None)
    assert (tmp_path / "m.json").read_text() == '{"pck": 0.5}\n'
    atomic_write_text(tmp_path / "m.json", "replaced")
    assert (tmp_path / "m.json").read_text() == "replaced"


def test_atomic_file_appears_whole_on_commit_and_not_at_all_on_failure(tmp_path):
    from depthpi.io import AtomicFile

    path = tmp_path / "shard.tar"
    with AtomicFile(path) as f:
        f.write(b"first ")
        assert not path.exists() and f.tmp.suffix == ".tar"  # written beside it, under another name
        f.write(b"version")
    assert path.read_bytes() == b"first version"
    with pytest.raises(OSError), AtomicFile(path) as f:
        f.write(b"second, cut short")
        raise OSError("disk full")
    assert path.read_bytes() == b"first version" and os.listdir(tmp_path) == ["shard.tar"]


def test_remove_temporaries_deletes_only_what_writers_of_that_file_left(tmp_path):
    from depthpi.io import remove_temporaries, temporary_path

    target, other = tmp_path / "shard-000001.tar", tmp_path / "shard-000011.tar"
    for path in (target, other):
        path.write_bytes(b"done")
    left = [target.with_name(".shard-000001.999-1.tmp.tar"), temporary_path(target)]
    kept = [temporary_path(other), tmp_path / ".shard-000001.tar.done.json"]
    for path in left + kept:
        path.write_bytes(b"x")
    assert sorted(remove_temporaries(target)) == sorted(left)
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in [target, other, *kept])


# --- a full disk: one line naming the directory and the space; the file it replaces is untouched ---
def test_an_export_on_a_full_disk_names_the_directory_and_size_and_keeps_the_old_file(small_disk):
    import torch

    from depthpi.weights import load_weights, save_weights

    export = small_disk(3) / "export"
    save_weights({"w": torch.ones(1000)}, export / "last.pt")
    state = {"w": torch.zeros(1 << 20)}  # 4 MiB: does not fit
    with pytest.raises(DiskFullError) as full:
        save_weights(state, export / "last.pt")
    message = str(full.value)
    assert "\n" not in message and message.startswith(f"{export}: disk full: writing last.pt needs about 4.0 MiB, ")
    assert torch.equal(load_weights(export / "last.pt")["w"], torch.ones(1000))
    assert sorted(p.name for p in export.iterdir()) == ["last.pt"]  # no temporary left


def test_a_shard_build_on_a_full_disk_stops_in_one_line_and_the_same_command_finishes_it(small_disk, capsys,
                                                                                          caplog):
    import logging

    from depthpi.cli import main
    from depthpi.data.shard_verify import verify_split

    disk = small_disk(0.6)
    argv = ["shards", "build", "--out", str(disk / "synth"), "--train", "24", "--test", "0", "--unlabeled", "0",
            "--per-shard", "6", "--workers", "1"]
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert stopped.value.code == 1 and line.startswith(f"depthpi shards: error: {disk / 'synth' / 'train'}: disk full")
    assert "shards left need about" in line and "the finished ones are kept" in line
    finished = sorted(p.name for p in (disk / "synth" / "train").glob("shard-*.tar"))
    assert finished and not list((disk / "synth" / "train").glob(".*.tmp*"))
    small_disk.resize(disk, 8)
    with caplog.at_level(logging.INFO, logger="depthpi"):
        main(argv)
    assert f"{len(finished)} of 4 shards finished earlier with the same parameters, kept" in caplog.text
    assert verify_split(disk / "synth" / "train").ok
