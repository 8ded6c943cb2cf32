"""``depthpi shards verify`` and the check at training start: every shard against its manifest."""
from __future__ import annotations

import pytest
import shard_faults
from conftest import key_of

from depthpi.cli import main
from depthpi.data.shard_verify import require_intact, verify_split
from depthpi.data.shards import ManifestError


def test_an_intact_split_passes_locally_and_through_a_pipe(make_split, capsys):
    split = make_split([3, 5, 4])
    for location in (split, f"pipe:cat {split}"):
        verdict = verify_split(location)
        assert verdict.ok and [len(v.keys) for v in verdict.shards] == [3, 5, 4]
    main(["shards", "verify", str(split), "--workers", "1"])
    assert capsys.readouterr().out.strip().endswith("OK, 3 shards, 12 samples match the manifest")


def test_each_damage_gets_one_line_and_the_command_exits_1(make_split, capsys):
    split = make_split([4] * 7)
    shard_faults.garbage_over_header(split, 0, member=3)     # same size: only the hash and the count tell
    shard_faults.truncate(split, 1, member=4)                # the manifest follows the cut file
    shard_faults.zero_bytes(split, 2)
    shard_faults.duplicate_key(split, 3, 1)
    shard_faults.wrong_count(split, 4, -1)
    missing = shard_faults.remove_shard(split, 5)
    with pytest.raises(SystemExit) as exit_status:
        main(["shards", "verify", str(split), "--workers", "2"])  # parallel over processes
    assert exit_status.value.code == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].endswith("BAD, 6 of 7 shards differ from the manifest")
    by_shard = {line.split(":")[0]: line for line in lines[:-1]}
    assert set(by_shard) == {f"shard-00000{i}.tar" for i in range(6)}
    assert "sha256 differs" in by_shard["shard-000000.tar"]
    assert "1 samples, the manifest says 4 (a damaged header" in by_shard["shard-000000.tar"]
    assert "unreadable after 2 samples (ReadError" in by_shard["shard-000001.tar"]
    assert "unreadable after 0 samples (ReadError: empty file)" in by_shard["shard-000002.tar"]
    assert "repeated within the shard, e.g. s003_0001" in by_shard["shard-000003.tar"]
    assert "4 samples, the manifest says 3" in by_shard["shard-000004.tar"]
    assert by_shard[missing] == f"{missing}: missing: listed in the manifest, not found"


def test_keys_in_two_shards_and_unlisted_tars_are_reported(make_split, tmp_path):
    split = make_split([2, 2])
    other = make_split([2], name="other")
    (other / "shard-000000.tar").rename(split / "stray.tar")
    shard_faults.follow(split, 1)
    members = shard_faults.members_of(split / "shard-000000.tar")
    shard_faults.write_members(split / "shard-000001.tar", members)  # shard 1 now repeats shard 0's keys
    shard_faults.follow(split, 1, first_key=key_of(0, 0), last_key=key_of(0, 1))
    verdict = verify_split(split)
    assert all(v.ok for v in verdict.shards) and not verdict.ok
    assert verdict.problems == (f"2 key(s) in more than one shard, e.g. key {key_of(0, 0)} in shard-000000.tar and "
                                f"shard-000001.tar",)
    assert verdict.notes == ("1 tar file(s) not in the manifest, e.g. stray.tar (not read by loaders)",)


def test_require_intact_refuses_a_damaged_split_naming_the_shard(make_split):
    split = make_split([3, 3, 3, 3])
    assert require_intact(split).ok
    shard_faults.garbage_over_header(split, 2, member=3)
    with pytest.raises(ManifestError, match="shard-000002.tar: sha256 differs"):
        require_intact(split)
    parts = [verify_split(split, part=(rank, 2)) for rank in range(2)]  # ranks sharing the work
    assert [[v.name for v in p.shards] for p in parts] == [["shard-000000.tar", "shard-000002.tar"],
                                                           ["shard-000001.tar", "shard-000003.tar"]]
    assert [p.ok for p in parts] == [False, True]
