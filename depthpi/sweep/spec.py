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
    overrides: {data.num_workers: 8, run.deepspeed.zero_stage: 2}   # every training element
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
Precision and DeepSpeed are run-config keys (``run.precision``, ``run.deepspeed.*``), given
as overrides like any other; SLURM sets the process layout.

Values are never re-read by a shell: a command is split into arguments once, as written
(a string like a shell line, or a list), and a placeholder fills a single argument, so a
value with spaces, quotes or a leading ``--`` stays one argument; an override value is
written so that OmegaConf reads back the same string. Sweep, stage and element names are
``[A-Za-z0-9._-]`` (they name directories and jobs), every run directory is a folder of the
sweep directory, and no resource value may hold a control character (``values.py``).
"""
from __future__ import annotations

import itertools
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from depthpi.sweep.resources import Resources, parse_resources
from depthpi.sweep.values import (NAME_MAX_BYTES, RESERVED_NAMES, VAR, SpecError, argument_problem, check_run_dir,
                                  checked_key, checked_name, checked_text, dotlist_value, explicit_name, fail)

__all__ = ["Element", "Resources", "SpecError", "Stage", "Sweep", "load_spec"]

_SPEC_KEYS = {"name", "out", "vars", "resources", "overrides", "stages"}
_STAGE_KEYS = {"name", "kind", "config", "grid", "elements", "overrides", "resources", "after", "command", "count"}
_ELEMENT_KEYS = {"name", "config", "overrides"}
_PLACEHOLDER = re.compile(r"(?<!\$)\{(\w+)\}")  # {name}, but not OmegaConf's ${name}
_TOKEN_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")
_BUILT_IN_VARS = ("sweep_dir", "index", "count")
_NO_ACCELERATE = ("no accelerate config: precision and DeepSpeed are keys of the run config, set as overrides like "
                  "any other (e.g. run.precision=bf16, run.deepspeed.zero_stage=2; in a spec: overrides: "
                  "{run.deepspeed.zero_stage: 2}), and SLURM sets the process layout (resources: nodes, gpus_per_node)")


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


def _substitute(text: str, values: dict[str, str], spec: str, key: str) -> str:
    """Replace ``{var}`` placeholders (not OmegaConf ``${…}``) by their values."""
    def replace(match: re.Match) -> str:
        if match.group(1) not in values:
            raise fail(spec, key, f"placeholders among {{{', '.join(sorted(values))}}}", match.group(0))
        return values[match.group(1)]
    return _PLACEHOLDER.sub(replace, checked_text(text, spec, key))


def _filled(value, values: dict[str, str], spec: str, key: str):
    """A YAML value with placeholders filled into every string in it (lists and mappings included)."""
    if isinstance(value, str):
        return _substitute(value, values, spec, key)
    if isinstance(value, list):
        return [_filled(v, values, spec, key) for v in value]
    if isinstance(value, dict):
        return {k: _filled(v, values, spec, key) for k, v in value.items()}
    return value


def _overrides(raw, spec: str, key: str, values: dict[str, str]) -> list[tuple[str, str]]:
    """A mapping ``{key: value}`` or a list of ``key=value`` strings → ordered (key, dotlist text) pairs.

    A mapping's values are YAML values; a list entry's text is taken as typed on a command
    line, except that where it holds a placeholder the filled-in text is one string.
    """
    if raw is None:
        return []
    if isinstance(raw, dict):
        return [(checked_key(k, spec, f"{key}.{k}"), dotlist_value(_filled(v, values, spec, f"{key}.{k}")))
                for k, v in raw.items()]
    if not (isinstance(raw, list) and all(isinstance(x, str) and "=" in x for x in raw)):
        raise fail(spec, key, "a mapping {a.b: value} or a list of 'a.b=value' strings", raw)
    pairs = []
    for i, entry in enumerate(raw):
        name, text = entry.split("=", 1)
        at = f"{key}[{i}]"
        filled = _substitute(text, values, spec, at)
        pairs.append((checked_key(name, spec, at), dotlist_value(filled) if _PLACEHOLDER.search(text) else filled))
    return pairs


def _token(key: str, value: str) -> str:
    """Name fragment of one grid coordinate: ``run.seed=0`` → ``seed-0``."""
    return f"{key.rsplit('.', 1)[-1]}-{_TOKEN_UNSAFE.sub('_', value).strip('_')}"


def _grid(raw, spec: str, key: str, values: dict[str, str]) -> list[list[tuple[str, str]]]:
    """All points of a ``{key: [values]}`` grid, in the spec's axis order (empty grid → [[]])."""
    if raw is None:
        return [[]]
    if not isinstance(raw, dict) or not all(isinstance(v, list) and v for v in raw.values()):
        raise fail(spec, key, "a mapping of override keys to non-empty lists of values", raw)
    axes = [[(checked_key(k, spec, f"{key}.{k}"), dotlist_value(_filled(v, values, spec, f"{key}.{k}"))) for v in vs]
            for k, vs in raw.items()]
    return [list(point) for point in itertools.product(*axes)]


