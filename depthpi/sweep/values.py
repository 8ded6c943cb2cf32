"""What a spec's values may be, and how they travel to a job without being re-read.

A sweep's names become directories, job names and array file names; its resource values
become lines of an sbatch file; its command arguments go to ``exec`` one by one; its
overrides go to OmegaConf's dotlist parser. Each check here guards one of those channels:
names are plain ``[A-Za-z0-9._-]`` (never ``.`` or ``..``), no value carries a control
character (a newline would start a line of its own in the sbatch file), and an override
value is written so that the dotlist parser reads back exactly the text it was given.
"""
from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

NAME = re.compile(r"[A-Za-z0-9._-]+")
NAME_MAX_BYTES = 255  # a directory name (NAME_MAX on Linux)
ARG_MAX_BYTES = 131072  # one exec argument (MAX_ARG_STRLEN on Linux)
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")  # a config key: a.b.c
VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a {placeholder} name
# Entries of a sweep directory that are not run directories (submitit's files, the plan, collect's tables).
RESERVED_NAMES = frozenset({"submitit", "sweep.json", "results.md", "results.csv", "results.png"})
RUN_DIR_MAX_BYTES = 3840  # PATH_MAX (4096) less room for checkpoints/step-*/… and log files beneath


class SpecError(ValueError):
    """A spec file that cannot be expanded; the message names the file, key and expectation."""


def fail(spec: str, key: str, expected: str, got) -> SpecError:
    """The error for ``key`` of ``spec``: what was expected and what was found."""
    return SpecError(f"sweep spec {spec}: key {key!r}: expected {expected}, got {got!r}")


# Line breaks and other control characters (Cc), invisible format characters such as
# bidirectional overrides (Cf), and Unicode's own line/paragraph separators.
_CONTROL_CATEGORIES = {"Cc", "Cf", "Zl", "Zp"}


def control_character(text: str) -> str | None:
    """The first control character of ``text`` as ``U+000A``, or None."""
    for char in text:
        if unicodedata.category(char) in _CONTROL_CATEGORIES:
            return f"U+{ord(char):04X}"
    return None


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a sweep, stage or element name, or None when it can."""
    if not NAME.fullmatch(name):
        return "only letters A-Z a-z, digits, '.', '_' and '-' are allowed"
    if set(name) == {"."}:
        return "'.' and '..' name directories that already exist"
    if len(name.encode()) > NAME_MAX_BYTES:
        return f"at most {NAME_MAX_BYTES} characters (a directory name)"
    return None


def argument_problem(arg: str) -> str | None:
    """Why ``arg`` cannot be one command-line argument of a job, or None when it can."""
    char = control_character(arg)
    if char:
        return f"it holds a control character ({char})"
    if len(arg.encode()) > ARG_MAX_BYTES:
        return f"it is longer than {ARG_MAX_BYTES} bytes, the most one argument of a command may hold"
    return None


_UNREADABLE = object()


def _dotlist_reads(text: str):
    """What OmegaConf's dotlist parser makes of ``key=<text>`` (a sentinel when it fails)."""
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={text}"]))["v"]
    except (OmegaConfBaseException, YAMLError, ValueError):
        return _UNREADABLE


def dotlist_value(value) -> str:
    """``value`` as text that a ``key=<text>`` dotlist override reads back unchanged.

    A string is kept as written where the parser gives it back as the same string, and is
    otherwise written as a double-quoted YAML string: ``a #b`` would lose ``#b``, ``x: y``
    become a mapping, ``''`` and ``'null'`` null, ``'3'`` an int (a typed config field still
    converts a string ``'3'`` or ``'1e-4'`` to its type). Lists and mappings are JSON.
    """
    if isinstance(value, str):
        return value if _dotlist_reads(value) == value else json.dumps(value, ensure_ascii=False)
    if isinstance(value, (bool, list, dict)) or value is None:
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def explicit_name(value, spec: str, key: str) -> str:
    """An explicit ``name:``: a string, or an int (a float would lose digits: 1.10 → '1.1')."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise fail(spec, key, "a name as a string (quote numbers such as \"1.10\")", value)
    return str(value)


def checked_name(name: str, spec: str, key: str, origin: str, reserved: frozenset = frozenset()) -> str:
    """``name`` when it can name a directory and a job; else a SpecError naming its origin."""
    problem = name_problem(name)
    if problem is None and name in reserved:
        problem = "the sweep directory keeps a file or folder of that name"
    if problem:
        raise SpecError(f"sweep spec {spec}: key {key!r}: {origin} {name!r} cannot name a run directory or job: "
                        f"{problem}")
    return name


def check_run_dir(run_dir: Path, sweep_dir: Path, spec: str, key: str) -> None:
    """A run directory must resolve to a folder of the sweep directory (a symlink could lead out)
    and leave room under it for checkpoint and log paths."""
    resolved = run_dir.resolve()
    if resolved.parent != sweep_dir:
        raise SpecError(f"sweep spec {spec}: key {key!r}: run directory {run_dir} resolves to {resolved}, which is "
                        f"not a folder of the sweep directory {sweep_dir}")
    if len(str(resolved).encode()) > RUN_DIR_MAX_BYTES:
        raise SpecError(f"sweep spec {spec}: key {key!r}: run directory {str(run_dir)[:120]}… is longer than "
                        f"{RUN_DIR_MAX_BYTES} bytes; the files under it would pass the system's path limit")


def checked_text(value: str, spec: str, key: str) -> str:
    """A spec string bound for a config value or an argument: no control characters."""
    char = control_character(value)
    if char:
        raise fail(spec, key, f"a value without control characters (found {char})", value)
    return value


def checked_key(key, spec: str, where: str) -> str:
    """An override key: dotted identifiers (``optim.lr``), so it cannot carry ``=`` or a second override."""
    if not isinstance(key, str) or not KEY.fullmatch(key.strip()):
        raise fail(spec, where, "a config key such as 'optim.lr' (letters, digits, '_', dots)", key)
    return key.strip()
