"""Sweeps without a cluster: spec expansion, what values and names may be, sbatch parameters,
the job callables, status/collect on fabricated run directories, and the local executor.
Real SLURM jobs are in test_sweep_slurm.py."""
from __future__ import annotations

import json
import math
import os
import pickle
import re
import time
from pathlib import Path

import pytest
import yaml

from depthpi.cli import main as depthpi_main
from depthpi.sweep import report, submit
from depthpi.sweep.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo" / "baseline_rgb.yaml"


def sweep_main(argv: list[str]) -> None:
    depthpi_main(["sweep", *argv])


def write_spec(tmp_path: Path, spec: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# --- spec expansion -----------------------------------------------------------------------
def test_list_times_grid_expands_with_names_overrides_and_run_dirs(tmp_path):
    spec = write_spec(tmp_path, {
        "name": "t", "overrides": {"data.num_workers": 0},
        "elements": [{"config": str(DEMO)}, {"name": "lr", "config": str(DEMO), "overrides": {"optim.lr": 1e-4}}],
        "grid": {"run.seed": [0, 1], "model.width": [0.25]}})
    sweep = load_spec(spec, out=tmp_path / "sw")
    names = [e.name for e in sweep.elements]
    assert names == ["baseline_rgb_seed-0_width-0.25", "baseline_rgb_seed-1_width-0.25",
                     "lr_seed-0_width-0.25", "lr_seed-1_width-0.25"]
    element = sweep.elements[3]
    assert list(element.overrides.items()) == [("data.num_workers", 0), ("optim.lr", 1e-4), ("run.seed", 1),
                                               ("model.width", 0.25),
                                               ("run.out_dir", str(tmp_path / "sw" / "lr_seed-1_width-0.25"))]
    assert element.run_dir == str(tmp_path / "sw" / element.name) and element.config == str(DEMO)
    assert len(sweep.arrays) == 1 and sweep.arrays[0].after == ()


def test_grid_only_names_and_values_round_trip_through_load_config(tmp_path):
    spec = write_spec(tmp_path, {"config": str(DEMO), "grid": {"run.seed": [3], "run.cpu": [True],
                                                                "data.unlabeled": [None]}})
    (element,) = load_spec(spec, out=tmp_path / "sw").elements
    assert element.name == "seed-3_cpu-true_unlabeled-null"
    from depthpi.config import load_config

    cfg = load_config(element.config, element.overrides)
    assert (cfg.run.seed, cfg.run.cpu, cfg.data.unlabeled, cfg.run.out_dir) == (3, True, None, element.run_dir)


def test_arrays_command_array_placeholders_and_dependencies(tmp_path):
    spec = write_spec(tmp_path, {
        "vars": {"teacher": "t.pt"},
        "resources": {"gpus_per_node": 2, "time": "1:30:00"},
        "arrays": [
            {"name": "pre", "command": "depthpi precompute --teacher {teacher} --out {sweep_dir}/f "
                                       "--shard-index {index} --num-shards {count}", "count": 3,
             "resources": {"gpus_per_node": 1}},
            {"name": "students", "config": str(DEMO), "overrides": {"teacher.features": "{sweep_dir}/f"},
             "grid": {"run.seed": [0, 1]}},
            {"name": "free", "after": [], "config": str(DEMO)}]})
    sweep = load_spec(spec, out=tmp_path / "sw", variables={"teacher": "/abs/t.pt"})
    pre, students, free = sweep.arrays
    assert [e.name for e in pre.elements] == ["pre-0", "pre-1", "pre-2"]
    assert pre.elements[2].command == ("precompute", "--teacher", "/abs/t.pt", "--out", f"{tmp_path}/sw/f",
                                       "--shard-index", "2", "--num-shards", "3")
    assert pre.resources.gpus_per_node == 1 and pre.resources.minutes == 90 and pre.resources.tasks == 1
    assert students.after == ("pre",) and students.resources.gpus_per_node == 2 and students.resources.tasks == 2
    assert students.elements[0].overrides["teacher.features"] == f"{tmp_path}/sw/f"
    assert free.after == () and free.elements[0].name == "baseline_rgb"


@pytest.mark.parametrize("written, minutes", [
    ("30", 30), ("30:00", 30), ("30:01", 31), ("4:00:00", 240), ("1:30:00", 90),
    ("1-12", 36 * 60), ("1-12:30", 36 * 60 + 30), ("2-00:00:01", 2 * 24 * 60 + 1), ("48:00:00", 48 * 60)])
def test_time_is_passed_as_sbatch_reads_it(tmp_path, written, minutes):
    path = tmp_path / "spec.yaml"
    path.write_text(f"config: {DEMO}\nresources:\n  time: '{written}'\n")
    resources = load_spec(path, out=tmp_path / "sw").arrays[0].resources
    assert (resources.time, resources.minutes) == (written, minutes)


@pytest.mark.parametrize("written", ["4:00:00", "90"])
def test_an_unquoted_time_is_refused_not_misread(tmp_path, written):
    """Unquoted, YAML 1.1 reads ``4:00:00`` as the base-60 number 14400: sbatch would read 10 days."""
    path = tmp_path / "spec.yaml"
    path.write_text(f"config: {DEMO}\nresources:\n  time: {written}\n")
    with pytest.raises(SpecError, match=r"key 'resources.time': expected a SLURM time as a quoted string"):
        load_spec(path, out=tmp_path / "sw")


@pytest.mark.parametrize("spec, key, expected", [
    ({"config": str(DEMO), "grdi": {"run.seed": [0]}}, "grdi", "Did you mean: 'grid'"),
    ({"config": str(DEMO), "resources": {"time": "soon"}}, "resources.time", "H:M:S"),
    ({"config": str(DEMO), "resources": {"gpus": 4}}, "resources.gpus", "not in 'Resources'"),
    ({"config": str(DEMO), "resources": {"nodes": 0}}, "resources.nodes", ">= 1"),
    ({"config": str(DEMO), "resources": {"gpus_per_node": 8, "tasks_per_node": 2}}, "resources.tasks_per_node",
     "one task per GPU"),
    ({"config": "configs/nope.yaml"}, "config", "an existing config file"),
    ({"elements": [{"config": str(DEMO)}, {"config": str(DEMO)}]}, "elements/grid", "unique element names"),
    ({"config": str(DEMO), "overrides": {"a.b": "{nope}"}}, "overrides.a.b", "placeholders among"),
    ({"config": str(DEMO), "overrides": ["optim.lr=1"]}, "overrides", "expected a mapping"),
    ({"arrays": [{"name": "a", "config": str(DEMO)}, {"name": "b", "after": ["c"], "config": str(DEMO)}]},
     "arrays[1].after", "earlier arrays"),
    ({"arrays": [{"name": "a", "config": str(DEMO)}], "grid": {"run.seed": [0]}}, "grid", "inside an array"),
    ({"command": "eval", "count": 0}, "count", "positive integer"),
    ({"command": "eval", "kind": "train"}, "kind", "'command' with a 'command:'"),
    ({"config": str(DEMO), "kind": "cmd"}, "kind", "expected one of [train, command]"),
])
def test_spec_errors_name_file_key_and_expectation(tmp_path, spec, key, expected):
    path = write_spec(tmp_path, spec)
    with pytest.raises(SpecError) as err:
        load_spec(path, out=tmp_path / "sw")
    message = str(err.value)
    assert str(path) in message and f"key {key!r}" in message and expected in message


# --- values travel as they are; names and paths stay inside the sweep -----------------------
AWKWARD = ["a b", "a --out /x", "it's", 'say "hi', "a #b", "x: y", "[1", "{not_a_var", "$(touch /tmp/owned)",
           "ünïcødé ✓", "-", "x" * 5000]


@pytest.mark.parametrize("value", AWKWARD)
def test_a_var_stays_one_command_argument(tmp_path, value):
    """A placeholder is filled into one argument: spaces, quotes, options and unicode are never re-split."""
    spec = write_spec(tmp_path, {"arrays": [
        {"name": "text", "command": "precompute --teacher {t} --out {sweep_dir}/f-{t}"},
        {"name": "list", "command": ["precompute", "--teacher", "{t}", "--views", 4]}]})
    text, listed = load_spec(spec, out=tmp_path / "sw", variables={"t": value}).elements
    assert text.command == ("precompute", "--teacher", value, "--out", f"{tmp_path}/sw/f-{value}")
    assert listed.command == ("precompute", "--teacher", value, "--views", "4")


def test_a_command_reaches_the_job_as_the_same_argument_list(tmp_path, monkeypatch):
    """A command element's job runs ``python -m depthpi.cli`` with the element's arguments, no shell between."""
    import submitit

    calls = []
    monkeypatch.setattr(submitit.helpers, "CommandFunction",
                        lambda command, **kw: lambda: calls.append(command) or "ok")
    for key, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "9", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1",
                       "SLURM_JOB_NODELIST": "localhost", "SUBMITIT_FOLDER": str(tmp_path / "submitit")}.items():
        monkeypatch.setenv(key, value)
    spec = write_spec(tmp_path, {"command": "precompute --teacher {t}"})
    (element,) = load_spec(spec, out=tmp_path / "sw", variables={"t": "a --out /x; it's"}).elements
    submit.ElementJob(element)()
    assert calls[0][-3:] == ["precompute", "--teacher", "a --out /x; it's"]


