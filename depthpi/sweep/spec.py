"""Sweep specs: a YAML file of stages, each a job array of training runs or CLI commands.

A spec names, per stage, a base config and a ``grid`` and/or a list of ``elements`` of
overrides, plus the SLURM ``resources`` of every job of the stage. Expansion turns it
into elements, each with its name, its full override list (``run.out_dir`` pointing to
``<sweep_dir>/<name>``) and the overrides that distinguish it from its siblings::

    name: seeds                          # default: the spec file's stem
    out: runs/sweeps/seeds               # default: runs/sweeps/<name>; --out wins
    vars: {teacher: runs/3.2/export/last.pt}   # {teacher} in values; {sweep_dir} built in
    resources: {nodes: 1, gpus_per_node: 8, cpus_per_task: 10, mem_gb: 400, time: "24:00:00",
                partition: gpu, array_parallelism: 4}
    accelerate: configs/accelerate/multi_gpu.yaml
    overrides: {data.num_workers: 8}     # every training element
    stages:
      - name: baselines
        elements:                        # a list: one element each (× the grid, if any)
          - {config: configs/baseline/1.1.yaml}
          - {name: "1.2", config: configs/baseline/1.2.yaml, overrides: {optim.lr: 1.0e-4}}
        grid: {run.seed: [0, 1, 2]}      # the product of the axes
      - name: precompute                 # a command array: one job per index
        after: [baselines]               # afterok dependency (default: the previous stage)
        command: "precompute --shards shards/x --shard-index {index} --num-shards {count}"
        count: 8

A spec without ``stages:`` holds one stage at top level (``config``, ``grid``, ...).
Relative paths in a spec are relative to the working directory, as on the command line.
"""
from __future__ import annotations

import itertools
import json
import re
import shlex
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

_SPEC_KEYS = {"name", "out", "vars", "resources", "accelerate", "overrides", "stages"}
_STAGE_KEYS = {"name", "kind", "config", "grid", "elements", "overrides", "resources", "accelerate", "after",
               "command", "count"}
_ELEMENT_KEYS = {"name", "config", "overrides"}
_PLACEHOLDER = re.compile(r"(?<!\$)\{(\w+)\}")  # {name}, but not OmegaConf's ${name}
_NAME_OK = re.compile(r"[^A-Za-z0-9.+-]+")


class SpecError(ValueError):
    """A spec file that cannot be expanded; the message names the file, key and expectation."""


def _fail(spec: str, key: str, expected: str, got) -> SpecError:
    return SpecError(f"sweep spec {spec}: key {key!r}: expected {expected}, got {got!r}")


def _parse_time(value, spec: str, key: str) -> int:
    """Minutes from an int or a SLURM ``--time`` string, read as sbatch reads it.

    ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``; seconds round up to a minute
    (``"30:00"`` is 30 minutes, ``"1-12"`` 36 hours).
    """
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(value).strip())
    if not match or isinstance(value, bool):
        raise _fail(spec, key, "minutes (int) or a SLURM time 'M', 'M:S', 'H:M:S', 'D-H', 'D-H:M', 'D-H:M:S'", value)
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
        raise _fail(spec, key, "a positive duration", value)
    return total


class _SpecLoader(yaml.SafeLoader):
    """YAML 1.1 without base-60 integers: an unquoted ``time: 4:00:00`` stays the string
    SLURM means (4 h), not PyYAML's int 14400 (which would read as 14400 minutes)."""


_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if not (tag == "tag:yaml.org,2002:int" and regexp.match("1:00"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))


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


_RESOURCE_KEYS = {f.name for f in fields(Resources)} - {"time_min"} | {"time"}


