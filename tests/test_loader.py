"""The loader: equal batches per rank, no sample twice, losses reported with key and shard,
exact resume, and shards streamed over HTTP or a pipe exactly as from disk."""
from __future__ import annotations

import logging
import shutil
from collections import Counter

import numpy as np
import pytest
import shard_faults
import torch
from conftest import key_of, map_identity

from depthpi.data.loader import make_loader, skip_summary
from depthpi.data.shards import ManifestError

UNEVEN = [7, 3, 11, 5, 9, 2, 8, 6]


def epoch_keys(loader, epoch: int) -> list[list[str]]:
    loader.set_epoch(epoch)
    return [list(batch["key"]) for batch in loader]


def flat(batches):
    return [key for batch in batches for key in batch]


def all_keys(counts):
    return sorted(key_of(s, i) for s, n in enumerate(counts) for i in range(n))


# --- equal batches, no repeats, determinism ------------------------------------------------
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
        stats = [loader.pass_stats() for loader in loaders]
        # every shard was read to its end and matched the manifest, though only quota·B samples were used
        assert sum(s["samples_read"] for s in stats) == sum(UNEVEN)
        assert sum(s["samples_used"] for s in stats) == len(keys)
        assert not any(s["shortfalls"] or s["skipped"] or s["refills"] for s in stats)
    assert orders[0] != orders[1]


def test_the_workers_loose_samples_fill_the_ranks_last_batches(make_split):
    # One rank, two workers of 7 samples each, batch 4: each worker yields one full batch of
    # its own and 2 loose samples (its spare: 1); the main process pools the four loose
    # samples into a third batch. Dropping them per worker would leave 2 batches (8 of 14).
    split = make_split([7, 7])
    loader = make_loader(split, 4, map_identity, rank=0, world_size=1, num_workers=2, seed=2)
    assert len(loader) == 3
    for epoch in range(3):
        batches = epoch_keys(loader, epoch)
        assert [len(b) for b in batches] == [4, 4, 4]
        keys = flat(batches)
        assert len(set(keys)) == 12 and {key[:4] for key in batches[-1]} == {"s000", "s001"}  # from both workers
        stats = loader.pass_stats()
        assert stats["samples_read"] == 14 and stats["samples_used"] == 12
    resumed = make_loader(split, 4, map_identity, rank=0, world_size=1, num_workers=2, seed=2)
    resumed.load_state_dict({**loader.state_dict(), "batches": 2})  # epoch 2, resumed before the pooled batch
    assert [list(b["key"]) for b in resumed] == [batches[-1]]


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
    assert sorted(keys) == all_keys(UNEVEN)


def test_too_few_shards_for_readers_is_a_clear_error(make_split):
    split = make_split([5, 5, 5])
    with pytest.raises(ValueError, match="3 shards for 2 rank.*2 worker"):
        make_loader(split, 2, map_identity, rank=0, world_size=2, num_workers=2)


def test_batches_hold_only_the_map_fields_and_reach_persistent_workers_epochs(make_split):
    split = make_split([4, 4, 4, 4])
    loader = make_loader(split, 2, map_identity, rank=0, world_size=1, num_workers=2)
    for epoch in (0, 1, 7):
        loader.set_epoch(epoch)
        for batch in loader:
            assert batch["epoch"].tolist() == [epoch, epoch]
            assert set(batch) == {"key", "rgb", "depth", "epoch", "joints", "labeled"}  # no statistics inside
    assert tuple(batch["rgb"].shape) == (2, 48, 40, 3) and str(batch["depth"].dtype) == "torch.uint16"
    assert batch["labeled"].dtype.is_floating_point is False and isinstance(batch["key"], list)


def test_infinite_stream_never_runs_out(make_split):
    split = make_split([5, 4, 6], name="unlabeled")
    loader = make_loader(split, 2, map_identity, rank=0, world_size=1, num_workers=2, infinite=True,
                         shuffle_buffer=4)
    loader.set_epoch(2)
    stream = iter(loader)
    batches = [next(stream) for _ in range(4 * len(loader))]
    assert all(len(b["key"]) == 2 for b in batches)
    assert set(int(e) for b in batches for e in b["epoch"]) == {2}


