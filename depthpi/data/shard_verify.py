"""Every shard of a split against its manifest: bytes, sha256, samples, keys.

``depthpi shards verify DIR`` runs :func:`verify_split` over processes with a progress
bar and prints one line per bad shard; the engine calls :func:`require_intact` to refuse a
damaged split before training starts. A shard is read once: its bytes are hashed as they
pass, and its samples are counted by the same tar parsing the loader uses, so a damaged
header that makes ``tarfile`` stop early shows here as a count below the manifest's.
Works on local splits and on URLs alike (:mod:`depthpi.data.shards`).
"""
from __future__ import annotations

import logging
import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from depthpi.data import remote
from depthpi.data.shard_stream import read_to_end
from depthpi.data.shards import MANIFEST_NAME, ManifestError, ShardInfo, SplitLocation, read_manifest
from depthpi.data.tar_members import TarErrors, describe, tar_samples
from depthpi.io import HashingStream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardVerdict:
    """One shard checked: what is wrong with it (nothing when ``ok``) and its keys."""

    name: str
    problems: tuple[str, ...]
    keys: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        return f"{self.name}: " + "; ".join(self.problems)


@dataclass(frozen=True)
class SplitVerdict:
    """A split checked: one verdict per manifest shard, plus what concerns the split as a whole."""

    split: str
    shards: tuple[ShardVerdict, ...]
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems and all(v.ok for v in self.shards)

    @property
    def bad(self) -> list[ShardVerdict]:
        return [v for v in self.shards if not v.ok]

    def lines(self) -> list[str]:
        """One line per bad shard and split-level problem, then the verdict."""
        samples = sum(len(set(v.keys)) for v in self.shards)
        verdict = (f"{self.split}: OK, {len(self.shards)} shards, {samples} samples match the manifest" if self.ok
                   else f"{self.split}: BAD, {len(self.bad)} of {len(self.shards)} shards differ from the manifest"
                        + (f", {len(self.problems)} split-level problem(s)" if self.problems else ""))
        return [v.line() for v in self.bad] + list(self.problems) + [f"note: {n}" for n in self.notes] + [verdict]


def verify_shard(location: SplitLocation, info: ShardInfo) -> ShardVerdict:
    """Hash and parse one shard; compare size, sha256, count, first/last key; find repeated keys."""
    keys, problems = [], []
    errors = TarErrors(None, info.name)
    try:
        with location.open(info.name) as raw:
            reader = HashingStream(raw)
            keys = [sample["__key__"] for sample in tar_samples(reader, location.url(info.name), errors)]
            read_to_end(reader)
    except FileNotFoundError:
        return ShardVerdict(info.name, ("missing: listed in the manifest, not found",))
    except Exception as err:  # a damaged tar or a failing stream is a verdict, not a crash
        errors.fatal = errors.fatal or describe(err)
    if errors.fatal:
        problems.append(f"unreadable after {len(keys)} samples ({errors.fatal})")
    else:
        if reader.bytes != info.bytes:
            problems.append(f"{reader.bytes} bytes, the manifest says {info.bytes}")
        if reader.hexdigest() != info.sha256:
            problems.append("sha256 differs from the manifest")
    distinct = len(set(keys))  # what a loader reads: a repeated key is skipped
    if distinct != info.count:
        ended = not errors.fatal and distinct < info.count
        problems.append(f"{distinct} samples, the manifest says {info.count}" +
                        (" (a damaged header reads as the end of the archive)" if ended else ""))
    elif keys and (keys[0], keys[-1]) != (info.first_key, info.last_key):
        problems.append(f"first/last key {keys[0]}/{keys[-1]}, the manifest says {info.first_key}/{info.last_key}")
    repeated = sorted(k for k, n in Counter(keys).items() if n > 1)
    if repeated:
        problems.append(f"{len(repeated)} key(s) repeated within the shard, e.g. {repeated[0]}")
    if errors.duplicate_members:
        problems.append(f"{errors.duplicate_members} member name(s) repeated within a sample")
    return ShardVerdict(info.name, tuple(problems), tuple(keys))


def _verdicts(location: SplitLocation, shards: list[ShardInfo], workers: int) -> Iterator[ShardVerdict]:
    if workers <= 1 or len(shards) <= 1:
        for info in shards:
            yield verify_shard(location, info)
        return
    context = multiprocessing.get_context("spawn")  # the workers read servers with this process's settings
    with ProcessPoolExecutor(min(workers, len(shards)), mp_context=context, initializer=remote.configure,
                             initargs=(remote.settings(),)) as pool:
        for future in as_completed([pool.submit(verify_shard, location, info) for info in shards]):
            yield future.result()


def verify_split(split: str | Path, *, workers: int = 1, progress: bool = False,
                 part: tuple[int, int] = (0, 1)) -> SplitVerdict:
    """Check every shard of ``split`` (or part ``i`` of ``n``: shards i, i+n, ...) against its manifest.

    Args:
        split: directory or URL of the split.
        workers: processes reading shards concurrently.
        progress: show a progress bar.
        part: (index, count) of this caller among several sharing the work (ranks).
    Raises:
        ManifestError: when the manifest itself cannot be read or parsed.
    """
    location = SplitLocation.parse(split)
    manifest = read_manifest(split, check_files=False)  # sizes are reported per shard below
    index, count = part
    mine = manifest.shards[index::count]
    with tqdm(total=len(mine), desc=f"verify {location}", unit="shard", disable=not progress) as bar:
        verdicts = {}
        for verdict in _verdicts(location, mine, workers):
            verdicts[verdict.name] = verdict
            bar.update()
            bar.set_postfix(bad=sum(not v.ok for v in verdicts.values()))
    ordered = tuple(verdicts[info.name] for info in mine)
    return SplitVerdict(str(location), ordered, _repeated_across(ordered), _unlisted(location, manifest))


def _repeated_across(verdicts: tuple[ShardVerdict, ...]) -> tuple[str, ...]:
    owners: dict[str, str] = {}
    repeated = []
    for verdict in verdicts:
        for key in dict.fromkeys(verdict.keys):  # in stored order: the first example is the first found
            if key in owners:
                repeated.append(f"key {key} in {owners[key]} and {verdict.name}")
            owners.setdefault(key, verdict.name)
    if not repeated:
        return ()
    return (f"{len(repeated)} key(s) in more than one shard, e.g. {repeated[0]}",)


def _unlisted(location: SplitLocation, manifest) -> tuple[str, ...]:
    if location.remote or location.selected is not None:
        return ()
    listed = {s.name for s in manifest.shards}
    extra = sorted(p.name for p in Path(location.root).glob("*.tar") if p.name not in listed)
    return (f"{len(extra)} tar file(s) not in the manifest, e.g. {extra[0]} (not read by loaders)",) if extra else ()


def require_intact(split: str | Path, *, workers: int = 1, part: tuple[int, int] = (0, 1)) -> SplitVerdict:
    """:func:`verify_split`, raising :class:`ManifestError` with one line per bad shard if any."""
    verdict = verify_split(split, workers=workers, part=part)
    if not verdict.ok:
        lines = verdict.lines()
        raise ManifestError(f"{verdict.split}: shards differ from {MANIFEST_NAME} (run `depthpi shards verify` "
                            f"for the full list; rebuild or re-download them):\n  " + "\n  ".join(lines[:20]))
    log.info("%s", verdict.lines()[-1])
    return verdict
