"""A shard's tar members grouped by sample key, as every reader, verifier and cache of
depthpi parses them (webdataset's tar iterator, with one error handler per shard)."""
from __future__ import annotations

from typing import IO, Iterator

from webdataset.tariterators import group_by_keys, tar_file_iterator


def describe(err: BaseException) -> str:
    """``Type: first line of the message`` without webdataset's appended stream reprs."""
    text = str(err.args[0]) if err.args else ""
    return f"{type(err).__name__}: {text.split(' @ <')[0].splitlines()[0] if text else ''}"[:240]


class TarErrors:
    """webdataset error handler of one shard: a member name repeated within a sample is
    counted (and skipped, the first one kept); any other error ends the shard and is kept
    as its reason.

    Args:
        log: a ``depthpi.data.shard_stream.ReadLog`` that records each skip, or None.
        shard: the shard's name, for the records.
    """

    def __init__(self, log, shard: str):
        self.log, self.shard, self.fatal, self.duplicate_members = log, shard, None, 0

    def __call__(self, exn: Exception) -> bool:
        if isinstance(exn, ValueError) and "duplicate file name" in str(exn):
            self.duplicate_members += 1
            if self.log is not None:
                self.log.skip("tar:duplicate member", None, self.shard, describe(exn))
            return True
        self.fatal = self.fatal or describe(exn)
        return False


def tar_samples(stream: IO[bytes], url: str, handler: TarErrors) -> Iterator[dict]:
    """Tar members grouped by key: ``{"__key__", "__url__", member suffix: bytes, …}`` per sample."""
    files = tar_file_iterator(stream, handler=handler)
    return group_by_keys(({**f, "__url__": url} for f in files), handler=handler)