# --- bad samples and short shards ------------------------------------------------------------
PLANTED = {key_of(0, 1): "decode:rgb.jpg", key_of(1, 2): "decode:bbox", key_of(2, 0): "decode:joints",
           key_of(2, 4): "map:joints"}


def _plant_bad_samples(key: str, members: dict) -> dict:
    """A bad JPEG, a JSON without ``bbox``, NaN joints, and a pose the map_fn rejects."""
    import json

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


def _run_epoch_on_two_ranks(split, clean, workers=2, batch=2):
    """Keys per rank and the merged summary of one epoch; asserts the batch counts of a clean split."""
    loaders = [make_loader(split, batch, map_identity, rank=r, world_size=2, num_workers=workers, seed=1)
               for r in range(2)]
    expected = len(make_loader(clean, batch, map_identity, rank=0, world_size=2, num_workers=workers, seed=1))
    keys = []
    for loader in loaders:
        batches = epoch_keys(loader, 0)
        assert len(batches) == len(loader) == expected
        assert all(len(b) == batch for b in batches)
        keys += flat(batches)
    stats = [loader.pass_stats() for loader in loaders]
    return keys, skip_summary(stats), [r for s in stats for r in s["refills"]]


def test_bad_samples_and_a_truncated_tar_are_skipped_reported_and_refilled(make_split):
    # 4 shards of 6, 2 ranks x 2 workers, batch 2: no spare sample anywhere, so every
    # sample is read and every bad one forces a refill.
    split = make_split([6, 6, 6, 6], mutate=_plant_bad_samples)
    shard_faults.truncate(split, 3, member=7)  # samples 0-1 whole, sample 2 cut inside its 2nd member
    keys, summary, refills = _run_epoch_on_two_ranks(split, make_split([6, 6, 6, 6], name="clean"))
    for key, reason in PLANTED.items():
        assert summary["by_reason"][reason] >= 1 and summary["examples"][reason]["key"] == key
        assert summary["examples"][reason]["shard"] == f"shard-00000{int(key[1:4])}.tar"
    assert "NaN" in summary["examples"]["decode:joints"]["message"]
    short = summary["shortfalls"]["shard-000003.tar"]  # sample 2 began (a partial sample), 3 never did
    assert (short["expected"], short["read"], short["last_key"]) == (6, 3, key_of(3, 2))
    assert "ReadError" in short["error"] and summary["by_reason"]["shard:missing"] == 3
    assert summary["examples"]["shard:missing"]["shard"] == "shard-000003.tar"
    assert summary["examples"]["decode:json"]["key"] == key_of(3, 2)  # the partial sample: a decode skip
    assert refills and all(r["missing"] > 0 for r in refills)
    assert not set(keys) & set(PLANTED)


def test_bad_samples_use_the_reserve_first_no_repeats(make_split):
    # Batch 4: the ranks hold 19 and 18 samples and yield 4 batches each; their 3 and 2 spare
    # samples are spread over their workers, which keeps one per worker, two for the worker of
    # shard 2 (10 samples, two bad): as many as each worker's shards hold bad samples.
    counts = [9, 9, 10, 9]
    split = make_split(counts, mutate=_plant_bad_samples)
    keys, summary, refills = _run_epoch_on_two_ranks(split, make_split(counts, name="clean"), batch=4)
    assert not refills and len(keys) == len(set(keys))
    assert set(summary["by_reason"]) <= set(PLANTED.values())
    assert all(PLANTED[e["key"]] == reason for reason, e in summary["examples"].items())


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_counts_are_exact_across_workers_and_ranks(make_split, workers):
    # Evaluation reads every sample once: each planted sample is counted exactly once in the
    # merged reports of both ranks, whatever the number of workers carrying them.
    split = make_split(UNEVEN[:4] + [6], mutate=_plant_bad_samples)
    reports, used = [], 0
    for rank in range(2):
        loader = make_loader(split, 3, map_identity, rank=rank, world_size=2, num_workers=workers,
                             shuffle=False, drop_last=False)
        used += len(flat(epoch_keys(loader, 0)))
        reports.append(loader.pass_stats())
    summary = skip_summary(reports)
    assert summary["by_reason"] == Counter(PLANTED.values()) and summary["total"] == len(PLANTED)
    assert used == sum(r["samples_used"] for r in reports) == sum(UNEVEN[:4] + [6]) - len(PLANTED)


