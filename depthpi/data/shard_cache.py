"""A remote shard is read only from a local copy whose bytes are the manifest's.

With ``data.cache_dir`` the copy is kept there as ``{sha256[:16]}-{name}``, admitted only
when its sha256, size and sample count match the manifest entry and hashed again before
every use (``bench/bench_cache_verify.py``: about 4 % of a training pass). A copy that fails
is fetched once more, then the shard is refused and reported missing like any short shard.
Without a cache the shard goes to an anonymous temporary file, checked the same way.
Fetching is :mod:`depthpi.data.remote`.

docs/shards.md ("Remote splits") has the details.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import IO

from depthpi.data import remote
from depthpi.data.shards import ShardInfo, check_shard_name
from depthpi.data.tar_members import TarErrors, tar_samples
from depthpi.io import file_sha256, temporary_path

log = logging.getLogger(__name__)


class ShardRefused(OSError):
    """A remote shard not used: it could not be fetched, or its bytes are not the manifest's."""


def split_url(url: str) -> tuple[str, str]:
    """(split root, shard name) of a remote shard's URL."""
    root, _, name = url.rpartition("/")
    return root, check_shard_name(name, f"{root}: shard")


def cache_path(cache_dir: str | Path, info: ShardInfo) -> Path:
    """Where the cache keeps the shard (inside ``cache_dir``, whatever the name holds)."""
    name = check_shard_name(info.name, "manifest entry")
    if len(info.sha256) != 64 or not all(c in "0123456789abcdef" for c in info.sha256):
        raise ShardRefused(f"{info.name}: manifest sha256 {info.sha256!r} is not a hex digest")
    return Path(cache_dir) / f"{info.sha256[:16]}-{name}"


def local_copy(url: str, info: ShardInfo, cache_dir: str | Path | None = None) -> IO[bytes]:
    """An open local file holding the remote shard ``url``, checked against ``info``.

    Raises:
        ShardRefused: fetched twice with bytes other than the manifest's, or not fetched
            after every retry (the message says which).
        ServerUnreachable: the split's server cannot be reached at all.
    """
    if cache_dir is None:
        return _fetch_checked(url, info)
    path = cache_path(cache_dir, info)
    if path.is_file():
        problem = _differs(path, info)
        if problem is None:
            return open(path, "rb")
        log.warning("%s: the cached copy %s %s; fetching it again", url, path, problem)
        path.unlink(missing_ok=True)
    return _admit(url, info, path)


def _differs(path: Path, info: ShardInfo) -> str | None:
    """What makes a cached file not the manifest's shard (size, then sha256), or None."""
    size = path.stat().st_size
    if size != info.bytes:
        return f"has {size} bytes, the manifest says {info.bytes}"
    if file_sha256(path) != info.sha256:
        return "has bytes whose sha256 differs from the manifest's (altered on disk)"
    return None


def _fetch_checked(url: str, info: ShardInfo) -> IO[bytes]:
    """The shard in a temporary file whose sha256 and size are the manifest's (two fetches at most)."""
    root, name = split_url(url)
    problem = None
    for _ in range(2):
        try:
            copy, digest = remote.fetch(root, name, limit=info.bytes)
        except remote.TransportError as err:
            remote.check_reachable(root, err, f"fetching {name}")
            raise ShardRefused(f"not fetched: {err}") from None
        size = os.fstat(copy.fileno()).st_size
        if digest == info.sha256 and size == info.bytes:
            return copy
        copy.close()
        problem = (f"{size} bytes, the manifest says {info.bytes}" if size != info.bytes
                   else "its sha256 differs from the manifest's")
        log.warning("%s: fetched bytes are not the manifest's (%s)", url, problem)
    raise ShardRefused(f"refused: fetched twice, {problem} both times; not read (check the server's copy)")


def _admit(url: str, info: ShardInfo, path: Path) -> IO[bytes]:
    """Fetch into the cache: kept only when sha256, size and sample count are the manifest's.

    A copy whose bytes are the manifest's but whose samples are not as many as it lists
    (an inconsistent manifest) is read from its temporary file and reported short by the
    reader, as the same shard on disk would be; it is not cached.
    """
    copy = _fetch_checked(url, info)
    count = _count_samples(copy, url)
    if count != info.count:
        log.warning("%s: not cached: its bytes are the manifest's but hold %d samples where it lists %d", url,
                    count, info.count)
        return copy
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as out:
            shutil.copyfileobj(copy, out, 1 << 20)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    copy.seek(0)
    return copy


def _count_samples(copy: IO[bytes], url: str) -> int:
    """Distinct keys of the tar in ``copy`` (parsed as every reader parses it); rewinds it."""
    keys = {sample["__key__"] for sample in tar_samples(copy, url, TarErrors(None, url))}
    copy.seek(0)
    return len(keys)