@pytest.mark.parametrize("value", ["a b", "a #b", "x: y", "it's", '"quoted"', "[1", "{a: 1}", "null", "3",
                                   "  padded ", "ünï"])
def test_override_values_reach_the_config_unchanged(tmp_path, value):
    """A string given as a mapping value, a grid value or through a placeholder arrives in the run
    config as the same string: a '#' starts no comment, ': ' makes no mapping, 'null' is no null."""
    from depthpi.config import load_config

    specs = {"map": {"overrides": {"experiment": value}}, "grid": {"grid": {"experiment": [value]}},
             "var": {"overrides": {"experiment": "{v}"}},
             "element": {"elements": [{"overrides": {"experiment": value}}]}}
    for name, spec in specs.items():
        path = write_spec(tmp_path, {"name": name, "config": str(DEMO), **spec}, f"{name}.yaml")
        (element,) = load_spec(path, out=tmp_path / name, variables={"v": value}).elements
        assert load_config(element.config, element.overrides).experiment == value, (name, element.overrides)


def test_an_empty_string_stays_a_string(tmp_path):
    from depthpi.config import load_config

    spec = write_spec(tmp_path, {"config": str(DEMO), "grid": {"experiment": ["", "x"]}})
    elements = load_spec(spec, out=tmp_path / "sw").elements
    assert [load_config(e.config, e.overrides).experiment for e in elements] == ["", "x"]


