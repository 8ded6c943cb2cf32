"""Shards, manifests and the loader: round trip, checks at start, equal batches, bad samples, resume."""
from __future__ import annotations

import dataclasses
import json
import os
import tarfile
from collections import Counter
from functools import partial

import numpy as np
import pytest
import webdataset as wds
from conftest import fake_sample, key_of, make_indexed_sample, map_identity, write_split

from depthpi.data.loader import ShardPlanner, make_loader
from depthpi.data.schema import decode_sample
from depthpi.data.shards import ManifestError, ShardWriter, build_shards, file_sha256, read_manifest, write_manifest

UNEVEN = [7, 3, 11, 5, 9, 2, 8, 6]


def epoch_keys(loader, epoch: int) -> list[list[str]]:
    loader.set_epoch(epoch)
    return [list(batch["key"]) for batch in loader]


def flat(batches):
    return [key for batch in batches for key in batch]


# --- writing and manifests -----------------------------------------------------------
def test_round_trip_keys_arrays_and_meta(tmp_path):
    samples = [fake_sample(f"x{i:03d}", seed=i, labeled=i % 3 != 0) for i in range(7)]
    with ShardWriter(tmp_path, max_count=3, params={"source": "test"}) as writer:
        for sample in samples:
            writer.write(sample)
    assert [s.count for s in writer.manifest.shards] == [3, 3, 1]
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
    assert read_manifest(tmp_path, check_sha256=True).counts == [4, 2, 5]
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


def test_sha256_mismatch_detected_on_request(make_split):
    split = make_split([3])
    data = bytearray((split / "shard-000000.tar").read_bytes())
    data[600] ^= 0xFF
    (split / "shard-000000.tar").write_bytes(bytes(data))
    read_manifest(split)  # same size: the cheap check passes
    with pytest.raises(ManifestError, match="sha256"):
        read_manifest(split, check_sha256=True)


# --- planning --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(20))
def test_plan_gives_equal_epoch_invariant_batches_and_uses_each_shard_once(seed):
    rng = np.random.default_rng(seed)
    counts = list(rng.integers(0, 40, rng.integers(4, 30)))
    world, workers = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    batch = int(rng.integers(1, 9))
    planner = ShardPlanner(counts, world, workers, batch)
    for epoch in range(3):
        plan = planner.plan(seed, epoch, shuffle=True, capped=True)
        used = sorted(s for rank in plan.shards for shards in rank for s in shards)
        assert used == list(range(len(counts)))
        for rank in range(world):
            assert sum(plan.quotas[rank]) == planner.batches_per_rank
            for quota, samples in zip(plan.quotas[rank], planner.samples(plan, rank)):
                assert quota * batch <= samples


# --- the loader --------------------------------------------------------------------------
def test_uneven_shards_two_ranks_two_workers_equal_batches_no_duplicates(make_split):
    split = make_split(UNEVEN)
    loaders = [make_loader(split, 3, map_identity, rank=r, world_size=2, num_workers=2, seed=5,
                           shuffle_buffer=8) for r in range(2)]
    assert len(loaders[0]) == len(loaders[1]) > 0
    orders = []
    for epoch in range(2):
        per_rank = [epoch_keys(loader, epoch) for loader in loaders]
        assert [len(b) for b in per_rank] == [len(loaders[0])] * 2
        assert all(len(batch) == 3 for batches in per_rank for batch in batches)
        keys = flat(per_rank[0]) + flat(per_rank[1])
        assert len(keys) == len(set(keys)), "a sample was seen twice in one epoch"
        orders.append(keys)
    assert orders[0] != orders[1]
    assert loaders[0].stats()["skipped_total"] == 0 and not loaders[0].stats()["refills"]


def test_same_seed_same_epoch_gives_same_batches(make_split):
    split = make_split(UNEVEN)
    a = make_loader(split, 3, map_identity, rank=1, world_size=2, num_workers=2, seed=9, shuffle_buffer=8)
    b = make_loader(split, 3, map_identity, rank=1, world_size=2, num_workers=2, seed=9, shuffle_buffer=8)
    assert epoch_keys(a, 3) == epoch_keys(b, 3) == epoch_keys(a, 3)
    assert epoch_keys(a, 3) != epoch_keys(a, 4)


def test_eval_mode_reads_every_sample_exactly_once_across_ranks(make_split):
    split = make_split(UNEVEN)
    keys = []
    for rank in range(2):
        loader = make_loader(split, 4, map_identity, rank=rank, world_size=2, num_workers=2,
                             shuffle=False, drop_last=False)
        batches = epoch_keys(loader, 0)
        assert len(batches) == len(loader)
        keys += flat(batches)
    assert sorted(keys) == sorted(key_of(s, i) for s, n in enumerate(UNEVEN) for i in range(n))


