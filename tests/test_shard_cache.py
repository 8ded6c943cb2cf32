"""Remote shards are trained on only as the manifest describes them: admitted to the cache with
its sha256 and count, hashed again before each use, refetched once, else refused and reported.

A real HTTP server on 127.0.0.1 serves real tar shards (``conftest.http_root``).
"""
import logging
import shutil

import numpy as np
import pytest

import shard_faults
from conftest import map_identity
from depthpi.data.loader import make_loader, skip_summary
from depthpi.data.shard_cache import cache_path
from depthpi.data.shards import read_manifest


def _publish(make_split, server, counts):
    split = make_split(counts)
    shutil.copytree(split, server.root / "train")
    return split


def _epoch(loader, epoch=0):
    loader.set_epoch(epoch)
    return {key: rgb for batch in loader for key, rgb in zip(batch["key"], batch["rgb"].numpy())}


def _loader(url, cache=None):
    return make_loader(url, 2, map_identity, rank=0, world_size=1, shuffle=False, drop_last=False, cache_dir=cache)


def _flip_bytes_in_place(path, offset, count=64):
    data = bytearray(path.read_bytes())
    data[offset:offset + count] = bytes(b ^ 0xFF for b in data[offset:offset + count])
    path.write_bytes(bytes(data))


def test_a_cached_shard_altered_in_place_is_fetched_again_not_trained_on(make_split, http_root, tmp_path, caplog):
    base, server = http_root
    split = _publish(make_split, server, [4, 4])
    loader = _loader(f"{base}/train", tmp_path / "cache")
    truth = _epoch(loader)
    info = read_manifest(split).shards[1]
    cached = cache_path(tmp_path / "cache", info)
    jpeg = next(m for m in shard_faults.member_offsets(cached) if m.name.endswith("rgb.jpg"))
    _flip_bytes_in_place(cached, jpeg.offset_data + jpeg.size // 2)  # same length: a size check sees nothing
    with caplog.at_level(logging.WARNING):
        again = _epoch(loader, 1)
    assert set(again) == set(truth) and all(np.array_equal(again[k], truth[k]) for k in truth)
    assert server.requests[info.name] == 2 and server.requests["shard-000000.tar"] == 1
    assert "altered on disk" in caplog.text and str(cached) in caplog.text
    assert not loader.pass_stats()["shortfalls"]


def test_a_cached_shard_with_a_damaged_header_is_fetched_again_and_loses_nothing(make_split, http_root, tmp_path):
    base, server = http_root
    split = _publish(make_split, server, [5, 5])
    loader = _loader(f"{base}/train", tmp_path / "cache")
    assert len(_epoch(loader)) == 10
    cached = cache_path(tmp_path / "cache", read_manifest(split).shards[0])
    header = shard_faults.member_offsets(cached)[6].offset  # the third sample's first member
    _flip_bytes_in_place(cached, header, 512)
    for epoch in (1, 2):
        assert len(_epoch(loader, epoch)) == 10 and not loader.pass_stats()["shortfalls"]
    assert server.requests["shard-000000.tar"] == 2  # refetched once, then the good copy stays


@pytest.mark.parametrize("cached", [True, False])
def test_a_server_copy_other_than_the_manifests_is_refused_and_reported(make_split, http_root, tmp_path, cached):
    """The server's file changed (same length) but its manifest did not: that shard is fetched
    twice, refused, reported missing, never trained on and never cached."""
    base, server = http_root
    _publish(make_split, server, [4, 4, 4])
    served = server.root / "train" / "shard-000001.tar"
    jpeg = next(m for m in shard_faults.member_offsets(served) if m.name.endswith("rgb.jpg"))
    _flip_bytes_in_place(served, jpeg.offset_data + 10)
    loader = _loader(f"{base}/train", tmp_path / "cache" if cached else None)
    keys = _epoch(loader)
    assert len(keys) == 8 and not any(k.startswith("s001_") for k in keys)
    assert server.requests["shard-000001.tar"] == 2
    summary = skip_summary([loader.pass_stats()])
    record = summary["shortfalls"]["shard-000001.tar"]
    assert record["read"] == 0 and "refused" in record["error"] and "sha256" in record["error"]
    assert summary["by_reason"]["shard:missing"] == 4
    if cached:
        assert sorted(p.name.split("-", 1)[1] for p in (tmp_path / "cache").iterdir()) == [
            "shard-000000.tar", "shard-000002.tar"]


def test_a_shard_is_cached_only_when_it_holds_the_manifests_count(make_split, http_root, tmp_path):
    """Bytes as the manifest's sha256 says, but one sample fewer than its count: read from a
    temporary copy and reported short (as on disk), not admitted to the cache."""
    base, server = http_root
    _publish(make_split, server, [3, 3])
    shard_faults.wrong_count(server.root / "train", 1, +1)
    loader = _loader(f"{base}/train", tmp_path / "cache")
    for epoch in (0, 1):
        assert len(_epoch(loader, epoch)) == 6
        assert loader.pass_stats()["shortfalls"][0]["shard"] == "shard-000001.tar"
    assert [p.name.split("-", 1)[1] for p in (tmp_path / "cache").iterdir()] == ["shard-000000.tar"]
    assert server.requests["shard-000001.tar"] == 2 and server.requests["shard-000000.tar"] == 1