def test_a_long_value_reaches_the_config_but_names_no_directory(tmp_path):
    from depthpi.config import load_config

    value = "x" * 5000
    path = write_spec(tmp_path, {"config": str(DEMO), "overrides": {"experiment": value, "data.train": "{v}"}})
    (element,) = load_spec(path, out=tmp_path / "sw", variables={"v": value}).elements
    cfg = load_config(element.config, element.overrides)
    assert (cfg.experiment, cfg.data.train) == (value, value)
    grid = write_spec(tmp_path, {"config": str(DEMO), "grid": {"experiment": [value]}}, "grid.yaml")
    with pytest.raises(SpecError, match=r"key 'grid': element name 'experiment-x+' .*at most 255"):
        load_spec(grid, out=tmp_path / "sw")


def spec_error(tmp_path, spec: dict, variables=None, out="sw", name: str = "spec.yaml") -> str:
    """The message of the SpecError that loading ``spec`` raises (it names the spec file)."""
    path = write_spec(tmp_path, spec, name)
    with pytest.raises(SpecError) as err:
        load_spec(path, out=tmp_path / out if out else None, variables=variables)
    assert str(path) in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "/abs", "a b", "ünï", "", "x" * 256, "a\nb", "$(x)",
                                  "a\tb", 1.5, True])
def test_sweep_array_and_element_names_are_plain(tmp_path, name):
    """Names become directories and job names: [A-Za-z0-9._-], never '.' or '..', at most 255 characters;
    a float is refused (1.10 would name '1.1'), an int taken as written."""
    messages = {"elements[0].name": spec_error(tmp_path, {"elements": [{"name": name, "config": str(DEMO)}]}),
                "arrays[0].name": spec_error(tmp_path, {"arrays": [{"name": name, "config": str(DEMO)}]}),
                "name": spec_error(tmp_path, {"name": name, "config": str(DEMO)})}
    for key, message in messages.items():
        assert f"key {key!r}" in message, message
        expected = ("incompatible with type hint" if not isinstance(name, str) else
                    "control characters" if "\n" in name or "\t" in name else
                    f"{name!r} cannot name a run directory or job")
        assert expected in message, message
@pytest.mark.parametrize("name", ["submitit", "sweep.json", "results.md"])
def test_element_names_of_the_sweep_directory_own_entries_are_refused(tmp_path, name):
    message = spec_error(tmp_path, {"elements": [{"name": name, "config": str(DEMO)}]})
    assert "key 'elements[0].name'" in message and "keeps a file or folder of that name" in message


def test_names_taken_from_files_say_where_they_came_from(tmp_path):
    odd = tmp_path / "my config.yaml"
    odd.write_text(DEMO.read_text().replace("base: ", f"base: {DEMO.parent}/"))
    message = spec_error(tmp_path, {"elements": [{"config": str(odd)}]})
    assert "key 'elements[0].config'" in message and "config file 'my config.yaml'" in message \
        and "give the element a 'name:'" in message
    path = write_spec(tmp_path, {"config": str(DEMO)}, "my sweep.yaml")
    with pytest.raises(SpecError, match=r"key 'name': the name taken from the spec file's name .*'my sweep'"):
        load_spec(path, out=tmp_path / "sw")


def test_a_run_directory_that_resolves_outside_the_sweep_is_refused(tmp_path):
    sweep_dir, outside = tmp_path / "sw", tmp_path / "elsewhere"
    sweep_dir.mkdir()
    outside.mkdir()
    (sweep_dir / "run").symlink_to(outside)
    message = spec_error(tmp_path, {"elements": [{"name": "run", "config": str(DEMO)}]})
    assert f"resolves to {outside}" in message and "not a folder of the sweep directory" in message


@pytest.mark.parametrize("key", ["partition", "account", "qos", "constraint", "setup"])
@pytest.mark.parametrize("bad", ["gpu\n#SBATCH --wrap=x", "gpu\r", "a\tb", "x\x00", "x\u2028y", "x\x1b[2J", "x\u202e"])
def test_control_characters_in_resource_values_are_refused(tmp_path, key, bad):
    """A newline would put its own line into the sbatch file (here an injected #SBATCH option)."""
    message = spec_error(tmp_path, {"config": str(DEMO), "resources": {key: bad}})
    assert f"key 'resources.{key}'" in message and "control characters" in message
    listed = spec_error(tmp_path, {"arrays": [{"name": "s", "config": str(DEMO), "resources": {"setup": ["ok", bad]}}]})
    assert "key 'arrays[0].resources.setup[1]'" in listed


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True, "64GB", 0])
def test_memory_must_be_a_positive_finite_number(tmp_path, bad):
    assert "key 'resources.mem_gb'" in spec_error(tmp_path, {"config": str(DEMO), "resources": {"mem_gb": bad}})