def test_garbage_over_a_header_is_a_shortfall_in_evaluation_not_a_smaller_split(make_split):
    # The case of a real eval: 50 samples, 512 garbage bytes over the header of sample 27 of
    # shard 1. tarfile reads it as the end of the archive and raises nothing.
    split = make_split([25, 25])
    shard_faults.garbage_over_header(split, 1, member=3 * 2)  # shard 1 ends after its samples 0-1
    loader = make_loader(split, 8, map_identity, rank=0, world_size=1, num_workers=2, shuffle=False,
                         drop_last=False)
    assert len(flat(epoch_keys(loader, 0))) == 27
    summary = skip_summary([loader.pass_stats()])
    assert summary["total"] == 23 and summary["by_reason"] == {"shard:missing": 23}
    record = summary["shortfalls"]["shard-000001.tar"]
    assert (record["expected"], record["read"], record["last_key"], record["error"]) == (25, 2, key_of(1, 1), None)
    assert "2 of 25 samples read, 23 missing" in summary["examples"]["shard:missing"]["message"]


def test_a_training_pass_keeps_its_batch_count_when_a_shard_comes_up_short(make_split):
    split = make_split([6, 6, 6, 6])
    shard_faults.garbage_over_header(split, 0, member=3 * 4)
    keys, summary, refills = _run_epoch_on_two_ranks(split, make_split([6, 6, 6, 6], name="clean"))
    assert summary["shortfalls"]["shard-000000.tar"]["missing"] == 2
    assert refills  # no spare samples: the worker rewound over its shards to fill the two
    assert not set(keys) & {key_of(0, 4), key_of(0, 5)}


def test_a_manifest_that_overstates_or_understates_counts_is_reported(make_split):
    split = make_split([6, 6, 6, 6])
    shard_faults.wrong_count(split, 1, +2)
    shard_faults.wrong_count(split, 2, -1)
    loader = make_loader(split, 4, map_identity, rank=0, world_size=1, num_workers=0, shuffle=False,
                         drop_last=False)
    assert sorted(flat(epoch_keys(loader, 0))) == all_keys([6, 6, 6, 6])
    summary = skip_summary([loader.pass_stats()])
    assert summary["shortfalls"]["shard-000001.tar"]["missing"] == 2
    assert summary["shortfalls"]["shard-000002.tar"]["missing"] == -1
    assert summary["total"] == 2  # samples read beyond a count are used, not lost


@pytest.mark.parametrize("fault", ["empty_tar", "zero_bytes"])
def test_a_shard_with_no_sample_left_is_reported_and_training_goes_on(make_split, fault):
    split = make_split([4, 4, 4, 4])
    getattr(shard_faults, fault)(split, 2)
    keys, summary, refills = _run_epoch_on_two_ranks(split, make_split([4, 4, 4, 4], name="clean"), workers=0)
    record = summary["shortfalls"]["shard-000002.tar"]
    assert (record["read"], record["missing"], record["last_key"]) == (0, 4, None)
    assert (record["error"] is None) == (fault == "empty_tar")  # an empty file is a ReadError
    assert refills and not {k for k in keys if k.startswith("s002_")}


