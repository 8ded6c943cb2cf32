"""``depthpi shards subset``: a split of a range of another's shards, verified like any split."""
import os
import subprocess
import sys

import pytest

from depthpi.data.shard_subset import parse_range, take_shards
from depthpi.data.shard_verify import verify_split
from depthpi.data.shards import ManifestError, read_manifest


def test_a_subset_holds_the_chosen_shards_linked_and_verifies(make_split, tmp_path):
    source = make_split([3, 4, 5, 6])
    head = take_shards(source, tmp_path / "low", 0, 1)
    rest = take_shards(source, tmp_path / "pairs", 1, 4, role="unlabeled")
    full = read_manifest(source)
    assert head.shards == full.shards[:1] and rest.shards == full.shards[1:]
    assert (head.total_count, rest.total_count) == (3, 15)
    assert rest.params["split"] == "unlabeled" and rest.params["subset_of"]["shards"] == [1, 4]
    assert os.path.samefile(source / full.shards[1].name, tmp_path / "pairs" / full.shards[1].name)
    assert verify_split(tmp_path / "pairs", workers=1).ok  # sha256 and counts of every shard
    assert take_shards(source, tmp_path / "pairs", 1, 4, role="unlabeled") == rest  # re-running: a no-op
    with pytest.raises(ManifestError, match="already holds another split"):
        take_shards(source, tmp_path / "pairs", 0, 2)


@pytest.mark.parametrize("text, expected", [("0:12", (0, 12)), ("12:", (12, 96)), (":-84", (0, 12))])
def test_ranges_read_as_python_slices(text, expected):
    assert parse_range(text, 96) == expected


@pytest.mark.parametrize("text", ["12", "a:b", "5:5", "100:"])
def test_a_range_that_selects_nothing_is_refused_in_one_line(text, make_split, tmp_path):
    source = make_split([2, 2])
    result = subprocess.run([sys.executable, "-m", "depthpi.cli", "shards", "subset", str(source), "--out",
                             str(tmp_path / "x"), "--shards", text], capture_output=True, text=True)
    assert result.returncode == 2 and "--shards" in result.stderr and len(result.stderr.splitlines()) == 1
