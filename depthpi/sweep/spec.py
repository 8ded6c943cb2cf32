"""Sweep specs (``docs/sweeps.md``): an OmegaConf structured config of SLURM job arrays, expanded.

OmegaConf checks keys and types; the checks here are what it cannot know: names become directories
and job names, no string may start a line in an sbatch file, run directories stay in the sweep's."""
from __future__ import annotations

import itertools
import json
import math
import re
import shlex
import unicodedata
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException
from yaml import YAMLError

NAME = re.compile(r"[A-Za-z0-9._-]+")
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")  # a config key: a.b.c
VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PLACEHOLDER = re.compile(r"(?<!\$)\{(\w+)\}")  # {name}, not OmegaConf's ${name}
SLURM_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")  # M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
NAME_MAX, ARG_MAX, RUN_DIR_MAX = 255, 131072, 3840  # bytes: a file name, an exec argument, PATH_MAX less room
RESERVED_NAMES = frozenset({"submitit", "sweep.json", "results.md", "results.csv", "results.png"})
BUILT_IN_VARS = ("sweep_dir", "index", "count")
HINTS = {"accelerate": " (precision and DeepSpeed are run-config keys, overrides like any other: run.precision=bf16, "
                       "run.deepspeed.zero_stage=2; SLURM sets the process layout: nodes, tasks_per_node)"}


class SpecError(ValueError):
    """A spec that cannot be expanded; the message names the file, the key and what was expected."""


def fail(key: str, expected: str, got) -> SpecError:
    return SpecError(f"key {key or '<top level>'!r}: expected {expected}, got {got!r}")


class Kind(str, Enum):
    train = "train"
    command = "command"


@dataclass
class Resources:
    """What every job of an array asks SLURM for (each key: ``docs/sweeps.md``, "Resources")."""

    nodes: int = 1
    tasks_per_node: int | None = None
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: float | None = None
    time: str = "1:00:00"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = 16
    signal_delay_s: int = 120
    max_requeue: int = 3
    setup: list[str] = field(default_factory=list)

    @property
    def tasks(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)

    @property
    def minutes(self) -> int:
        """``time`` in minutes, as sbatch reads it (seconds round up)."""
        days, first, second, third = SLURM_TIME.fullmatch(self.time.strip()).groups()
        hours, minutes, seconds = (first, second, third) if days or third else (0, first, second)
        return int(days or 0) * 1440 + int(hours) * 60 + int(minutes or 0) + bool(int(seconds or 0))


_MINIMUM = {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0, "cpus_per_task": 1, "array_parallelism": 1,
            "signal_delay_s": 0, "max_requeue": 0}


@dataclass
class ElementSpec:
    name: str | int | None = None
    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class ArraySpec:
    """One job array; ``command``: a string split once like a shell line, or a list of arguments."""

    name: str | int | None = None
    kind: Kind | None = None  # default: command where ``command`` is given, else train
    config: str | None = None
    elements: list[Any] | None = None
    grid: dict[str, list[Any]] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    after: list[str] | None = None  # default: the previous array
    command: Any = None
    count: int = 1


@dataclass
class SweepSpec(ArraySpec):
    """The file: ``name``, ``out``, ``vars``, keys for every array, and the ``arrays`` (else it is the one array)."""

    out: str | None = None
    vars: dict[str, Any] = field(default_factory=dict)
    arrays: list[Any] | None = None


class Element(NamedTuple):
    """One job: a training run (``config``, then ``overrides``: dotted key → value) or a depthpi CLI ``command``."""

    name: str
    array: str
    kind: Kind
    run_dir: str
    config: str | None = None
    overrides: dict = {}
    command: tuple = ()


class JobArray(NamedTuple):
    name: str
    kind: Kind
    elements: tuple
    resources: Resources
    after: tuple = ()


class Sweep(NamedTuple):
    name: str
    spec_path: str
    out_dir: str
    arrays: tuple = ()

    @property
    def elements(self) -> list[Element]:
        return [e for a in self.arrays for e in a.elements]


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _typed(schema, raw, where: str) -> dict:
    """``raw`` checked against a dataclass by OmegaConf, as a plain dict with the defaults filled in."""
    if not isinstance(raw, dict):
        raise fail(where, f"a mapping of {schema.__name__} keys", raw)
    node = OmegaConf.structured(schema)
    for key, value in raw.items():  # one key at a time: a TypeError of OmegaConf names no key
        try:
            node = OmegaConf.merge(node, {key: value})
        except TypeError:  # a list where a mapping belongs or the reverse
            raise fail(_at(where, key), f"a {'list' if isinstance(value, dict) else 'mapping'}", value) from None
        except OmegaConfBaseException as err:
            hint = HINTS.get(str(err.full_key), "") if isinstance(err, ConfigKeyError) else ""
            raise SpecError(f"key {_at(where, err.full_key)!r}: {str(err.msg).splitlines()[0]}{hint}") from None
    return OmegaConf.to_container(node, resolve=False)