def parse_resources(raw: dict | None, base: Resources, spec: str, where: str) -> Resources:
    """``base`` updated by a ``resources:`` mapping (``time`` parsed to minutes)."""
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise _fail(spec, where, "a mapping of resource names to values", raw)
    unknown = sorted(set(raw) - _RESOURCE_KEYS)
    if unknown:
        raise _fail(spec, f"{where}.{unknown[0]}", f"one of {sorted(_RESOURCE_KEYS)}", unknown[0])
    values = {f.name: getattr(base, f.name) for f in fields(Resources)}
    for key, value in raw.items():
        if key == "time":
            values["time_min"] = _parse_time(value, spec, f"{where}.time")
        elif key == "setup":
            values["setup"] = tuple(str(v) for v in (value if isinstance(value, list) else [value]))
        elif key in ("nodes", "gpus_per_node", "cpus_per_task", "array_parallelism", "signal_delay_s",
                     "max_requeue"):
            minimum = 0 if key in ("gpus_per_node", "signal_delay_s", "max_requeue") else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise _fail(spec, f"{where}.{key}", f"an integer >= {minimum}", value)
            values[key] = value
        elif key == "mem_gb":
            if value is not None and (not isinstance(value, (int, float)) or value <= 0):
                raise _fail(spec, f"{where}.mem_gb", "a positive number of GB or null", value)
            values[key] = value
        else:
            values[key] = None if value is None else str(value)
    return Resources(**values)


@dataclass(frozen=True)
class Element:
    """One job of an array: a training run (``kind='train'``) or a depthpi CLI command.

    Attributes:
        name: unique in the sweep; also the run directory's name.
        stage: name of the stage (job array) it belongs to.
        run_dir: ``<sweep_dir>/<name>`` (absolute); ``run.out_dir`` of a training run.
        config: base config file (absolute) of a training run.
        overrides: full dotlist for ``load_config`` (spec, stage, element, grid, out_dir).
        varied: the element- and grid-level overrides that tell it from its siblings.
        command: depthpi CLI arguments of a command element (after ``depthpi``).
    """

    name: str
    stage: str
    kind: str
    run_dir: str
    config: str | None = None
    overrides: tuple[str, ...] = ()
    varied: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"name": self.name, "stage": self.stage, "kind": self.kind, "run_dir": self.run_dir,
                "config": self.config, "overrides": list(self.overrides), "varied": dict(self.varied),
                "command": list(self.command)}


@dataclass(frozen=True)
class Stage:
    """One SLURM job array; ``after`` names the stages it waits for (``afterok``)."""

    name: str
    kind: str
    elements: tuple[Element, ...]
    resources: Resources
    accelerate: str | None = None
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sweep:
    """An expanded spec: where it runs and its stages in submission order."""

    name: str
    spec_path: str
    out_dir: str
    stages: tuple[Stage, ...] = field(default_factory=tuple)

    @property
    def elements(self) -> list[Element]:
        return [e for s in self.stages for e in s.elements]


def format_value(value) -> str:
    """A YAML value as OmegaConf's dotlist parses it back (``true``, ``null``, ``[1, 2]``)."""
    if isinstance(value, (bool, list, dict)) or value is None:
        return json.dumps(value)
    return str(value)


def _substitute(text: str, values: dict[str, str], spec: str, key: str) -> str:
    """Replace ``{var}`` placeholders (not OmegaConf ``${…}``) by their values."""
    def replace(match: re.Match) -> str:
        if match.group(1) not in values:
            raise _fail(spec, key, f"placeholders among {{{', '.join(sorted(values))}}}", match.group(0))
        return values[match.group(1)]
    return _PLACEHOLDER.sub(replace, text)


def _overrides(raw, spec: str, key: str, values: dict[str, str]) -> list[tuple[str, str]]:
    """A mapping ``{key: value}`` or a list of ``key=value`` strings → ordered (key, value) pairs."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        pairs = [(str(k), format_value(v)) for k, v in raw.items()]
    elif isinstance(raw, list) and all(isinstance(x, str) and "=" in x for x in raw):
        pairs = [tuple(x.split("=", 1)) for x in raw]
    else:
        raise _fail(spec, key, "a mapping {a.b: value} or a list of 'a.b=value' strings", raw)
    return [(k.strip(), _substitute(v, values, spec, f"{key}.{k}")) for k, v in pairs]


def _token(key: str, value: str) -> str:
    """Name fragment of one grid coordinate: ``run.seed=0`` → ``seed-0``."""
    return f"{key.rsplit('.', 1)[-1]}-{_NAME_OK.sub('_', value).strip('_')}"


def _grid(raw, spec: str, key: str, values: dict[str, str]) -> list[list[tuple[str, str]]]:
    """All points of a ``{key: [values]}`` grid, in the spec's axis order (empty grid → [[]])."""
    if raw is None:
        return [[]]
    if not isinstance(raw, dict) or not all(isinstance(v, list) and v for v in raw.values()):
        raise _fail(spec, key, "a mapping of override keys to non-empty lists of values", raw)
    axes = [[(str(k), _substitute(format_value(v), values, spec, f"{key}.{k}")) for v in vs]
            for k, vs in raw.items()]
    return [list(point) for point in itertools.product(*axes)]