def test_too_few_shards_for_readers_is_a_clear_error(make_split):
    split = make_split([5, 5, 5])
    with pytest.raises(ValueError, match="3 shards for 2 rank.*2 worker"):
        make_loader(split, 2, map_identity, rank=0, world_size=2, num_workers=2)


PLANTED = {key_of(0, 1): "decode:rgb.jpg", key_of(1, 2): "decode:bbox", key_of(2, 0): "decode:joints",
           key_of(2, 4): "map:joints"}


def _plant_bad_samples(key: str, members: dict) -> dict:
    """A bad JPEG, a JSON without ``bbox``, NaN joints, and a pose the map_fn rejects."""
    meta = json.loads(members["json"])
    if PLANTED.get(key) == "decode:rgb.jpg":
        members["rgb.jpg"] = b"\xff\xd8 not a jpeg"
    elif PLANTED.get(key) == "decode:bbox":
        del meta["bbox"]
    elif PLANTED.get(key) == "decode:joints":
        meta["joints"][3][1] = float("nan")  # written as the JSON literal NaN
    elif PLANTED.get(key) == "map:joints":
        meta["extra"] = {"reject": True}
    members["json"] = json.dumps(meta).encode()
    return members


def _truncate(split, shard: int, member: int):
    """Cut a shard in the middle of its ``member``-th tar member and rewrite its manifest entry
    to match (a shard cut while written: the size check at start cannot catch it)."""
    manifest = read_manifest(split)
    path = split / manifest.shards[shard].name
    with tarfile.open(path) as tar:
        info = tar.getmembers()[member]
    path.write_bytes(path.read_bytes()[:info.offset_data + info.size // 2])
    old = manifest.shards[shard]
    manifest.shards[shard] = dataclasses.replace(old, bytes=path.stat().st_size, sha256=file_sha256(path))
    write_manifest(split, manifest)


def _run_epoch_on_two_ranks(split, clean):
    """Keys per rank and merged stats of one epoch; asserts the batch counts of a clean split."""
    loaders = [make_loader(split, 2, map_identity, rank=r, world_size=2, num_workers=2, seed=1) for r in range(2)]
    expected = len(make_loader(clean, 2, map_identity, rank=0, world_size=2, num_workers=2, seed=1))
    keys = []
    for loader in loaders:
        batches = epoch_keys(loader, 0)
        assert len(batches) == len(loader) == expected
        assert all(len(b) == 2 for b in batches)
        keys += flat(batches)
    stats = [loader.stats() for loader in loaders]
    skipped = sum((Counter(s["skipped"]) for s in stats), Counter())
    examples = {k: v for s in stats for k, v in s["examples"].items()}
    return keys, skipped, examples, [r for s in stats for r in s["refills"]]


def test_bad_samples_and_truncated_tar_are_skipped_reported_and_refilled(make_split):
    # 4 shards of 6, 2 ranks x 2 workers, batch 2: no spare sample anywhere, so every
    # sample is read and every bad one forces a refill.
    split = make_split([6, 6, 6, 6], mutate=_plant_bad_samples)
    _truncate(split, 3, member=7)  # keeps samples 0-1 whole, sample 2 cut inside its 2nd member
    keys, skipped, examples, refills = _run_epoch_on_two_ranks(split, make_split([6, 6, 6, 6], name="clean"))
    for key, reason in PLANTED.items():
        assert skipped[reason] >= 1 and examples[reason]["key"] == key  # once per pass that read it
        assert examples[reason]["shard"] == f"shard-00000{int(key[1:4])}.tar"
    assert "NaN" in examples["decode:joints"]["message"]
    truncated = [v for k, v in examples.items() if k not in PLANTED.values()]
    assert truncated and all(v["shard"] == "shard-000003.tar" for v in truncated)
    assert any(k.startswith("tar:") for k in skipped)
    assert {(r["rank"], r["worker"]) for r in refills} and all(r["missing"] > 0 for r in refills)
    assert not set(keys) & set(PLANTED)


def test_bad_samples_use_the_reserve_first_no_repeats(make_split):
    # Batch 2, each worker yields 3 batches; shard 2 (two bad samples) keeps 2 spare, the others 1.
    counts = [7, 7, 8, 7]
    split = make_split(counts, mutate=_plant_bad_samples)
    keys, skipped, examples, refills = _run_epoch_on_two_ranks(split, make_split(counts, name="clean"))
    assert not refills and len(keys) == len(set(keys))
    assert set(skipped) <= set(PLANTED.values())
    assert all(PLANTED[e["key"]] == reason for reason, e in examples.items())


def test_infinite_stream_never_runs_out(make_split):
    split = make_split([5, 4, 6], name="unlabeled")
    loader = make_loader(split, 2, map_identity, rank=0, world_size=1, num_workers=2, infinite=True,
                         shuffle_buffer=4)
    loader.set_epoch(2)
    stream = iter(loader)
    batches = [next(stream) for _ in range(4 * len(loader))]
    assert all(len(b["key"]) == 2 for b in batches)
    assert set(int(e) for b in batches for e in b["epoch"]) == {2}


def test_epoch_reaches_persistent_workers_and_batches_are_tensors(make_split):
    split = make_split([4, 4, 4, 4])
    loader = make_loader(split, 2, map_identity, rank=0, world_size=1, num_workers=2, persistent_workers=True)
    for epoch in (0, 1, 7):
        loader.set_epoch(epoch)
        for batch in loader:
            assert batch["epoch"].tolist() == [epoch, epoch]
    assert tuple(batch["rgb"].shape) == (2, 48, 40, 3) and str(batch["depth"].dtype) == "torch.uint16"
    assert batch["labeled"].dtype.is_floating_point is False and isinstance(batch["key"], list)


def test_resume_skips_to_the_saved_data_position(make_split):
    split = make_split(UNEVEN)
    kw = dict(rank=0, world_size=2, num_workers=2, seed=3, shuffle_buffer=8)
    first = make_loader(split, 3, map_identity, **kw)
    first.set_epoch(4)
    full, state = [], None
    for index, batch in enumerate(first):
        full.append(list(batch["key"]))
        if index == 2:
            state = first.state_dict()
    assert state == {**state, "epoch": 4, "batches": 3}
    resumed = make_loader(split, 3, map_identity, **kw)
    resumed.load_state_dict(state)
    assert [list(b["key"]) for b in resumed] == full[3:]


def test_resume_with_another_layout_warns_that_skipped_batches_differ(make_split, caplog):
    split = make_split(UNEVEN)
    kw = dict(rank=0, world_size=2, num_workers=2, seed=3, shuffle_buffer=8)
    state = {**make_loader(split, 3, map_identity, **kw).state_dict(), "epoch": 1, "batches": 2}
    same = make_loader(split, 3, map_identity, **kw)
    with caplog.at_level("WARNING"):
        same.load_state_dict(state)
    assert not caplog.records
    requeued_on_fewer_gpus = make_loader(split, 3, map_identity, **{**kw, "world_size": 1})
    with caplog.at_level("WARNING"):
        requeued_on_fewer_gpus.load_state_dict(state)
    assert "different ['world_size']" in caplog.text and str(split) in caplog.text
    assert requeued_on_fewer_gpus.epoch == 1  # it still resumes, at the saved epoch


# --- building -----------------------------------------------------------------------------
def _build(out, workers=2):
    return build_shards(out, 23, 5, partial(make_indexed_sample, prefix="b", skip_every=7), workers=workers,
                        params={"source": "fake"}, desc="test")


def test_build_shards_is_deterministic_resumable_and_records_skips(tmp_path):
    reference = _build(tmp_path / "a")
    assert len(reference.shards) == 5 and reference.skipped["count"] == 6
    assert reference.total_count == 23 - 6
    assert {e["reason"] for e in reference.skipped["examples"]} >= {"make_sample returned None",
                                                                    "joints: fake converter rejected it"}
    again = _build(tmp_path / "b", workers=1)
    assert again == reference
    for shard in reference.shards:
        assert (tmp_path / "a" / shard.name).read_bytes() == (tmp_path / "b" / shard.name).read_bytes()
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()

    # Kill simulation: shard 1 lost, shard 3 half-written (temp file, no final tar).
    out = tmp_path / "a"
    kept = (out / "shard-000000.tar").stat().st_mtime_ns
    (out / "shard-000001.tar").unlink()
    (out / "shard-000003.tar").unlink()
    (out / ".shard-000003.tar.tmp").write_bytes(b"half a tar")
    resumed = _build(out, workers=1)
    assert resumed == reference
    assert (out / "shard-000000.tar").stat().st_mtime_ns == kept  # finished shards are not redone
    assert not (out / ".shard-000003.tar.tmp").exists()
    assert all(file_sha256(out / s.name) == s.sha256 for s in reference.shards)