def _control(text: str) -> str | None:
    """The first control or invisible format character of ``text`` as ``U+000A``, or None."""
    return next((f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)


def _refuse_control_characters(node, key: str = "") -> None:
    """No string of a spec may hold a control character: in an sbatch file it would start a line."""
    if isinstance(node, str) and _control(node):
        raise fail(key, f"a value without control characters (found {_control(node)})", node)
    for sub, value in (node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()):
        _refuse_control_characters(value, f"{key}[{sub}]" if isinstance(node, list) else _at(key, str(sub)))


def _name(value, key: str, origin: str, reserved: frozenset = frozenset()) -> str:
    """A sweep, array or element name: it names a directory and a job."""
    name = str(value)
    problem = ("only letters A-Z a-z, digits, '.', '_' and '-' are allowed" if not NAME.fullmatch(name) else
               "'.' and '..' name directories that already exist" if set(name) == {"."} else
               f"at most {NAME_MAX} characters (a directory name)" if len(name.encode()) > NAME_MAX else
               "the sweep directory keeps a file or folder of that name" if name in reserved else None)
    if problem:
        raise SpecError(f"key {key!r}: {origin} {name!r} cannot name a run directory or job: {problem}")
    return name


def _fill(value, values: dict[str, str], key: str):
    """``value`` with ``{var}`` placeholders filled into every string in it (one value: never split again)."""
    if isinstance(value, dict):
        return {k: _fill(v, values, key) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, values, key) for v in value]
    if not isinstance(value, str):
        return value
    unknown = [m.group(0) for m in PLACEHOLDER.finditer(value) if m.group(1) not in values]
    if unknown:
        raise fail(key, f"placeholders among {{{', '.join(sorted(values))}}}", unknown[0])
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], value)


def _overrides(raw: dict, where: str, values: dict[str, str]) -> dict:
    """``{dotted key: value}``, values as YAML read them, placeholders filled in."""
    for key in raw:
        if not isinstance(key, str) or not KEY.fullmatch(key):
            raise fail(_at(where, str(key)), "a config key such as 'optim.lr' (letters, digits, '_', dots)", key)
    return {k: _fill(v, values, _at(where, k)) for k, v in raw.items()}


def _run_dir(sweep_dir: Path, name: str, key: str) -> str:
    """``<sweep_dir>/<name>``, refused where it resolves elsewhere (a symlink) or leaves no room below it."""
    resolved = (sweep_dir / name).resolve()
    if resolved.parent != sweep_dir:
        raise SpecError(f"key {key!r}: run directory {sweep_dir / name} resolves to {resolved}, "
                        f"which is not a folder of the sweep directory {sweep_dir}")
    if len(str(resolved).encode()) > RUN_DIR_MAX:
        raise SpecError(f"key {key!r}: run directory {str(resolved)[:120]}… is longer than "
                        f"{RUN_DIR_MAX} bytes; the files under it would pass the system's path limit")
    return str(resolved)


def _train_elements(row: dict, array: str, where: str, ctx: dict) -> list[Element]:
    """Elements × grid points of a training array, each with its overrides and run directory."""
    values, rows = ctx["values"], row["elements"] or None
    common = {**ctx["overrides"], **_overrides(row["overrides"], _at(where, "overrides"), values)}
    if any(not options for options in row["grid"].values()):
        raise fail(_at(where, "grid"), "non-empty lists of values", row["grid"])
    grid = _overrides(row["grid"], _at(where, "grid"), values)
    points = [dict(zip(grid, point)) for point in itertools.product(*grid.values())]
    elements = []
    for i, entry in enumerate(rows or [{}]):
        key = _at(where, f"elements[{i}]") if rows is not None else where
        entry = _typed(ElementSpec, entry, key)
        given = entry["config"] or row["config"] or ctx["config"]
        config_key = _at(key if entry["config"] else where if row["config"] else "", "config")
        config = Path(given or "").expanduser().resolve()
        if not given or not config.is_file():
            raise fail(config_key, "an existing config file (the element's, array's or sweep's 'config')", given)
        if entry["name"] is not None:
            own = _name(entry["name"], _at(key, "name"), "element name", RESERVED_NAMES)
        elif rows is not None or not grid:
            own = _name(config.stem, config_key, f"the name taken from config file {config.name!r} (give the element "
                                                 "a 'name:'):", RESERVED_NAMES)
        else:
            own = ""  # a grid-only array: the grid values name the elements
        varied = _overrides(entry["overrides"], _at(key, "overrides"), values)
        for point in points:
            texts = [(k.rsplit(".", 1)[-1], v if isinstance(v, str) else json.dumps(v)) for k, v in point.items()]
            tokens = [f"{k}-{re.sub(r'[^A-Za-z0-9.-]+', '_', v).strip('_')}" for k, v in texts]
            at = _at(where, "grid") if point else (_at(key, "name") if entry["name"] is not None else config_key)
            name = _name("_".join(t for t in [own, *tokens] if t) or array, at, "element name", RESERVED_NAMES)
            run_dir = _run_dir(ctx["sweep_dir"], name, at)
            elements.append(Element(name, array, Kind.train, run_dir, str(config),
                                    {**common, **varied, **point, "run.out_dir": run_dir}))
    return elements


