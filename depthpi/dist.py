"""The process group: where this process stands in it, and the collectives depthpi names.

:func:`world_info` is the one place that says a process's rank, world size and device:
the launcher's ``env://`` variables (torchrun, ``accelerate launch``, or a sweep job's,
exported from submitit's environment), else accelerate's ``PartialState``. The group is
accelerate's (formed by the run's ``Accelerator``), with a timeout
(``run.collective_timeout_s``); every collective here is called by every rank at the same
point, so a rank that misses one, or never joins, fails after that long with a message
naming the collective or the ranks instead of hanging. torch is imported inside the
functions: logging asks :func:`world_info` at start-up.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any, Iterator


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def device(self):
        """``cuda:<local_rank>`` where CUDA is present, else the CPU."""
        import torch

        return torch.device(f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu")


def world_info() -> World:
    """Rank, world size and local rank: from the launcher's ``env://`` variables where it set
    them (torchrun, ``accelerate launch``, a sweep job), else from accelerate's ``PartialState``
    or a process group formed without a launcher, else a single process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    state, dist = sys.modules.get("accelerate.state"), sys.modules.get("torch.distributed")
    if state is not None and state.is_initialized():
        partial = state.PartialState()
        return World(partial.process_index, partial.num_processes, partial.local_process_index)
    if dist is not None and dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(env.get("LOCAL_RANK", 0)))
    return World()


def is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def joining_group(timeout_s: float) -> Iterator[None]:
    """Around the set-up of a process group from ``env://``: a rank that cannot reach the
    others (the store's connect or wait timing out after ``timeout_s``) fails naming them."""
    import torch.distributed as dist

    try:
        yield
    except dist.DistError as err:
        me = world_info()
        if is_distributed() or me.size == 1:
            raise  # the group had formed: a collective's failure, named where it happened
        others = ", ".join(str(r) for r in range(me.size) if r != me.rank)
        raise RuntimeError(f"rank {me.rank} of {me.size} on {socket.gethostname()}: no process group with rank(s) "
                           f"{others} within {timeout_s:g} s (run.collective_timeout_s) at "
                           f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}; a rank did not start "
                           f"or cannot reach that address ({' '.join(str(err).split())[:300]})") from err


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Re-raise a failed or timed-out collective as a RuntimeError naming it and this rank."""
    try:
        yield
    except RuntimeError as err:
        me = world_info()
        raise RuntimeError(f"rank {me.rank} of {me.size}: collective '{what}' failed or timed out; another rank "
                           f"did not reach it or died ({' '.join(str(err).split())[:300]})") from err


def gather_objects(values: list, what: str) -> list:
    """``values`` of every rank, concatenated in rank order: accelerate's ``gather_object``,
    with a failed or timed-out collective named (``what``) and without a process group
    ``values`` itself (accelerate's would set up its state to find that out)."""
    if not is_distributed():
        return list(values)
    from accelerate.utils import gather_object

    with collective(what):
        return gather_object(values)


def first_on_any_rank(value: Any, what: str) -> Any:
    """The first non-empty ``value`` in rank order (a refusal, an error line), the same on
    every rank; None when no rank has one (a collective: every rank calls it)."""
    return next(filter(None, gather_objects([value], what)), None)