def test_sbatch_values_with_spaces_stay_one_value(tmp_path):
    """Spaces need no refusing: submitit quotes each #SBATCH value, and sbatch reads the quotes."""
    spec = write_spec(tmp_path, {"command": "eval --help", "resources": {"constraint": "a100 | h100"}})
    sweep = load_spec(spec, out=tmp_path / "with space")
    script = submit.sbatch_script(sweep.arrays[0], sweep)
    assert "#SBATCH --constraint='a100 | h100'" in script
    assert f"#SBATCH --output='{tmp_path}/with space/submitit/main/%j/%j_0_log.out'" in script


@pytest.mark.parametrize("variables, key, expected", [
    ({"sweep_dir": "/x"}, "--var sweep_dir", "other than the built-in"),
    ({"index": "3"}, "--var index", "other than the built-in"),
    ({"a b": "x"}, "--var a b", "placeholder name"),
    ({"": "x"}, "--var ", "placeholder name"),
    ({"t": ""}, "--var t", "non-empty"),
    ({"t": "a\nb"}, "--var t", "control characters"),
    ({"t": "a\rb"}, "--var t", "control characters"),
])
def test_bad_vars_are_named(tmp_path, variables, key, expected):
    message = spec_error(tmp_path, {"command": "precompute --teacher x"}, variables)
    assert f"key {key!r}" in message and expected in message


def test_bad_spec_vars_overrides_and_commands_are_named(tmp_path):
    assert "key 'vars.t'" in spec_error(tmp_path, {"vars": {"t": "a\nb"}, "command": "eval"})
    assert "key 'vars.sweep_dir'" in spec_error(tmp_path, {"vars": {"sweep_dir": "/x"}, "command": "eval"})
    message = spec_error(tmp_path, {"config": str(DEMO), "overrides": {"run.seed=3 run.cpu": 1}})
    assert "key 'overrides.run.seed=3 run.cpu'" in message and "config key" in message
    assert "key 'elements[0].overrides.a b'" in spec_error(tmp_path, {"elements": [
        {"config": str(DEMO), "overrides": {"a b": 1}}]})
    assert "key 'grid.a=b'" in spec_error(tmp_path, {"config": str(DEMO), "grid": {"a=b": [1]}})
    assert "key 'overrides.experiment'" in spec_error(tmp_path, {"config": str(DEMO),
                                                                 "overrides": {"experiment": "a\nb"}})
    message = spec_error(tmp_path, {"command": "eval --out 'unclosed"})
    assert "key 'command'" in message and "No closing quotation" in message
    message = spec_error(tmp_path, {"command": "eval --x {t}"}, {"t": "y" * 140000})
    assert "key 'command'" in message and "131072 bytes" in message
    assert "key 'command'" in spec_error(tmp_path, {"command": "depthpi"})


@pytest.mark.parametrize("out, expected", [("a\nb", "U+000A"), ("run%j", "without '%'"), ("100%", "without '%'"),
                                           ("a\\b", "without '%' or '\\'"), ("x" * 256, "at most 255 bytes")])
def test_output_paths_that_jobs_would_misread_are_refused(tmp_path, out, expected):
    """A newline breaks the sbatch file; SLURM and submitit expand %j, %A... in log paths, and a
    backslash stops SLURM's expansion; a folder name past 255 bytes cannot be created."""
    assert "key '--out'" in (message := spec_error(tmp_path, {"command": "eval"}, out=out)) and expected in message
    message = spec_error(tmp_path, {"command": "eval", "out": str(tmp_path / out)}, out=None)
    assert "key 'out'" in message and expected in message


def test_a_run_directory_too_deep_for_its_files_is_refused(tmp_path):
    deep = "/".join(["d" * 250] * 16)
    message = spec_error(tmp_path, {"elements": [{"name": "run", "config": str(DEMO)}]}, out=deep)
    assert "key 'elements[0].name'" in message and "longer than 3840 bytes" in message


def test_a_misspelt_placeholder_is_named(tmp_path):
    message = spec_error(tmp_path, {"command": "precompute --teacher {tëacher}"}, {"teacher": "t.pt"})
    assert "key 'command'" in message and "{tëacher}" in message and "placeholders among" in message


@pytest.mark.parametrize("where", ["top", "array"])
def test_an_accelerate_key_is_refused_with_what_replaces_it(tmp_path, where):
    accelerate = str(ROOT / "configs/accelerate/deepspeed_zero2.yaml")
    spec = {"accelerate": accelerate, "config": str(DEMO)} if where == "top" else \
        {"arrays": [{"name": "s", "config": str(DEMO), "accelerate": accelerate}]}
    message = spec_error(tmp_path, spec)
    assert ("key 'accelerate'" if where == "top" else "key 'arrays[0].accelerate'") in message
    assert "run.deepspeed.zero_stage=2" in message and "run.precision" in message and "SLURM sets" in message


