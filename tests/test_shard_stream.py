"""Reading shards: every kind of damage is skipped, counted and reported with key and shard."""
from __future__ import annotations

import logging

import pytest
import shard_faults
from conftest import key_of

from depthpi.cli import main
from depthpi.data.build import inspect_split, iter_split
from depthpi.data.shard_stream import ReadLog, skip_summary
from depthpi.data.shards import ManifestError

COUNTS = [4, 4]
CLEAN = {key_of(s, i) for s, n in enumerate(COUNTS) for i in range(n)}

# fault → (damage, skipped {reason: (key, shard)}, shortfalls {shard: (read, error kind)}, keys lost)
FAULTS = {
    "corrupt jpeg": (lambda split: shard_faults.corrupt_jpeg(split, 1, 2),
                     {"decode:rgb.jpg": (key_of(1, 2), "shard-000001.tar")}, {}, {key_of(1, 2)}),
    "corrupt json": (lambda split: shard_faults.corrupt_json(split, 0, 1),
                     {"decode:json": (key_of(0, 1), "shard-000000.tar")}, {}, {key_of(0, 1)}),
    "truncated tar": (lambda split: shard_faults.truncate(split, 1, member=4),  # inside sample 1's json
                      {"decode:json": (key_of(1, 1), "shard-000001.tar")},
                      {"shard-000001.tar": (2, "ReadError")}, {key_of(1, i) for i in (1, 2, 3)}),
    "garbage over a header": (lambda split: shard_faults.garbage_over_header(split, 1, member=6),
                              {}, {"shard-000001.tar": (2, None)}, {key_of(1, 2), key_of(1, 3)}),
    "empty tar": (lambda split: shard_faults.empty_tar(split, 0), {}, {"shard-000000.tar": (0, None)},
                  {key_of(0, i) for i in range(4)}),
    "zero-byte shard": (lambda split: shard_faults.zero_bytes(split, 0), {}, {"shard-000000.tar": (0, "ReadError")},
                        {key_of(0, i) for i in range(4)}),
    "members with no key": (lambda split: shard_faults.members_without_key(split, 0), {}, {}, set()),
    "duplicate key": (lambda split: shard_faults.duplicate_key(split, 0, 1),
                      {"tar:duplicate key": (key_of(0, 1), "shard-000000.tar")}, {}, set()),
    "manifest count too high": (lambda split: shard_faults.wrong_count(split, 1, +1), {},
                                {"shard-000001.tar": (4, None)}, set()),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_every_fault_is_skipped_counted_and_reported(make_split, fault):
    damage, skipped, shortfalls, lost = FAULTS[fault]
    split = make_split(COUNTS)
    damage(split)
    reads = ReadLog("test")
    keys = [sample.key for sample in iter_split(split, reads)]
    assert sorted(keys) == sorted(CLEAN - lost)  # each sample at most once, the rest all there
    report = reads.report
    assert dict(report.skipped) == {reason: 1 for reason in skipped}
    for reason, (key, shard) in skipped.items():
        assert (report.examples[reason]["key"], report.examples[reason]["shard"]) == (key, shard)
    found = {r["shard"]: (r["read"], r["error"] and r["error"].split(":")[0]) for r in report.shortfalls}
    assert found == shortfalls
    summary = skip_summary([report.as_dict()])
    assert summary["total"] == len(skipped) + sum(max(r["missing"], 0) for r in report.shortfalls)


def test_a_manifest_listing_a_missing_shard_fails_at_start_naming_it(make_split):
    split = make_split(COUNTS)
    name = shard_faults.remove_shard(split, 0)
    with pytest.raises(ManifestError, match=f"{name}: listed in .*manifest.json but missing"):
        next(iter_split(split))


def test_inspect_goes_past_bad_samples_and_names_each(make_split, tmp_path, capsys):
    split = make_split([4, 4, 4])
    bad = [shard_faults.corrupt_jpeg(split, 0, 1), shard_faults.corrupt_json(split, 1, 0)]
    shard_faults.garbage_over_header(split, 2, member=3)
    text = inspect_split(split, tmp_path / "sheet.png", count=4, input_size=33)
    assert "12 samples listed in 3 shards, 7 decoded" in text and (tmp_path / "sheet.png").stat().st_size > 0
    assert f"{bad[0]} in shard-000000.tar: decode:rgb.jpg:" in text
    assert f"{bad[1]} in shard-000001.tar: decode:json:" in text
    assert "shard shard-000002.tar: 1 of 4 samples read, 3 missing; stopped after key s002_0000" in text
    main(["shards", "inspect", str(split), "--count", "2", "--size", "33", "--out", str(tmp_path / "cli.png")])
    assert "decode:rgb.jpg" in capsys.readouterr().out


def test_warnings_are_rate_limited_but_never_silent(caplog):
    reads = ReadLog("rank 0 worker 1 epoch 2")
    with caplog.at_level(logging.WARNING):
        for i in range(120):
            reads.skip("decode:json", f"k{i}", "shard-000000.tar", "not valid JSON")
    assert [r.getMessage().split("occurrence ")[1] for r in caplog.records] == [
        "1 of decode:json)", "10 of decode:json)", "100 of decode:json)"]
    assert "rank 0 worker 1 epoch 2: skipped sample k0 of shard shard-000000.tar" in caplog.records[0].getMessage()
    assert reads.take()["skipped"] == {"decode:json": 120} and reads.take() is None


def test_a_short_shard_found_in_several_passes_counts_once(make_split):
    split = make_split(COUNTS)
    shard_faults.garbage_over_header(split, 0, member=3)
    reports = []
    for _ in range(3):  # three passes (refills, epochs of an unlabelled stream) find the same shard
        reads = ReadLog("test")
        list(iter_split(split, reads))
        reports.append(reads.take())
    summary = skip_summary(reports)
    assert summary["by_reason"] == {"shard:missing": 3} and list(summary["shortfalls"]) == ["shard-000000.tar"]