def _command_elements(row: dict, array: str, where: str, ctx: dict) -> list[Element]:
    """One element per index of a command array, ``{index}`` and ``{count}`` filled in."""
    key, command, count = _at(where, "command"), row["command"], row["count"]
    if count < 1:
        raise fail(_at(where, "count"), "a positive integer (array size)", count)
    listed = isinstance(command, list) and all(type(c) in (str, int, float) for c in command)  # no bool, no null
    try:
        template = shlex.split(command) if isinstance(command, str) else [str(c) for c in command] if listed else []
    except ValueError as err:  # "No closing quotation", in the spec's own text
        raise fail(key, f"a command line that splits into arguments ({err})", command) from None
    template = template[1:] if template[:1] == ["depthpi"] else template
    if not template:
        raise fail(key, "a depthpi CLI command (a string, or a list of arguments)", command)
    elements = []
    for index in range(count):
        args = tuple(_fill(arg, {**ctx["values"], "index": str(index), "count": str(count)}, key) for arg in template)
        long = next((a for a in args if len(a.encode()) > ARG_MAX), None)
        if long:
            raise fail(key, f"arguments of at most {ARG_MAX} bytes (one argument of a command)", long[:99] + "…")
        name = _name(f"{array}-{index}" if count > 1 else array, _at(where, "name"), "element name", RESERVED_NAMES)
        elements.append(Element(name, array, Kind.command, _run_dir(ctx["sweep_dir"], name, _at(where, "name")),
                                command=args))
    return elements


def _resources(base: Resources, raw: dict, where: str) -> Resources:
    """``base`` updated by a ``resources:`` mapping, checked."""
    if not isinstance(raw.get("time", ""), str):
        raise fail(_at(where, "time"), 'a SLURM time as a quoted string ("90" minutes, "4:00:00", "1-12:00:00"); '
                                       "unquoted, YAML reads 4:00:00 as 14400", raw["time"])
    res = Resources(**_typed(Resources, {**asdict(base), **raw}, where))
    for key, low in _MINIMUM.items():
        if getattr(res, key) is not None and getattr(res, key) < low:
            raise fail(_at(where, key), f"an integer >= {low}", getattr(res, key))
    if res.mem_gb is not None and not (math.isfinite(res.mem_gb) and res.mem_gb > 0):
        raise fail(_at(where, "mem_gb"), "a positive number of GB or null", res.mem_gb)
    if res.gpus_per_node and res.tasks_per_node not in (None, res.gpus_per_node):
        raise fail(_at(where, "tasks_per_node"), f"{res.gpus_per_node} (one task per GPU) or null", res.tasks_per_node)
    if not SLURM_TIME.fullmatch(res.time.strip()) or not res.minutes:
        raise fail(_at(where, "time"), "a positive SLURM time: 'M', 'M:S', 'H:M:S', 'D-H', 'D-H:M', 'D-H:M:S'",
                   res.time)
    return res


