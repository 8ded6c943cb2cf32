"""Atomic writes: readers see the old file or the new one, and nothing is left behind."""
import os
import threading

import pytest

from depthpi.io import atomic_path, atomic_write_json, atomic_write_text


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