def test_train_job_sets_only_the_rendezvous_and_calls_train(tmp_path, monkeypatch):
    """No ACCELERATE_* variables: precision and DeepSpeed come from the run config alone."""
    import depthpi.train.engine as engine

    for key, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "41", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1",
                       "SLURM_JOB_NODELIST": "node1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SUBMITIT_FOLDER", str(tmp_path / "submitit"))
    rendezvous = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    for key in rendezvous:
        monkeypatch.setenv(key, "stale")  # so that teardown restores what the job sets
    seen = {}

    def fake_train(cfg, stop=None):
        seen.update(cfg=cfg, env=dict(os.environ))
        return {"mpjpe": 1.0}

    monkeypatch.setattr(engine, "train", fake_train)
    spec = write_spec(tmp_path, {"config": str(DEMO), "overrides": {"run.precision": "fp32", "run.seed": 5}})
    (element,) = load_spec(spec, out=tmp_path / "sw").elements
    before = dict(os.environ)
    assert submit.ElementJob(element)() == {"mpjpe": 1.0}
    changed = {k for k in set(seen["env"]) | set(before) if seen["env"].get(k) != before.get(k)}
    assert changed == set(rendezvous)
    assert (seen["cfg"].run.precision, seen["cfg"].run.seed, seen["cfg"].run.out_dir) == ("fp32", 5, element.run_dir)
    assert json.loads((Path(element.run_dir) / "sweep_element.json").read_text())["state"] == "done"


@pytest.mark.slow
def test_a_rank_that_cannot_reach_the_others_fails_in_time_naming_them(synth_root, tmp_path):
    """Task 1 of a two-task job whose task 0 never started: its job fails after
    run.collective_timeout_s, naming itself, the rank it waited for and the address, not hanging."""
    import subprocess
    import sys

    spec = write_spec(tmp_path, {"config": str(DEMO), "overrides": {**tiny_overrides(synth_root),
                                                                    "run.collective_timeout_s": 3}})
    env = {**os.environ, "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2",
           "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1",
           "SLURM_JOB_NODELIST": "localhost", "SUBMITIT_FOLDER": str(tmp_path / "submitit")}
    code = ("import sys; from depthpi.sweep import submit; from depthpi.sweep.spec import load_spec; "
            "submit.ElementJob(load_spec(sys.argv[1], out=sys.argv[2]).elements[0])()")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code, str(spec), str(tmp_path / "sw")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and time.monotonic() - start < 60, done.stderr[-2000:]
    assert re.search(r"RuntimeError: rank 1 of 2 on \S+: no process group with rank\(s\) 0 within 3 s "
                     r"\(run.collective_timeout_s\) at localhost:\d+", done.stderr), done.stderr[-2000:]
    assert not (tmp_path / "sw" / "baseline_rgb" / "sweep_element.json").exists()  # rank 0 keeps the record


def test_every_shipped_sweep_spec_expands():
    specs = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
    assert {p.stem for p in specs} >= {f"table6.{i}" for i in range(1, 10)} | {"precompute_then_students"}
    for path in specs:
        sweep = load_spec(path, out="/tmp/unused")
        assert sweep.elements, path
    t61 = load_spec(ROOT / "configs/sweeps/table6.1.yaml", out="/x")
    assert [e.name for e in t61.elements] == ["1.1", "1.2", "1.3", "1.4"]
    assert t61.arrays[1].elements[0].overrides["model.init_checkpoint"] == "/x/1.2/export/last.pt"
    pts = load_spec(ROOT / "configs/sweeps/precompute_then_students.yaml", out="/x")
    assert pts.arrays[0].kind == "command" and pts.arrays[1].after == ("precompute",)
    assert pts.arrays[0].elements[-1].command[-4:] == ("--shard-index", "15", "--num-shards", "16")


# --- sbatch parameters, dry run, rendezvous -----------------------------------------------
def test_dry_run_prints_plan_and_sbatch_parameters_without_submitting(tmp_path, capsys):
    spec = write_spec(tmp_path, {
        "resources": {"nodes": 2, "gpus_per_node": 4, "cpus_per_task": 6, "mem_gb": 64, "time": "90",
                      "partition": "gpu", "account": "lab", "qos": "high", "constraint": "a100",
                      "array_parallelism": 2, "signal_delay_s": 120},
        "arrays": [{"name": "first", "config": str(DEMO), "grid": {"run.seed": [0, 1, 2, 3]}},
                   {"name": "second", "config": str(DEMO), "resources": {"nodes": 1, "gpus_per_node": 0}}]})
    out = tmp_path / "sw"
    sweep_main([str(spec), "--dry-run", "--out", str(out)])
    text = capsys.readouterr().out
    for flag in ("--array=0-3%2", "--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--cpus-per-task=6",
                 "--mem=64GB", "--time=90", "--partition=gpu", "--account=lab", "--qos=high",
                 "--constraint=a100", "--requeue", "--signal=USR2@120", "--dependency=afterok:JOBID_OF_first"):
        assert f"#SBATCH {flag}" in text, flag
    assert f"[3] seed-3: {DEMO} " in text and text.count("run.seed=3") == 1
    second = text[text.index("--- sbatch file of array second"):]
    assert "--ntasks-per-node=1" in second and "gpus-per-node" not in second and "--array" not in second
    assert "dry run: nothing submitted" in text and not out.exists()