def test_duplicate_keys_and_keyless_members(make_split):
    split = make_split([5, 5])
    twice = shard_faults.duplicate_key(split, 0, index=1)
    shard_faults.members_without_key(split, 1)  # ignored: they name no sample
    loader = make_loader(split, 2, map_identity, rank=0, world_size=1, num_workers=0, shuffle=False,
                         drop_last=False)
    keys = flat(epoch_keys(loader, 0))
    assert sorted(keys) == all_keys([5, 5])
    summary = skip_summary([loader.pass_stats()])
    assert summary["by_reason"] == {"tar:duplicate key": 1} and summary["examples"]["tar:duplicate key"]["key"] == twice
    assert not summary["shortfalls"]


def test_a_manifest_listing_a_missing_shard_fails_at_start(make_split):
    split = make_split([3, 3])
    name = shard_faults.remove_shard(split, 1)
    with pytest.raises(ManifestError, match=f"{name}.*missing"):
        make_loader(split, 2, map_identity, rank=0, world_size=1)


# --- resume ------------------------------------------------------------------------------------
def test_resume_gives_the_same_batches_bit_for_bit(make_split):
    split = make_split(UNEVEN, mutate=_plant_bad_samples)
    kw = dict(rank=0, world_size=2, num_workers=2, seed=3, shuffle_buffer=8)
    first = make_loader(split, 3, map_identity, **kw)
    first.set_epoch(4)
    full, state = [], None
    for index, batch in enumerate(first):
        full.append(batch)
        if index == 2:
            state = first.state_dict()
    assert state == {**state, "epoch": 4, "batches": 3}
    resumed = make_loader(split, 3, map_identity, **kw)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(full) - 3
    for a, b in zip(rest, full[3:], strict=True):
        assert a["key"] == b["key"] and torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["joints"], b["joints"])
    assert resumed.pass_stats()["skipped"] == first.pass_stats()["skipped"]  # the replayed batches count too


def test_resume_with_another_layout_warns_that_skipped_batches_differ(make_split, caplog):
    split = make_split(UNEVEN)
    kw = dict(rank=0, world_size=2, num_workers=2, seed=3, shuffle_buffer=8)
    state = {**make_loader(split, 3, map_identity, **kw).state_dict(), "epoch": 1, "batches": 2}
    same = make_loader(split, 3, map_identity, **kw)
    caplog.clear()
    with caplog.at_level("WARNING"):
        same.load_state_dict(state)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    requeued_on_fewer_gpus = make_loader(split, 3, map_identity, **{**kw, "world_size": 1})
    with caplog.at_level("WARNING"):
        requeued_on_fewer_gpus.load_state_dict(state)
    assert "different ['world_size']" in caplog.text and str(split) in caplog.text
    assert requeued_on_fewer_gpus.epoch == 1  # it still resumes, at the saved epoch


# --- shards behind a URL -------------------------------------------------------------------------
def _published(split, server, name="train"):
    shutil.copytree(split, server.root / name)
    return name


def test_a_split_over_http_gives_the_batches_of_the_same_split_on_disk(make_split, http_root):
    base, server = http_root
    split = make_split(UNEVEN)
    url = f"{base}/{_published(split, server)}"
    for rank in range(2):
        kw = dict(rank=rank, world_size=2, num_workers=2, seed=7, shuffle_buffer=8)
        local, remote = make_loader(split, 3, map_identity, **kw), make_loader(url, 3, map_identity, **kw)
        assert len(remote) == len(local)
        assert epoch_keys(remote, 1) == epoch_keys(local, 1)
        assert not remote.pass_stats()["shortfalls"]
        state = {**remote.state_dict(), "batches": 2}
        resumed = make_loader(url, 3, map_identity, **kw)
        resumed.load_state_dict(state)
        assert [list(b["key"]) for b in resumed] == epoch_keys(local, 1)[2:]
    assert server.requests["manifest.json"] >= 4