def _path(value, spec: str, key: str, must_exist: bool = True) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(spec, key, "a file path", value)
    path = Path(value).expanduser().resolve()
    if must_exist and not path.is_file():
        raise _fail(spec, key, "an existing file", value)
    return str(path)


def _train_elements(raw: dict, stage: str, sweep_dir: Path, common: list[tuple[str, str]],
                    values: dict[str, str], spec: str, where: str) -> list[Element]:
    """Elements × grid points of a training stage, each with its overrides and run dir."""
    rows = raw.get("elements")
    if rows is not None and (not isinstance(rows, list) or not rows):
        raise _fail(spec, f"{where}.elements", "a non-empty list of {name, config, overrides}", rows)
    stage_config = raw.get("config")
    stage_overrides = common + _overrides(raw.get("overrides"), spec, f"{where}.overrides", values)
    points = _grid(raw.get("grid"), spec, f"{where}.grid", values)
    elements = []
    for i, row in enumerate(rows or [{}]):
        key = f"{where}.elements[{i}]"
        if not isinstance(row, dict) or set(row) - _ELEMENT_KEYS:
            raise _fail(spec, key, f"a mapping with keys among {sorted(_ELEMENT_KEYS)}", row)
        config = row.get("config", stage_config)
        if config is None:
            raise _fail(spec, f"{key}.config", "a config file (here or in the stage's 'config')", None)
        config = _path(config, spec, f"{key}.config" if "config" in row else f"{where}.config")
        named_by_config = rows is not None or raw.get("grid") is None
        row_name = str(row["name"]) if "name" in row else (Path(config).stem if named_by_config else "")
        row_overrides = _overrides(row.get("overrides"), spec, f"{key}.overrides", values)
        for point in points:
            name = "_".join([p for p in [row_name, *(_token(k, v) for k, v in point)] if p]) or stage
            run_dir = str(sweep_dir / name)
            pairs = stage_overrides + row_overrides + point + [("run.out_dir", run_dir)]
            elements.append(Element(name=name, stage=stage, kind="train", run_dir=run_dir, config=config,
                                    overrides=tuple(f"{k}={v}" for k, v in pairs),
                                    varied=tuple(row_overrides + point)))
    return elements


def _command_elements(raw: dict, stage: str, sweep_dir: Path, values: dict[str, str], spec: str,
                      where: str) -> list[Element]:
    """One element per index 0..count-1 of a command stage, ``{index}``/``{count}`` filled in."""
    count = raw.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise _fail(spec, f"{where}.count", "a positive integer (array size)", count)
    command = raw["command"]
    if isinstance(command, list):
        command = shlex.join(str(c) for c in command)
    if not isinstance(command, str) or not command.strip():
        raise _fail(spec, f"{where}.command", "a depthpi CLI command line (string or list)", command)
    if command.split()[0] == "depthpi":
        command = command.split(None, 1)[1] if len(command.split()) > 1 else ""
    elements = []
    for index in range(count):
        local = {**values, "index": str(index), "count": str(count)}
        args = tuple(shlex.split(_substitute(command, local, spec, f"{where}.command")))
        name = f"{stage}-{index}" if count > 1 else stage
        elements.append(Element(name=name, stage=stage, kind="command", run_dir=str(sweep_dir / name),
                                command=args, varied=(("index", str(index)),)))
    return elements


