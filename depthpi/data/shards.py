"""A split's WebDataset shards and its ``manifest.json``: where they are, writing, reading the manifest.

A split is a directory, or a URL of one (``https://``, ``pipe:CMD``, ``gs://``, or a brace
pattern of its shards), holding ``{prefix}-{i:06d}.tar`` shards and one ``manifest.json``
that lists every shard with its sample count, byte size and sha256. Every name a manifest
lists passes :func:`check_shard_name` (a plain file name) before anything uses it. Files
appear atomically (:mod:`depthpi.io`) and tars are byte-reproducible; resumable parallel
building is :mod:`depthpi.data.shard_build`.

docs/shards.md ("A split on disk") has the details.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any
from urllib.request import url2pathname

import braceexpand
import webdataset as wds
from webdataset.gopen import gopen_schemes

from depthpi.data import remote
from depthpi.io import AtomicFile, DiskFullError, HashingStream, atomic_write_bytes

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 256 << 20  # ~1 M shards; anything larger is not a manifest of ours
_TAR_OWNER = "depthpi"
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+):")
# A plain file name: letters, digits, '_', '+', '-', '.'; not starting with '.' or '-'
# (no hidden file, nothing an argument parser reads as an option); no '..'.
_SHARD_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_+.-]{0,254}")

log = logging.getLogger(__name__)


class ManifestError(ValueError):
    """A split whose manifest is missing, unreadable or disagrees with its shards."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard as listed in the manifest.

    Attributes:
        name: file name inside the split.
        count: samples (keys) in the shard.
        bytes: file size in bytes.
        sha256: hex digest of the file.
        first_key, last_key: first and last sample key (None for an empty shard).
    """

    name: str
    count: int
    bytes: int
    sha256: str
    first_key: str | None = None
    last_key: str | None = None


@dataclass
class Manifest:
    """Contents of a split's ``manifest.json``.

    Attributes:
        shards: shards in stored order.
        total_count: sum of the shard counts.
        skeleton: joint-set name of every sample (see :mod:`depthpi.skeleton`).
        params: creation parameters as passed to the writer (source, seed, ...).
        skipped: samples the builder dropped: ``{"count", "by_reason", "examples"}``.
        version: manifest format version.
    """

    shards: list[ShardInfo]
    total_count: int
    skeleton: str = "h36m_17"
    params: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, Any] = field(default_factory=lambda: {"count": 0, "by_reason": {}, "examples": []})
    version: int = FORMAT_VERSION

    @property
    def counts(self) -> list[int]:
        return [shard.count for shard in self.shards]


def json_bytes(record: dict) -> bytes:
    return (json.dumps(record, indent=1, sort_keys=True, default=str) + "\n").encode()


def check_shard_name(name, where: str = "shard name") -> str:
    """``name`` if it is a plain file name: the one rule every shard name from a manifest
    (local or remote) or a brace pattern passes before it becomes a path, a URL or an argument.

    Raises:
        ManifestError: naming ``where`` (the file and field) and the rule.
    """
    if isinstance(name, str) and _SHARD_NAME.fullmatch(name) and ".." not in name:
        return name
    raise ManifestError(f"{where}: {name!r} is not a plain file name (letters, digits, '_', '+', '-' and '.', "
                        f"at most 255, not starting with '.' or '-', no '..'; no path separator, shell or control "
                        f"character); refusing the manifest")


# --- where a split is ------------------------------------------------------------------
@dataclass(frozen=True)
class SplitLocation:
    """A split's directory or URL, and the shards a brace pattern selected (None: all).

    Attributes:
        root: local directory, or the split's URL without a trailing slash.
        remote: whether ``root`` is a URL (read through :mod:`depthpi.data.remote`).
        selected: shard names of a brace pattern, in its order; None selects every shard.
    """

    root: str
    remote: bool
    selected: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, split: str | Path) -> SplitLocation:
        """A local path, a ``file:`` URL, or a URL (any scheme webdataset knows: those
        :mod:`depthpi.data.remote` does not read are refused when read); a last part with
        ``.tar`` is a brace pattern of shard names."""
        text = str(split)
        match = _SCHEME.match(text)
        remote = bool(match) and match.group(1) in gopen_schemes
        if match and match.group(1) == "file":
            text = url2pathname(re.sub(r"^file:(//)?", "", text))
        head, _, last = text.rstrip("/").rpartition("/")
        if ".tar" in last and head:
            return cls(head, remote, tuple(braceexpand.braceexpand(last)))
        return cls(text.rstrip("/") if remote else str(Path(text)), remote)

    def url(self, name: str) -> str:
        """Where the file ``name`` of the split is (a path when local); ``name`` must be plain."""
        if name != MANIFEST_NAME:
            check_shard_name(name, f"{self.root}: shard")
        return f"{self.root}/{name}" if self.remote else str(Path(self.root) / name)

    def open(self, name: str, limit: int | None = None) -> IO[bytes]:
        """A binary stream of the split's file ``name``: the file, or for a URL a local copy
        fetched with timeouts and retries (:func:`depthpi.data.remote.fetch`)."""
        where = self.url(name)
        if not self.remote:
            return open(where, "rb")
        return remote.fetch(self.root, name, limit)[0]

    def read(self, name: str, limit: int | None = None) -> bytes:
        """The file's bytes; more than ``limit`` is refused (ValueError)."""
        if not self.remote and limit is not None and Path(self.url(name)).stat().st_size > limit:
            raise ValueError(f"{self.url(name)}: larger than {limit} bytes")
        with self.open(name, limit) as stream:
            return stream.read()

    def __str__(self) -> str:
        return self.root