def _path(value, spec: str, key: str, must_exist: bool = True) -> str:
    if not isinstance(value, str) or not value:
        raise fail(spec, key, "a file path", value)
    path = Path(value).expanduser().resolve()
    if must_exist and not path.is_file():
        raise fail(spec, key, "an existing file", value)
    return str(path)


def _row_name(row: dict, named_by_config: bool, config: str, spec: str, key: str, config_key: str) -> tuple[str, str]:
    """The element's own name part and the key it comes from: its ``name:``, else its config
    file's stem, else (a grid-only stage) nothing: the grid values name the elements."""
    if "name" in row:
        name = explicit_name(row["name"], spec, f"{key}.name")
        return checked_name(name, spec, f"{key}.name", "element name", RESERVED_NAMES), f"{key}.name"
    if not named_by_config:
        return "", key
    origin = f"the name taken from config file {Path(config).name!r} (give the element a 'name:'):"
    return checked_name(Path(config).stem, spec, config_key, origin, RESERVED_NAMES), config_key


def _train_elements(raw: dict, stage: str, sweep_dir: Path, common: list[tuple[str, str]],
                    values: dict[str, str], spec: str, where: str) -> list[Element]:
    """Elements × grid points of a training stage, each with its overrides and run dir."""
    rows = raw.get("elements")
    if rows is not None and (not isinstance(rows, list) or not rows):
        raise fail(spec, f"{where}.elements", "a non-empty list of {name, config, overrides}", rows)
    stage_overrides = common + _overrides(raw.get("overrides"), spec, f"{where}.overrides", values)
    points = _grid(raw.get("grid"), spec, f"{where}.grid", values)
    elements = []
    for i, row in enumerate(rows or [{}]):
        key = f"{where}.elements[{i}]" if rows is not None else where
        if not isinstance(row, dict) or set(row) - _ELEMENT_KEYS:
            raise fail(spec, key, f"a mapping with keys among {sorted(_ELEMENT_KEYS)}", row)
        config = row.get("config", raw.get("config"))
        if config is None:
            raise fail(spec, f"{key}.config", "a config file (here or in the stage's 'config')", None)
        config_key = f"{key}.config" if "config" in row else f"{where}.config"
        config = _path(config, spec, config_key)
        named_by_config = rows is not None or raw.get("grid") is None
        row_name, name_key = _row_name(row, named_by_config, config, spec, key, config_key)
        row_overrides = _overrides(row.get("overrides"), spec, f"{key}.overrides", values)
        for point in points:
            name = "_".join([p for p in [row_name, *(_token(k, v) for k, v in point)] if p]) or stage
            at = f"{where}.grid" if point else name_key
            name = checked_name(name, spec, at, "element name", RESERVED_NAMES)
            run_dir = sweep_dir / name
            check_run_dir(run_dir, sweep_dir, spec, at)
            pairs = stage_overrides + row_overrides + point + [("run.out_dir", dotlist_value(str(run_dir)))]
            elements.append(Element(name=name, stage=stage, kind="train", run_dir=str(run_dir), config=config,
                                    overrides=tuple(f"{k}={v}" for k, v in pairs),
                                    varied=tuple(row_overrides + point)))
    return elements