def _stage(raw, index: int, previous: list[str], defaults: dict, sweep_dir: Path, values: dict[str, str],
           spec: str) -> Stage:
    """One ``stages:`` entry (or the top level of a single-stage spec) → a Stage."""
    where = f"stages[{index}]" if defaults["staged"] else "<top level>"
    if not isinstance(raw, dict):
        raise _fail(spec, where, "a mapping", raw)
    unknown = sorted(set(raw) - _STAGE_KEYS - (set() if defaults["staged"] else _SPEC_KEYS))
    if unknown:
        raise _fail(spec, f"{where}.{unknown[0]}", f"one of {sorted(_STAGE_KEYS)}", unknown[0])
    name = str(raw.get("name", f"stage{index}")) if defaults["staged"] else "main"
    if _NAME_OK.sub("", name) != name or name in previous:
        raise _fail(spec, f"{where}.name", "a unique name of letters, digits, '.', '+', '-'", name)
    kind = raw.get("kind", "command" if "command" in raw else "train")
    if kind not in ("train", "command") or (kind == "command") != ("command" in raw):
        raise _fail(spec, f"{where}.kind", "'train' (config/grid/elements) or 'command' (with 'command:')", kind)
    after = raw.get("after", previous[-1:])
    after = [after] if isinstance(after, str) else after
    if not isinstance(after, list) or any(a not in previous for a in after):
        raise _fail(spec, f"{where}.after", f"names of earlier stages among {previous}", after)
    resources = parse_resources(raw.get("resources"), defaults["resources"], spec, f"{where}.resources")
    accelerate = raw.get("accelerate", defaults["accelerate"])
    if accelerate is not None:
        accelerate = _path(accelerate, spec, f"{where}.accelerate")
    if kind == "train":
        elements = _train_elements(raw, name, sweep_dir, defaults["overrides"], values, spec, where)
    else:
        elements = _command_elements(raw, name, sweep_dir, values, spec, where)
    return Stage(name=name, kind=kind, elements=tuple(elements), resources=resources, accelerate=accelerate,
                 after=tuple(after))


def load_spec(path: str | Path, out: str | Path | None = None, variables: dict[str, str] | None = None) -> Sweep:
    """Read and expand a sweep spec.

    Args:
        path: the spec YAML.
        out: sweep directory (default: the spec's ``out:``, else ``runs/sweeps/<name>``).
        variables: values for ``{name}`` placeholders, over the spec's ``vars:``.

    Raises:
        SpecError: naming the file and key at fault and what was expected.
    """
    spec = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"sweep spec not found: {path}")
    raw = yaml.load(Path(path).read_text(), Loader=_SpecLoader)
    if not isinstance(raw, dict):
        raise _fail(spec, "<top level>", "a mapping", raw)
    staged = "stages" in raw
    unknown = sorted(set(raw) - _SPEC_KEYS - (set() if staged else _STAGE_KEYS))
    if unknown:
        raise _fail(spec, unknown[0], f"one of {sorted(_SPEC_KEYS | _STAGE_KEYS)}", unknown[0])
    name = str(raw.get("name", Path(path).stem))
    sweep_dir = Path(out or raw.get("out") or f"runs/sweeps/{name}").expanduser().resolve()
    spec_vars = raw.get("vars") or {}
    if not isinstance(spec_vars, dict):
        raise _fail(spec, "vars", "a mapping of placeholder names to values", spec_vars)
    values = {str(k): str(v) for k, v in {**spec_vars, **(variables or {})}.items()}
    values["sweep_dir"] = str(sweep_dir)
    defaults = {"staged": staged, "accelerate": raw.get("accelerate"),
                "resources": parse_resources(raw.get("resources"), Resources(), spec, "resources"),
                "overrides": _overrides(raw.get("overrides"), spec, "overrides", values)}
    # A single-stage spec: the top-level keys that are not spec-wide form the stage.
    stages_raw = raw["stages"] if staged else [{k: v for k, v in raw.items() if k not in _SPEC_KEYS}]
    if not isinstance(stages_raw, list) or not stages_raw:
        raise _fail(spec, "stages", "a non-empty list of stages", stages_raw)
    stages: list[Stage] = []
    for index, stage_raw in enumerate(stages_raw):
        stages.append(_stage(stage_raw, index, [s.name for s in stages], defaults, sweep_dir, values, spec))
    names = [e.name for s in stages for e in s.elements]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _fail(spec, "elements/grid", "unique element names (give elements a 'name:')", duplicates)
    return Sweep(name=name, spec_path=str(Path(path).resolve()), out_dir=str(sweep_dir), stages=tuple(stages))