# --- manifest --------------------------------------------------------------------
def write_manifest(split_dir: str | Path, manifest: Manifest) -> Path:
    """Write ``split_dir/manifest.json`` atomically; returns its path."""
    path = Path(split_dir) / MANIFEST_NAME
    atomic_write_bytes(path, json_bytes(asdict(manifest)), fsync=True)
    return path


def manifest_sha256(split: str | Path) -> str:
    """sha256 of a split's ``manifest.json`` as stored (local or remote)."""
    return hashlib.sha256(_manifest_bytes(SplitLocation.parse(split))).hexdigest()


def read_manifest(split: str | Path, *, check_files: bool = True) -> Manifest:
    """Read a split's manifest and check it against its shards.

    Local splits: every listed shard must exist with the listed size. Remote splits: sizes
    are not checked here (that would be a request per shard); readers check counts as they
    stream. ``depthpi shards verify`` (:mod:`depthpi.data.shard_verify`) checks every byte.

    Args:
        split: directory or URL of the split (see the module docstring).
        check_files: compare the listed shards with the files (False: the manifest only).
    Returns:
        The manifest; with a brace pattern, only the selected shards, in its order.
    Raises:
        ManifestError: naming the file, when the manifest is missing or unparsable, lists
            a shard twice, a listed shard is missing, or a shard's size differs.
    """
    location = SplitLocation.parse(split)
    where = location.url(MANIFEST_NAME)
    manifest = _parse_manifest(_manifest_bytes(location), where)
    if location.selected is not None:
        manifest = _select(manifest, location.selected, where)
    for shard in manifest.shards if check_files and not location.remote else ():
        _check_size(Path(location.url(shard.name)), shard, where)
    return manifest


def _manifest_bytes(location: SplitLocation) -> bytes:
    where = location.url(MANIFEST_NAME)
    try:
        return location.read(MANIFEST_NAME, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise ManifestError(f"{where}: manifest not found; build the split with `depthpi shards build` "
                            f"or point the config at a directory that holds {MANIFEST_NAME}") from None
    except (OSError, ValueError) as err:  # a failed fetch (TransportError), an unknown scheme, too large
        raise ManifestError(f"{where}: manifest could not be read ({type(err).__name__}: {err})") from None


def _parse_manifest(data: bytes, where: str) -> Manifest:
    try:
        record = json.loads(data)
        shards = [ShardInfo(**shard) for shard in record.pop("shards")]
        manifest = Manifest(shards=shards, **record)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise ManifestError(f"{where}: unreadable manifest ({type(err).__name__}: {str(err)[:200]})") from None
    for index, shard in enumerate(manifest.shards):
        check_shard_name(shard.name, f"{where}: field 'shards[{index}].name'")
    if manifest.version != FORMAT_VERSION:
        raise ManifestError(f"{where}: format version {manifest.version}, expected {FORMAT_VERSION}")
    if manifest.total_count != sum(manifest.counts):
        raise ManifestError(f"{where}: total_count {manifest.total_count} != sum of shard counts "
                            f"{sum(manifest.counts)}")
    names = [shard.name for shard in manifest.shards]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice or any(shard.count < 0 for shard in manifest.shards):
        raise ManifestError(f"{where}: shards listed twice {twice} or negative counts; rebuild the manifest")
    return manifest


def _select(manifest: Manifest, names: tuple[str, ...], where: str) -> Manifest:
    listed = {shard.name: shard for shard in manifest.shards}
    unknown = [name for name in names if name not in listed]
    if unknown:
        raise ManifestError(f"{where}: the pattern names shards the manifest does not list, e.g. {unknown[:3]}")
    shards = [listed[name] for name in dict.fromkeys(names)]
    return replace(manifest, shards=shards, total_count=sum(s.count for s in shards))


def _check_size(path: Path, shard: ShardInfo, where: str) -> None:
    if not path.is_file():
        raise ManifestError(f"{path}: listed in {where} but missing on disk")
    size = path.stat().st_size
    if size != shard.bytes:
        raise ManifestError(f"{path}: {size} bytes on disk, {where} says {shard.bytes} "
                            f"(truncated or rewritten shard; rebuild the split)")


# --- writing ---------------------------------------------------------------------
def check_key(key: str) -> None:
    # webdataset splits member names at the first dot: "a.b.rgb.jpg" would become key "a".
    if not isinstance(key, str) or not key or "." in key or "/" in key:
        raise ValueError(f"sample key {key!r}: must be a non-empty string without '.' or '/'")


class TarShard:
    """One shard being written under a temporary name; :meth:`finish` renames it into place."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = HashingStream(AtomicFile(self.path, fsync=True))
        # mtime/owner fixed: the same samples give the same bytes on any machine and day.
        self.tar = wds.TarWriter(self.file, encoder=False, mtime=0, user=_TAR_OWNER, group=_TAR_OWNER)
        self.count, self.first_key, self.last_key = 0, None, None

    def write(self, members: dict[str, Any]) -> None:
        """Append one sample's members (``__key__`` plus ``suffix: bytes``)."""
        check_key(members["__key__"])
        self.tar.write(members)
        self.count += 1
        self.first_key = self.first_key or members["__key__"]
        self.last_key = members["__key__"]

    def finish(self) -> ShardInfo:
        self.tar.close()
        self.file.raw.commit()
        return ShardInfo(self.path.name, self.count, self.file.bytes, self.file.hexdigest(),
                         self.first_key, self.last_key)

    def abort(self) -> None:
        try:
            self.tar.close()  # writes the tar's end: fails again on a full disk
        except (OSError, DiskFullError):
            pass
        finally:
            self.file.raw.discard()
