"""Process-wide logging: configured once per process, rank-aware.

Rank 0 logs at INFO, other ranks at WARNING (their warnings and errors still show, each
line naming the rank). Command-line entry points call :func:`configure_logging` first; the
engine calls it again once it knows the rank, which only updates the level and format.
"""
from __future__ import annotations

import logging
import os
import sys

from depthpi.dist import world_info

_HANDLER_NAME = "depthpi"
QUIET = ("accelerate", "deepspeed", "torch.distributed", "urllib3", "matplotlib", "PIL", "h5py", "git")


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record is emitted, not as it was when logging
    was configured (a stream replaced since, e.g. by a capture, is followed)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(rank: int | None = None, world: int | None = None, level: int | None = None) -> None:
    """Send the ``depthpi`` loggers to stderr: INFO on rank 0, WARNING elsewhere.

    Args:
        rank, world: this process's place; default: :func:`depthpi.dist.world_info`.
        level: force a level (e.g. logging.DEBUG); default from ``DEPTHPI_LOG_LEVEL`` or the rank.
    """
    here = world_info()
    rank = here.rank if rank is None else rank
    world = here.size if world is None else world
    if level is None:
        named = os.environ.get("DEPTHPI_LOG_LEVEL")
        level = getattr(logging, named.upper()) if named else (logging.INFO if rank == 0 else logging.WARNING)
    where = f" rank {rank}/{world}" if world > 1 else ""
    formatter = logging.Formatter(f"%(asctime)s [depthpi{where}] %(levelname)s %(name)s: %(message)s",
                                  datefmt="%H:%M:%S")
    root = logging.getLogger("depthpi")
    handler = next((h for h in root.handlers if h.get_name() == _HANDLER_NAME), None)
    if handler is None:
        handler = _StderrHandler()
        handler.set_name(_HANDLER_NAME)
        root.addHandler(handler)
    handler.setFormatter(formatter)
    root.setLevel(level)
    for name in QUIET:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