def _command_template(command, spec: str, key: str) -> list[str]:
    """A command stage's arguments as written: a list as it is, a string split once like a shell line.

    Placeholders are filled into single arguments afterwards, so what they hold is never split.
    """
    if isinstance(command, str):
        try:
            args = shlex.split(command)
        except ValueError as err:  # "No closing quotation", in the spec's own text
            raise fail(spec, key, f"a command line that splits into arguments ({err})", command) from None
    elif isinstance(command, list) and all(isinstance(c, (str, int, float)) and not isinstance(c, bool)
                                           for c in command):
        args = [str(c) for c in command]
    else:
        args = []
    args = args[1:] if args[:1] == ["depthpi"] else args
    if not args:
        raise fail(spec, key, "a depthpi CLI command (a string, or a list of arguments)", command)
    return args


def _command_elements(raw: dict, stage: str, sweep_dir: Path, values: dict[str, str], spec: str,
                      where: str) -> list[Element]:
    """One element per index 0..count-1 of a command stage, ``{index}``/``{count}`` filled in."""
    count = raw.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise fail(spec, f"{where}.count", "a positive integer (array size)", count)
    key = f"{where}.command"
    template = _command_template(raw["command"], spec, key)
    elements = []
    for index in range(count):
        local = {**values, "index": str(index), "count": str(count)}
        args = tuple(_substitute(arg, local, spec, key) for arg in template)
        for arg in args:
            problem = argument_problem(arg)
            if problem:
                shown = arg if len(arg) < 200 else arg[:200] + "…"
                raise SpecError(f"sweep spec {spec}: key {key!r}: argument {shown!r} cannot be passed to a job: "
                                f"{problem}")
        name = checked_name(f"{stage}-{index}" if count > 1 else stage, spec, f"{where}.name", "element name",
                             RESERVED_NAMES)
        check_run_dir(sweep_dir / name, sweep_dir, spec, f"{where}.name")
        elements.append(Element(name=name, stage=stage, kind="command", run_dir=str(sweep_dir / name),
                                command=args, varied=(("index", str(index)),)))
    return elements


def _refuse_accelerate(raw: dict, spec: str, key: str) -> None:
    if "accelerate" in raw:
        raise SpecError(f"sweep spec {spec}: key {key!r}: {_NO_ACCELERATE}; remove the key")


def _stage(raw, index: int, previous: list[str], defaults: dict, sweep_dir: Path, values: dict[str, str],
           spec: str) -> Stage:
    """One ``stages:`` entry (or the top level of a single-stage spec) → a Stage."""
    where = f"stages[{index}]" if defaults["staged"] else "<top level>"
    if not isinstance(raw, dict):
        raise fail(spec, where, "a mapping", raw)
    _refuse_accelerate(raw, spec, f"{where}.accelerate")
    unknown = sorted(set(raw) - _STAGE_KEYS - (set() if defaults["staged"] else _SPEC_KEYS), key=str)
    if unknown:
        raise fail(spec, f"{where}.{unknown[0]}", f"one of {sorted(_STAGE_KEYS)}", unknown[0])
    name = explicit_name(raw.get("name", f"stage{index}"), spec, f"{where}.name") if defaults["staged"] else "main"
    checked_name(name, spec, f"{where}.name", "stage name")
    if name in previous:
        raise fail(spec, f"{where}.name", f"a name no earlier stage has ({previous})", name)
    kind = raw.get("kind", "command" if "command" in raw else "train")
    if kind not in ("train", "command") or (kind == "command") != ("command" in raw):
        raise fail(spec, f"{where}.kind", "'train' (config/grid/elements) or 'command' (with 'command:')", kind)
    after = raw.get("after", previous[-1:])
    after = [after] if isinstance(after, str) else after
    if not isinstance(after, list) or any(a not in previous for a in after):
        raise fail(spec, f"{where}.after", f"names of earlier stages among {previous}", after)
    resources = parse_resources(raw.get("resources"), defaults["resources"], spec, f"{where}.resources")
    if kind == "train":
        elements = _train_elements(raw, name, sweep_dir, defaults["overrides"], values, spec, where)
    else:
        elements = _command_elements(raw, name, sweep_dir, values, spec, where)
    return Stage(name=name, kind=kind, elements=tuple(elements), resources=resources, after=tuple(after))