def test_sbatch_failure_ends_with_a_message_not_a_traceback(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'sbatch: fatal: Could not establish a configuration source' >&2\n"
                                    "exit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    spec = write_spec(tmp_path, {"arrays": [{"name": "only", "command": "eval --help"}]})
    with pytest.raises(SystemExit, match=r"sbatch failed .*configuration source.*sinfo.*--executor local"):
        sweep_main([str(spec), "--out", str(tmp_path / "sw")])


def test_rendezvous_from_slurm_environment(monkeypatch):
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "1240", "SLURM_ARRAY_JOB_ID": "1234",
             "SLURM_ARRAY_TASK_ID": "6", "SLURM_NTASKS": "8", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
             "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    for key in ("MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.setenv(key, "stale")  # recorded, so that teardown removes what export sets
    monkeypatch.setenv("MASTER_PORT", "29500")  # inherited from the submitting shell: must not be used
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    import submitit

    found = submit.export_rendezvous(submitit.JobEnvironment())
    assert {k: found[k] for k in ("MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")} == \
        {"MASTER_ADDR": "gpu07", "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    port = int(found["MASTER_PORT"])
    assert 20000 <= port <= 60000  # derived from the job id, not the inherited 29500
    assert submit.export_rendezvous(submitit.JobEnvironment())["MASTER_PORT"] == str(port)  # every task agrees
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert submit.export_rendezvous(submitit.JobEnvironment())["MASTER_PORT"] != str(port)  # array sibling


def test_checkpoint_requeues_the_same_run(tmp_path):
    """The requeued job is the same element: DeepSpeed, like every run setting, travels in its overrides."""
    import cloudpickle

    sweep = load_spec(write_spec(tmp_path, {"config": str(DEMO), "overrides": {"run.deepspeed.zero_stage": 1}}),
                      out=tmp_path)
    array = sweep.arrays[0]
    job = submit.make_job(array, array.elements[0])
    delayed = job.checkpoint()
    again = pickle.loads(cloudpickle.dumps(delayed))
    assert type(again.function) is submit.ElementJob and again.function is not job
    assert again.function.element == job.element and again.function.stop_grace_s == job.stop_grace_s
    assert again.function.element.overrides["run.deepspeed.zero_stage"] == 1


class FakeJobEnv:
    def __init__(self, job_id, folder):
        self.job_id, self.cluster, self.global_rank, self.num_tasks, self.num_nodes = job_id, "slurm", 0, 2, 1
        self.paths = type("P", (), {"stdout": folder / f"{job_id}_0_log.out", "stderr": folder / f"{job_id}_0_log.err"})


def test_element_record_counts_attempts_atomically(tmp_path):
    (element,) = load_spec(write_spec(tmp_path, {"config": str(DEMO)}), out=tmp_path / "sw").elements
    submit.record_start(element, FakeJobEnv("77_0", tmp_path))
    submit.record_start(element, FakeJobEnv("77_0", tmp_path))  # requeued: same id, second attempt
    record = json.loads((Path(element.run_dir) / "sweep_element.json").read_text())
    assert record["attempts"] == 2 and record["job_ids"] == ["77_0"] and record["state"] == "running"
    assert record["name"] == element.name and record["overrides"] == element.overrides
    submit.record_end(element, "done", metrics={"mpjpe": 1.0})
    record = json.loads((Path(element.run_dir) / "sweep_element.json").read_text())
    assert record["state"] == "done" and record["metrics"] == {"mpjpe": 1.0}
    assert not [p for p in Path(element.run_dir).iterdir() if ".tmp" in p.name]


# --- status and collect on fabricated run directories ---------------------------------------
def fabricate(sweep_dir: Path, name: str, config: dict, metrics: dict | None, state: str | None = None,
              epoch: int | None = None, log: str = "") -> Path:
    run = sweep_dir / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    if state is not None:
        (run / "error.log").write_text(log)
        record = {"name": name, "kind": "train", "run_dir": str(run), "state": state, "attempts": 1,
                  "job_ids": [], "error_log": str(run / "error.log")}
        if state == "failed":
            record["error"] = "RuntimeError: boom"
        (run / "sweep_element.json").write_text(json.dumps(record))
    if epoch is not None:
        ckpt = run / "checkpoints" / "step-00000012"
        ckpt.mkdir(parents=True)
        (ckpt / "trainer.json").write_text(json.dumps({"epoch": epoch, "step": 12}))
    return run


def config(seed: int, lr: float, tap: str = "block13.post_relu") -> dict:
    return {"stage": "student", "optim": {"lr": lr, "epochs": 3}, "distill": {"tap": tap},
            "run": {"seed": seed, "out_dir": f"/somewhere/{seed}-{lr}"}}


def test_collect_groups_seeds_into_mean_and_sample_std(tmp_path):
    sweep = tmp_path / "sw"
    values = {("a", 0): 30.0, ("a", 1): 32.0, ("a", 2): 34.0, ("b", 0): 20.0, ("b", 1): 21.0, ("b", 2): 25.0}
    for (group, seed), mpjpe in values.items():
        lr = 1e-3 if group == "a" else 1e-4
        fabricate(sweep, f"lr-{lr}_seed-{seed}", config(seed, lr),
                  {"mpjpe": mpjpe, "pck": mpjpe / 100, "auc": 0.5, "threshold_mm": 50.0})
    keys, rows = report.collect_rows(sweep)
    assert keys == ["optim.lr"]
    # Without a sweep.json, run dirs are taken in name order.
    assert [(r["element"], r["n"], r["seeds"]) for r in rows] == [("lr-0.0001", 3, [0, 1, 2]),
                                                                  ("lr-0.001", 3, [0, 1, 2])]
    assert rows[1]["mpjpe"] == pytest.approx((32.0, 2.0)) and rows[0]["mpjpe"] == pytest.approx((22.0, math.sqrt(7)))
    assert rows[0]["auc"] == (0.5, 0.0)
    paths = report.collect(sweep)
    markdown = paths["markdown"].read_text().splitlines()
    assert markdown[0] == "| element | optim.lr | seeds | MPJPE (mm) | PCK@50mm | AUC |"
    assert markdown[2] == "| lr-0.0001 | 0.0001 | 3 | 22.0 ± 2.6 | 0.220 ± 0.026 | 0.500 ± 0.000 |"
    assert markdown[3] == "| lr-0.001 | 0.001 | 3 | 32.0 ± 2.0 | 0.320 ± 0.020 | 0.500 ± 0.000 |"
    csv_rows = paths["csv"].read_text().splitlines()
    assert csv_rows[0] == "element,optim.lr,n,mpjpe_mean,mpjpe_std,pck_mean,pck_std,auc_mean,auc_std"
    assert csv_rows[2].startswith("lr-0.001,0.001,3,32.0,2.0,")
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_collect_gives_each_extra_test_set_its_columns_like_table_6_8(tmp_path):
    sweep = tmp_path / "sw"
    for seed, (ntu, pku, h36m) in enumerate([(30.0, 60.0, 110.0), (32.0, 64.0, 120.0)]):
        tests = {"pku": {"mpjpe": pku, "pck": 0.5, "auc": 0.3, "threshold_mm": 50.0, "count": 17},
                 "h36m": {"mpjpe": h36m, "pck": 0.7, "auc": 0.4, "threshold_mm": 150.0, "count": 17}}
        fabricate(sweep, f"8.1_seed-{seed}", config(seed, 1e-3),
                  {"mpjpe": ntu, "pck": 0.9, "auc": 0.6, "threshold_mm": 50.0, "tests": tests})
    fabricate(sweep, "9.1_seed-0", config(0, 1e-4),  # a row without PKU-MMD, as Table 6.9
              {"mpjpe": 40.0, "pck": 0.8, "auc": 0.5, "threshold_mm": 50.0,
               "tests": {"h36m": {"mpjpe": 130.0, "pck": 0.6, "auc": 0.3, "threshold_mm": 150.0, "count": 17}}})
    paths = report.collect(sweep)
    markdown = paths["markdown"].read_text().splitlines()
    assert markdown[0] == ("| element | optim.lr | seeds | MPJPE (mm) | PCK@50mm | AUC | pku MPJPE (mm) | pku PCK@50mm "
                           "| pku AUC | h36m MPJPE (mm) | h36m PCK@150mm | h36m AUC |")
    assert markdown[2].endswith("| 62.0 ± 2.8 | 0.500 ± 0.000 | 0.300 ± 0.000 | 115.0 ± 7.1 | 0.700 ± 0.000 "
                                "| 0.400 ± 0.000 |")
    assert "| — | — | — | 130.0 ± 0.0 |" in markdown[3]
    header, first = paths["csv"].read_text().splitlines()[:2]
    assert header.endswith("pku.mpjpe_mean,pku.mpjpe_std,pku.pck_mean,pku.pck_std,pku.auc_mean,pku.auc_std,"
                           "h36m.mpjpe_mean,h36m.mpjpe_std,h36m.pck_mean,h36m.pck_std,h36m.auc_mean,h36m.auc_std")
    assert ",62.0," in first and ",115.0," in first


def test_collect_one_row_per_element_with_config_differences(tmp_path):
    sweep = tmp_path / "sw"
    fabricate(sweep, "4.2", config(0, 1e-3, "block13.post_relu"), {"mpjpe": 25.44, "pck": 0.9, "auc": 0.63})
    fabricate(sweep, "4.4", config(0, 1e-3, "block13.pre_relu"), {"mpjpe": 25.27, "pck": 0.91, "auc": 0.64})
    fabricate(sweep, "4.5", config(0, 1e-3, "block16.post_relu"), None, state="running", epoch=1)
    keys, rows = report.collect_rows(sweep)
    assert keys == ["distill.tap"]
    markdown = report.to_markdown(keys, rows).splitlines()
    assert markdown[0] == "| element | distill.tap | MPJPE (mm) | PCK | AUC |"
    assert markdown[2:] == ["| 4.2 | block13.post_relu | 25.4 | 0.900 | 0.630 |",
                            "| 4.4 | block13.pre_relu | 25.3 | 0.910 | 0.640 |",
                            "| 4.5 | block16.post_relu | — | — | — |"]


def test_status_of_fabricated_run_dirs(tmp_path):
    sweep = tmp_path / "sw"
    fabricate(sweep, "done", config(0, 1e-3), {"mpjpe": 25.0, "pck": 0.9, "auc": 0.6}, state="done")
    fabricate(sweep, "running", config(1, 1e-3), None, state="running", epoch=1)
    fabricate(sweep, "failed", config(2, 1e-3), None, state="failed", log="line 1\nTraceback\nRuntimeError: boom")
    plan = {"name": "sw", "arrays": [{"name": "main", "elements": [
        {"name": n, "kind": "train", "run_dir": str(sweep / n), "job_id": None}
        for n in ("done", "running", "failed", "never")]}]}
    (sweep / "sweep.json").write_text(json.dumps(plan))
    rows = {r["name"]: r for r in report.status(sweep)}
    assert rows["done"]["state"] == "done" and rows["done"]["detail"] == "mpjpe=25.0 pck=0.900 auc=0.600"
    assert rows["running"]["state"] == "running" and rows["running"]["detail"] == "epoch 2/3 (step 12)"
    assert rows["failed"]["state"] == "failed" and "RuntimeError: boom" in rows["failed"]["log_tail"]
    assert rows["never"]["state"] == "not started"
    text = report.format_status(list(rows.values()))
    assert "1 done, 1 running, 1 failed, 1 not started" in text and "--- failed: last log lines" in text


def test_cli_errors_name_the_problem_in_one_line_with_status_2(tmp_path, capsys):
    for argv, expected in [([str(tmp_path / "missing.yaml"), "--dry-run"], "sweep spec not found"),
                           (["status"], "give the sweep directory"),
                           (["collect", str(tmp_path)], "no sweep.json and no run directories")]:
        with pytest.raises(SystemExit) as exit_:
            sweep_main(argv)
        error = capsys.readouterr().err
        assert exit_.value.code == 2 and error.startswith("depthpi sweep: error: ") and expected in error
        assert error.count("\n") == 1 and "Traceback" not in error


def test_validation_catches_a_bad_override_before_submitting(tmp_path, capsys):
    spec = write_spec(tmp_path, {"config": str(DEMO), "overrides": {"optim.lrr": 1}})
    with pytest.raises(SystemExit):
        sweep_main([str(spec), "--dry-run", "--out", str(tmp_path / "sw")])
    assert re.search(r"element 'baseline_rgb'.*optim\.lrr", capsys.readouterr().err)


def tiny_overrides(shards: Path, **extra) -> dict:
    """A run of a few steps on the suite's synthetic set (32 train / 16 test samples, 8 per shard)."""
    return {"data.train": str(shards / "train"), "data.test": str(shards / "test"), "data.num_workers": 0,
            "data.batch_size": 4, "data.eval_batch_size": 8, "data.shuffle_buffer": 8,
            "optim.epochs": 1, "run.steps_per_epoch": 2, "run.log_every": 1, **extra}


@pytest.mark.slow
def test_local_executor_runs_the_same_plan(synth_root, tmp_path):
    sweep_dir = tmp_path / "sw"
    spec = write_spec(tmp_path, {"name": "local", "resources": {"time": "10", "array_parallelism": 1},
                                 "config": str(DEMO), "overrides": tiny_overrides(synth_root)})
    start = time.monotonic()
    sweep_main([str(spec), "--executor", "local", "--out", str(sweep_dir)])
    record = json.loads((sweep_dir / "baseline_rgb" / "sweep_element.json").read_text())
    assert record["state"] == "done" and record["attempts"] == 1, time.monotonic() - start
    assert (sweep_dir / "baseline_rgb" / "metrics.json").is_file()
    assert report.status(sweep_dir)[0]["state"] == "done"


def test_sweep_parser_plugs_into_a_subcommand_parser(tmp_path):
    import argparse

    from depthpi.sweep.cli import add_sweep_parser

    parser = argparse.ArgumentParser(prog="depthpi")
    add_sweep_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sweep", "spec.yaml", "--dry-run", "--executor", "local", "--out", "x", "--var", "a=b"])
    assert (args.target, args.dry_run, args.executor, args.out, args.var) == ("spec.yaml", True, "local", "x", ["a=b"])
    args = parser.parse_args(["sweep", "status", str(tmp_path)])
    assert (args.target, args.dir) == ("status", str(tmp_path)) and callable(args.func)


def test_status_of_a_local_job_whose_process_is_gone(tmp_path):
    import subprocess
    import sys

    sweep = tmp_path / "sw"
    fabricate(sweep, "crashed", config(0, 1e-3), None, state="running", log="Killed")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    plan = {"name": "sw", "executor": "local", "arrays": [{"name": "main", "elements": [
        {"name": "crashed", "kind": "train", "run_dir": str(sweep / "crashed"), "job_id": str(gone.pid)}]}]}
    (sweep / "sweep.json").write_text(json.dumps(plan))
    (row,) = report.status(sweep)
    assert (row["state"], row["slurm"], row["log_tail"]) == ("failed", "EXITED", "Killed")