def test_a_dropped_connection_is_a_shortfall_of_that_shard(make_split, http_root):
    base, server = http_root
    split = make_split([4] * 8)
    url = f"{base}/{_published(split, server)}"
    server.drop.add("shard-000002.tar")
    loaders = [make_loader(url, 2, map_identity, rank=r, world_size=2, num_workers=2, seed=1) for r in range(2)]
    batches = [epoch_keys(loader, 0) for loader in loaders]
    assert [len(b) for b in batches] == [len(loaders[0])] * 2 == [8, 8]  # equal batches all the same
    summary = skip_summary([loader.pass_stats() for loader in loaders])
    record = summary["shortfalls"]["shard-000002.tar"]
    # curl's exit status (18: transfer closed early) or the tar's early end, whichever comes first
    assert record["read"] < 4 and record["error"] and list(summary["shortfalls"]) == ["shard-000002.tar"]
    assert summary["by_reason"]["shard:missing"] == 4 - record["read"]
    # Whatever the timing of the drop (the shard may be read again in a refill pass), only
    # samples whose every member lies in the half the server sent can reach a batch.
    path = split / "shard-000002.tar"
    half = path.stat().st_size // 2
    members = shard_faults.member_offsets(path)
    sent = {m.name.split(".")[0] for m in members} - {m.name.split(".")[0] for m in members
                                                       if m.offset_data + m.size > half}
    keys = flat(batches[0]) + flat(batches[1])
    assert {k for k in keys if k.startswith("s002_")} <= sent and record["read"] <= len(sent) < 4


def test_remote_shards_are_cached_once_and_checked(make_split, http_root, tmp_path):
    base, server = http_root
    split = make_split([5, 5, 5])
    url = f"{base}/{_published(split, server)}"
    server.drop.add("shard-000001.tar")
    loader = make_loader(url, 2, map_identity, rank=0, world_size=1, shuffle=False, drop_last=False,
                         cache_dir=tmp_path / "cache")
    for epoch in range(2):
        keys = flat(epoch_keys(loader, epoch))
        assert len(keys) < 15 and loader.pass_stats()["shortfalls"][0]["shard"] == "shard-000001.tar"
    assert server.requests["shard-000000.tar"] == server.requests["shard-000002.tar"] == 1  # read from the cache
    cached = sorted(p.name.split("-", 1)[1] for p in (tmp_path / "cache").iterdir())
    assert cached == ["shard-000000.tar", "shard-000002.tar"]  # the broken download was not kept


def test_pipe_urls_and_brace_patterns_select_shards(make_split):
    split = make_split([3, 4, 5])
    loader = make_loader(f"pipe:cat {split}/shard-{{000000..000001}}.tar", 2, map_identity, rank=0, world_size=1,
                         shuffle=False, drop_last=False)
    assert sorted(flat(epoch_keys(loader, 0))) == all_keys([3, 4]) and not loader.pass_stats()["shortfalls"]
    with pytest.raises(ManifestError, match="could not be read"):
        make_loader(f"pipe:cat {split}/nowhere", 2, map_identity, rank=0, world_size=1)


def test_rgb_survives_the_round_trip_through_http(make_split, http_root):
    base, server = http_root
    split = make_split([4, 4])
    url = f"{base}/{_published(split, server)}"
    a = make_loader(split, 4, map_identity, rank=0, world_size=1, shuffle=False, drop_last=False)
    b = make_loader(url, 4, map_identity, rank=0, world_size=1, shuffle=False, drop_last=False)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x["rgb"].numpy(), y["rgb"].numpy()) and x["key"] == y["key"]


def test_deliveries_keep_their_shape_through_pinned_memory(monkeypatch):
    # On a GPU the DataLoader pins each delivery: the batch must come out pinned, the report as is.
    from torch.utils.data._utils.pin_memory import pin_memory

    from depthpi.data.loader import Delivery

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *args, **kw: pinned.append(self) or self)
    report = {"samples_read": 3, "skipped": {"decode:json": 1}, "shortfalls": [{"shard": "a.tar", "last_key": None}]}
    batch = {"rgb": torch.zeros(2, 3), "key": ["a", "b"]}
    out = pin_memory(Delivery(batch, report))
    assert isinstance(out, Delivery) and out.report == report and out.batch["key"] == ["a", "b"]
    assert len(pinned) == 1 and pin_memory(Delivery(None, report)) == Delivery(None, report)
