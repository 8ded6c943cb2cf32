"""The SLURM resources of a stage: a spec's ``resources:`` mapping read into sbatch terms.

Every value here ends up on a line of an sbatch file (``#SBATCH --partition=gpu``) or is
one (``setup``), so none may hold a control character: a newline would start a line of
its own. Process layout (nodes, tasks per node) is SLURM's to set; precision and
DeepSpeed are keys of the run config, not resources.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

from depthpi.sweep.values import control_character, fail


@dataclass(frozen=True)
class Resources:
    """What every job of a stage asks SLURM for.

    Attributes:
        nodes: nodes per job; the engine runs distributed over nodes × GPUs.
        gpus_per_node: GPUs per node, one task each; 0 = a CPU cluster, one task per node.
        cpus_per_task: CPU cores per task (data workers + 1).
        mem_gb: memory per node in GB (None: the partition's default).
        time_min: wall-clock limit in minutes (``time:`` in the spec accepts ``HH:MM:SS``).
        partition, account, qos, constraint: passed to sbatch as given.
        array_parallelism: jobs of the array running at once (``--array=0-N%P``).
        signal_delay_s: seconds between the preemption/timeout signal and the kill.
        max_requeue: requeues after time-outs before a job gives up (submitit's
            ``max_num_timeout``); preemptions do not count.
        setup: shell lines run before ``srun`` (``module load …``, ``source .venv/bin/activate``).
    """

    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: float | None = None
    time_min: int = 60
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = 16
    signal_delay_s: int = 120
    max_requeue: int = 3
    setup: tuple[str, ...] = ()

    @property
    def tasks_per_node(self) -> int:
        return max(1, self.gpus_per_node)


RESOURCE_KEYS = {f.name for f in fields(Resources)} - {"time_min"} | {"time"}
_COUNTS = {"nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1, "array_parallelism": 1, "signal_delay_s": 0,
           "max_requeue": 0}  # key: its minimum


def parse_time(value, spec: str, key: str) -> int:
    """Minutes from an int or a SLURM ``--time`` string, read as sbatch reads it.

    ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``; seconds round up to a minute
    (``"30:00"`` is 30 minutes, ``"1-12"`` 36 hours).
    """
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = re.fullmatch(r"(?:([0-9]+)-)?([0-9]+)(?::([0-9]+))?(?::([0-9]+))?", str(value).strip())
    if not match or isinstance(value, bool):
        raise fail(spec, key, "minutes (int) or a SLURM time 'M', 'M:S', 'H:M:S', 'D-H', 'D-H:M', 'D-H:M:S'", value)
    days, *parts = match.groups()
    parts = [int(p) for p in parts if p is not None]
    if days is not None:  # D-H[:M[:S]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
        hours += int(days) * 24
    elif len(parts) == 3:  # H:M:S
        hours, minutes, seconds = parts
    else:  # M[:S]
        hours, minutes, seconds = 0, parts[0], (parts[1] if len(parts) == 2 else 0)
    total = hours * 60 + minutes + (1 if seconds else 0)
    if total <= 0:
        raise fail(spec, key, "a positive duration", value)
    return total


def _line(value, spec: str, key: str) -> str:
    """A value that goes onto one line of the sbatch file: text or a number, no control character."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise fail(spec, key, "text (or a number)", value)
    text = str(value)
    char = control_character(text)
    if char:
        raise fail(spec, key, f"one line without control characters (found {char}: it would start or "
                              f"hide a line of the sbatch file)", text)
    if not text.strip():
        raise fail(spec, key, "a non-empty value (or null for SLURM's default)", text)
    return text


def _setup(value, spec: str, key: str) -> tuple[str, ...]:
    """``setup:`` as shell lines, one per list entry."""
    lines = value if isinstance(value, list) else [value]
    return tuple(_line(line, spec, f"{key}[{i}]" if isinstance(value, list) else key) for i, line in enumerate(lines))


def _memory(value, spec: str, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise fail(spec, key, "a positive number of GB or null", value)
    return value


def parse_resources(raw: dict | None, base: Resources, spec: str, where: str) -> Resources:
    """``base`` updated by a ``resources:`` mapping (``time`` parsed to minutes)."""
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise fail(spec, where, "a mapping of resource names to values", raw)
    unknown = sorted(set(raw) - RESOURCE_KEYS, key=str)
    if unknown:
        raise fail(spec, f"{where}.{unknown[0]}", f"one of {sorted(RESOURCE_KEYS)}", unknown[0])
    values = {f.name: getattr(base, f.name) for f in fields(Resources)}
    for key, value in raw.items():
        at = f"{where}.{key}"
        if key == "time":
            values["time_min"] = parse_time(value, spec, at)
        elif key == "setup":
            values["setup"] = _setup(value, spec, at)
        elif key == "mem_gb":
            values["mem_gb"] = _memory(value, spec, at)
        elif key in _COUNTS:
            if not isinstance(value, int) or isinstance(value, bool) or value < _COUNTS[key]:
                raise fail(spec, at, f"an integer >= {_COUNTS[key]}", value)
            values[key] = value
        else:  # partition, account, qos, constraint
            values[key] = None if value is None else _line(value, spec, at)
    return Resources(**values)