def _sweep_name(raw: dict, path: Path, spec: str) -> str:
    if "name" in raw:
        return checked_name(explicit_name(raw["name"], spec, "name"), spec, "name", "sweep name")
    return checked_name(path.stem, spec, "name", "the name taken from the spec file's name (give the spec a "
                                                  "'name:'):")


def _sweep_dir(out, raw: dict, name: str, spec: str) -> Path:
    """The sweep's output directory: ``--out``, else the spec's ``out:``, else ``runs/sweeps/<name>``.

    Its path goes into every job's log paths, where SLURM and submitit expand ``%j``, ``%A``,
    ... and a backslash turns SLURM's expansion off: neither ``%`` nor ``\\`` may appear in it.
    """
    key, value = ("--out", out) if out is not None else ("out", raw.get("out") or f"runs/sweeps/{name}")
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise fail(spec, key, "a directory path", value)
    text = checked_text(str(value), spec, key)
    if "%" in text or "\\" in text:
        raise fail(spec, key, "a directory path without '%' or '\\' (SLURM and submitit read them in log paths)",
                   text)
    path = Path(text).expanduser().resolve()
    long_part = next((part for part in path.parts if len(part.encode()) > NAME_MAX_BYTES), None)
    if long_part:
        raise fail(spec, key, f"a path whose folder names have at most {NAME_MAX_BYTES} bytes", long_part[:80] + "…")
    return path


def _variables(spec_vars, cli_vars: dict | None, sweep_dir: Path, spec: str) -> dict[str, str]:
    """Placeholder values: the spec's ``vars:``, then ``--var`` (which wins), then ``sweep_dir``."""
    if not isinstance(spec_vars, dict):
        raise fail(spec, "vars", "a mapping of placeholder names to values", spec_vars)
    values = {}
    for source, given in (("vars", spec_vars), ("--var", cli_vars or {})):
        for name, value in given.items():
            key = f"vars.{name}" if source == "vars" else f"--var {name}"
            if not isinstance(name, str) or not VAR.fullmatch(name) or name in _BUILT_IN_VARS:
                raise fail(spec, key, f"a placeholder name of letters, digits and '_', other than the built-in "
                                      f"{', '.join(_BUILT_IN_VARS)}", name)
            if isinstance(value, (list, dict)) or value is None or value == "":
                raise fail(spec, key, "a non-empty text or number", value)
            values[name] = checked_text(value if isinstance(value, str) else dotlist_value(value), spec, key)
    return {**values, "sweep_dir": str(sweep_dir)}


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
        raise fail(spec, "<top level>", "a mapping", raw)
    _refuse_accelerate(raw, spec, "accelerate")
    staged = "stages" in raw
    unknown = sorted(set(raw) - _SPEC_KEYS - (set() if staged else _STAGE_KEYS), key=str)
    if unknown:
        raise fail(spec, unknown[0], f"one of {sorted(_SPEC_KEYS | _STAGE_KEYS)}", unknown[0])
    name = _sweep_name(raw, Path(path), spec)
    sweep_dir = _sweep_dir(out, raw, name, spec)
    values = _variables(raw.get("vars") or {}, variables, sweep_dir, spec)
    defaults = {"staged": staged,
                "resources": parse_resources(raw.get("resources"), Resources(), spec, "resources"),
                "overrides": _overrides(raw.get("overrides"), spec, "overrides", values)}
    # A single-stage spec: the top-level keys that are not spec-wide form the stage.
    stages_raw = raw["stages"] if staged else [{k: v for k, v in raw.items() if k not in _SPEC_KEYS}]
    if not isinstance(stages_raw, list) or not stages_raw:
        raise fail(spec, "stages", "a non-empty list of stages", stages_raw)
    stages: list[Stage] = []
    for index, stage_raw in enumerate(stages_raw):
        stages.append(_stage(stage_raw, index, [s.name for s in stages], defaults, sweep_dir, values, spec))
    names = [e.name for s in stages for e in s.elements]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise fail(spec, "elements/grid", "unique element names (give elements a 'name:')", duplicates)
    return Sweep(name=name, spec_path=str(Path(path).resolve()), out_dir=str(sweep_dir), stages=tuple(stages))
