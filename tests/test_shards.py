"""Shards and manifests: round trip, byte-reproducible writing, checks at start, where a split is."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import webdataset as wds
from conftest import fake_sample, map_identity, write_split

from depthpi.data.loader import make_loader
from depthpi.data.schema import decode_sample
from depthpi.data.shard_build import build_shards
from depthpi.data.shards import ManifestError, SplitLocation, TarShard, manifest_sha256, read_manifest, write_manifest
from depthpi.io import file_sha256


# --- writing and manifests -----------------------------------------------------------
def test_round_trip_keys_arrays_and_meta(tmp_path):
    samples = [fake_sample(f"x{i:03d}", seed=i, labeled=i % 3 != 0) for i in range(7)]
    manifest = build_shards(tmp_path, len(samples), 3, samples.__getitem__, params={"source": "test"}, progress=False)
    assert [s.count for s in manifest.shards] == [3, 3, 1]
    urls = [str(tmp_path / s.name) for s in read_manifest(tmp_path).shards]
    decoded = [decode_sample(m) for m in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())]
    assert [s.key for s in decoded] == [s.key for s in samples]
    for got, want in zip(decoded, samples):
        assert np.abs(got.rgb.astype(int) - want.rgb).mean() < 3  # JPEG quality 95
        np.testing.assert_array_equal(got.depth, want.depth)
        assert got.depth.dtype == np.uint16
        for name in ("rgb_K", "depth_K", "R", "t", "joints", "joint_valid", "bbox"):
            a, b = getattr(got.meta, name), getattr(want.meta, name)
            assert (a is None and b is None) or np.array_equal(a, b), name
        assert (got.meta.subject, got.meta.frame, got.meta.labeled) == (want.meta.subject, want.meta.frame,
                                                                           want.meta.labeled)


def test_manifest_counts_sha256_and_atomic_write(tmp_path, monkeypatch):
    manifest = write_split(tmp_path, [4, 2, 5])
    record = json.loads((tmp_path / "manifest.json").read_text())
    assert record["total_count"] == 11 and [s["count"] for s in record["shards"]] == [4, 2, 5]
    for shard in manifest.shards:
        assert shard.sha256 == file_sha256(tmp_path / shard.name)
        assert shard.bytes == (tmp_path / shard.name).stat().st_size
    assert read_manifest(tmp_path).counts == [4, 2, 5]
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]

    def crash(src, dst):
        raise OSError("killed during rename")
    monkeypatch.setattr(os, "replace", crash)
    manifest.params["changed"] = True
    with pytest.raises(OSError):
        write_manifest(tmp_path, manifest)
    assert json.loads((tmp_path / "manifest.json").read_text()) == record  # old one intact


def test_missing_or_mismatched_manifest_fails_at_start_naming_the_file(make_split):
    split = make_split([3, 3])
    with pytest.raises(ManifestError, match="manifest.json"):
        make_loader(split / "nope", 2, map_identity, rank=0, world_size=1)
    (split / "shard-000001.tar").open("ab").write(b"\0" * 512)
    with pytest.raises(ManifestError, match="shard-000001.tar.*bytes"):
        make_loader(split, 2, map_identity, rank=0, world_size=1)
    (split / "shard-000000.tar").unlink()
    with pytest.raises(ManifestError, match="shard-000000.tar.*missing"):
        read_manifest(split)
    (split / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="manifest.json.*unreadable"):
        read_manifest(split)


def test_a_sample_key_with_a_dot_is_refused_and_an_aborted_shard_leaves_nothing(tmp_path):
    shard = TarShard(tmp_path / "d" / "x.tar")
    with pytest.raises(ValueError, match="without '.'"):
        shard.write({"__key__": "a.b", "json": b"{}"})
    shard.abort()
    assert os.listdir(tmp_path / "d") == []


def test_a_manifest_listing_a_shard_twice_is_refused(make_split):
    split = make_split([2, 2])
    record = json.loads((split / "manifest.json").read_text())
    record["shards"][1] = record["shards"][0]
    record["total_count"] = 4
    (split / "manifest.json").write_text(json.dumps(record))
    with pytest.raises(ManifestError, match=r"listed twice \['shard-000000.tar'\]"):
        read_manifest(split)


@pytest.mark.parametrize("spec, root, remote, selected", [
    ("shards/train", "shards/train", False, None),
    ("shards/train/", "shards/train", False, None),
    ("file:///data/train", "/data/train", False, None),
    ("https://host/shards/train/", "https://host/shards/train", True, None),
    ("pipe:curl -s -f https://host/train", "pipe:curl -s -f https://host/train", True, None),
    ("https://host/train/shard-{000001..000003}.tar", "https://host/train", True,
     ("shard-000001.tar", "shard-000002.tar", "shard-000003.tar")),
    ("shards/train/shard-000004.tar", "shards/train", False, ("shard-000004.tar",)),
])
def test_split_locations(spec, root, remote, selected):
    location = SplitLocation.parse(spec)
    assert (location.root, location.remote, location.selected) == (root, remote, selected)
    assert location.url("manifest.json") == f"{root}/manifest.json"


def test_a_brace_pattern_selects_shards_of_the_manifest(make_split):
    split = make_split([2, 3, 4, 5])
    manifest = read_manifest(f"{split}/shard-{{000003,000001}}.tar")
    assert [s.name for s in manifest.shards] == ["shard-000003.tar", "shard-000001.tar"]
    assert manifest.total_count == 8 and manifest.params == {"fixture": True}
    with pytest.raises(ManifestError, match="does not list.*shard-000009.tar"):
        read_manifest(f"{split}/shard-{{000001..000009..8}}.tar")


def test_a_remote_manifest_is_read_through_gopen(make_split):
    split = make_split([2, 3])
    remote = read_manifest(f"pipe:cat {split}")
    assert remote == read_manifest(split)
    assert manifest_sha256(f"pipe:cat {split}") == file_sha256(split / "manifest.json")
    with pytest.raises(ManifestError, match="pipe:cat .*/nowhere/manifest.json: manifest could not be read"):
        read_manifest(f"pipe:cat {split}/nowhere")