def _array(raw, index: int, earlier: list[JobArray], ctx: dict) -> JobArray:
    """One entry of ``arrays:`` (or the top level of a single-array spec) → a JobArray."""
    listed, names = ctx["listed"], [a.name for a in earlier]
    where = f"arrays[{index}]" if listed else ""
    row = _typed(ArraySpec, raw, where) if listed else raw
    name = _name(f"array{index}" if row["name"] is None else row["name"], _at(where, "name"), "array name") \
        if listed else "main"
    if name in names:
        raise fail(_at(where, "name"), f"a name no earlier array has ({names})", name)
    kind = Kind.command if row["command"] is not None else Kind.train
    if row["kind"] not in (None, kind):
        raise fail(_at(where, "kind"), "'command' with a 'command:', else 'train'", row["kind"].value)
    after = names[-1:] if row["after"] is None else row["after"]
    if any(a not in names for a in after):
        raise fail(_at(where, "after"), f"names of earlier arrays among {names}", after)
    resources = _resources(ctx["resources"], row["resources"] if listed else {}, _at(where, "resources"))
    make = _train_elements if kind is Kind.train else _command_elements
    return JobArray(name, kind, tuple(make(row, name, where, ctx)), resources, tuple(after))


def _sweep_dir(out, data: dict, name: str) -> Path:
    """``--out``, else the spec's ``out:``, else ``runs/sweeps/<name>``. SLURM and submitit expand
    ``%j``, ``%A``… in log paths under it, and a backslash stops SLURM's expansion."""
    key, value = ("--out", str(out)) if out is not None else ("out", data["out"] or f"runs/sweeps/{name}")
    _refuse_control_characters(value, key)
    if not value.strip() or "%" in value or "\\" in value:
        raise fail(key, "a directory path without '%' or '\\' (SLURM and submitit read them in log paths)", value)
    path = Path(value).expanduser().resolve()
    long_part = next((part for part in path.parts if len(part.encode()) > NAME_MAX), None)
    if long_part:
        raise fail(key, f"a path whose folder names have at most {NAME_MAX} bytes", long_part[:80] + "…")
    return path


def _variables(given: dict, cli: dict, sweep_dir: Path) -> dict[str, str]:
    """Placeholder values: the spec's ``vars:``, then ``--var`` (which wins), then ``sweep_dir``."""
    values = {}
    for key, name, value in [*((f"vars.{n}", n, v) for n, v in given.items()),
                             *((f"--var {n}", n, v) for n, v in cli.items())]:
        if not VAR.fullmatch(str(name)) or name in BUILT_IN_VARS:
            raise fail(key, f"a placeholder name of letters, digits and '_', other than the built-in "
                            f"{', '.join(BUILT_IN_VARS)}", name)
        if isinstance(value, (list, dict)) or value is None or value == "":
            raise fail(key, "a non-empty text or number", value)
        _refuse_control_characters(value, key)
        values[name] = value if isinstance(value, str) else json.dumps(value)
    return {**values, "sweep_dir": str(sweep_dir)}


def load_spec(path: str | Path, out: str | Path | None = None, variables: dict | None = None) -> Sweep:
    """Read, check and expand a spec (``out``, ``variables``: ``--out``, ``--var``, over ``out:``, ``vars:``);
    a SpecError names the file, the key at fault and what was expected."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"sweep spec not found: {path}")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (YAMLError, OmegaConfBaseException) as err:
        raise SpecError(f"sweep spec {path}: not valid YAML ({' '.join(str(err).split())})") from None
    try:
        return _expand(Path(path), raw, out, variables or {})
    except SpecError as err:
        raise SpecError(f"sweep spec {path}: {err}") from None


def _expand(path: Path, raw, out, variables: dict) -> Sweep:
    _refuse_control_characters(raw)
    data = _typed(SweepSpec, raw, "")
    listed = data["arrays"] is not None
    misplaced = [k for k in ("kind", "elements", "grid", "after", "command") if data[k] not in (None, {})]
    if listed and (misplaced or not data["arrays"]):
        key = misplaced[0] if misplaced else "arrays"
        raise fail(key, "a non-empty list of arrays, and no array key beside it (give it inside an array)", data[key])
    name = _name(path.stem if data["name"] is None else data["name"], "name", "sweep name" if data["name"] is not None
                 else "the name taken from the spec file's name (give the spec a 'name:'):")
    sweep_dir = _sweep_dir(out, data, name)
    values = _variables(data["vars"], variables, sweep_dir)
    ctx = {"listed": listed, "sweep_dir": sweep_dir, "values": values, "config": data["config"],
           "overrides": _overrides(data["overrides"], "overrides", values),
           "resources": _resources(Resources(), data["resources"], "resources")}
    arrays: list[JobArray] = []
    for index, row in enumerate(data["arrays"] if listed else [data]):
        arrays.append(_array(row, index, arrays, ctx))
    names = [e.name for a in arrays for e in a.elements]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise fail("elements/grid", "unique element names (give elements a 'name:')", duplicates)
    return Sweep(name, str(path.resolve()), str(sweep_dir), tuple(arrays))
