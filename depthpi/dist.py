"""The few collectives depthpi runs itself, each failing with a message instead of hanging.

Every collective here is called by every rank at the same point, whether or not the
rank had data. The process group is created with a timeout (``run.collective_timeout_s``):
should a rank ever miss a collective, the others fail after that long with a message
naming the collective, the rank and the world size.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Re-raise a failed or timed-out collective as a RuntimeError naming it and this rank."""
    try:
        yield
    except RuntimeError as err:
        rank, world = rank_and_world()
        raise RuntimeError(f"rank {rank} of {world}: collective '{what}' failed or timed out; another rank "
                           f"did not reach it or died ({' '.join(str(err).split())[:300]})") from err


def gather_objects(value: Any, what: str) -> list[Any]:
    """``value`` of every rank, in rank order (``[value]`` without a process group)."""
    if not is_distributed():
        return [value]
    gathered = [None] * dist.get_world_size()
    with collective(what):
        dist.all_gather_object(gathered, value)
    return gathered


def all_reduce_sum(tensor: torch.Tensor, what: str) -> torch.Tensor:
    """In-place sum over ranks (a no-op without a process group)."""
    if is_distributed():
        with collective(what):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
