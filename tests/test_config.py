"""Configs: one YAML per thesis experiment, inheritance, overrides, schedules."""
import re
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from depthpi.config import (Dataset, Offload, Precision, Stage, TeacherMode, Tracker, load_config, save_config,
                            to_yaml)
from depthpi.data.converters import SPLITS
from depthpi.losses import DistillationConfig, DistillTerm, alpha_at
from depthpi.metrics import DEFAULT_THRESHOLDS
from depthpi.models import Arch, Init, ModelInput, ModelKind
from depthpi.train.schedules import StepSchedule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
THESIS_IDS = ["1.1", "1.2", "1.3", "1.4", "2.1", "2.2", "2.3", "3.1", "3.2", "4.1", "4.2", "4.3", "4.4",
              "5.1", "5.2", "6.1", "7.1", "8.1", "8.2", "8.3", "8.4", "9.1"]


def _path(experiment: str) -> Path:
    found = [p for p in CONFIGS.glob(f"*/{experiment}.yaml") if p.parent.name not in ("base", "repro")]
    assert len(found) == 1, f"expected one config for experiment {experiment}, found {found}"
    return found[0]


@pytest.mark.parametrize("experiment", THESIS_IDS)
def test_every_thesis_experiment_has_a_config_that_loads(experiment):
    cfg = load_config(_path(experiment))
    assert cfg.experiment == experiment
    assert cfg.run.out_dir == f"runs/{experiment}"
    assert cfg.model.arch == "resnet50" and cfg.data.pipeline.input_size == 257


def test_configs_name_only_splits_the_converters_write():
    """``shards/pku/train`` would queue a Table 6.8 job that fails on the cluster: PKU's training
    videos become ``shards/pku/unlabeled``."""
    named = set()
    for path in CONFIGS.rglob("*.yaml"):
        for source, split in re.findall(r"shards/([a-z0-9]+)/([a-z0-9_]+)", path.read_text()):
            if source in SPLITS:
                named.add((source, split))
                assert split in SPLITS[source], f"{path}: shards/{source}/{split}; {source} has {SPLITS[source]}"
    assert ("pku", "unlabeled") in named and ("ntu", "train") in named


def test_table_rows_differ_in_exactly_what_the_thesis_varies():
    c41, c42, c43, c44 = (load_config(_path(f"4.{i}")).distill for i in (1, 2, 3, 4))
    assert (c41.tap, c41.sigmoid, c41.alpha_warmup, c41.alpha_target) == ("block16.post_relu", False, 0.005, 0.01)
    assert (c42.tap, c42.sigmoid) == ("block13.post_relu", False)
    assert (c43.sigmoid, c43.alpha_warmup, c43.alpha_target) == (True, 0.1, 0.2)
    assert c44.tap == "block13.pre_relu"
    assert load_config(_path("5.1")).distill.term == "bce"
    assert load_config(_path("6.1")).optim.freeze_bn_after_epoch == 10
    c71 = load_config(_path("7.1")).distill
    assert c71.attention and (c71.alpha_warmup, c71.alpha_target) == (0.25, 0.5)
    assert load_config(_path("8.2")).data.unlabeled == "shards/pku/unlabeled"
    assert load_config(_path("8.1")).data.unlabeled is None
    c91 = load_config(_path("9.1"))
    assert c91.teacher.model.kind == "baseline" and c91.teacher.weights.startswith("runs/1.4")
    assert load_config(_path("2.3")).model.partial_conv and load_config(_path("2.2")).data.pipeline.rectify_depth
    assert not load_config(_path("1.1")).data.pipeline.augment.geometry
    assert load_config(_path("1.2")).data.pipeline.augment.geometry


def test_overrides_win_and_bad_keys_are_named():
    cfg = load_config(_path("8.1"), ["optim.lr=1e-4", "data.batch_size=8"])
    assert cfg.optim.lr == 1e-4 and cfg.data.batch_size == 8
    with pytest.raises(ValueError, match="no_such_key"):
        load_config(_path("8.1"), ["optim.no_such_key=1"])
    with pytest.raises(ValueError, match="teacher.mode"):
        load_config(_path("8.1"), ["teacher.mode=sometimes"])
    with pytest.raises(ValueError, match="distill.tap.*block17"):
        load_config(_path("8.1"), ["distill.tap=block17.post_relu"])
    assert load_config(_path("8.1"), ["distill.tap=layer3.5.pre_relu"]).distill.tap == "layer3.5.pre_relu"
    with pytest.raises(ValueError, match="input_size"):
        load_config(_path("8.1"), ["data.pipeline.input_size=256"])


@pytest.mark.parametrize("override, key, expected", [
    ("model.width=0", "model.width", "> 0"), ("teacher.model.width=0", "teacher.model.width", "> 0"),
    ("data.pipeline.input_size=256", "data.pipeline.input_size", "N >= 17 with N - 1 divisible by 16 (e.g. 257, 129, 65)"),
    ("data.pipeline.augment.roll=-1", "data.pipeline.augment.roll", ">= 0"),
    ("data.remote.retries=-1", "data.remote.retries", "an integer in [0, 100]"),
    ("run.deepspeed.zero_stage=3", "run.deepspeed.zero_stage", "0 (off), 1 or 2"),
    ("distill.alpha_target=-1", "distill.alpha_target", ">= 0"), ("loss.delta=0", "loss.delta", "> 0"),
    ("data.unlabeled_fraction=1", "data.unlabeled_fraction", "a share in [0, 1)"),
    ("stage=teacher", "model.kind", "teacher for stage teacher"),
])
def test_a_failed_check_is_one_line_naming_the_full_key_what_it_expects_and_got(override, key, expected):
    # ModelConfig is both model and teacher.model: its own check names `width`, the loader says which.
    with pytest.raises(ValueError) as err:
        load_config(_path("8.1"), [override])
    message = str(err.value)
    assert "\n" not in message and f"with overrides ['{override}']: config key '{key}': expected {expected}, got " \
        in message, message


CHOICES = [("stage", Stage), ("teacher.mode", TeacherMode), ("run.precision", Precision),
           ("run.deepspeed.offload_optimizer", Offload), ("data.dataset", Dataset), ("model.kind", ModelKind),
           ("model.input", ModelInput), ("model.arch", Arch), ("model.init", Init), ("teacher.model.kind", ModelKind),
           ("distill.term", DistillTerm), ("run.log_with", Tracker)]


@pytest.mark.parametrize("key, choice", CHOICES, ids=[key for key, _ in CHOICES])
def test_a_bad_choice_is_one_line_naming_the_key_and_every_allowed_value(key, choice):
    value = "[tensorboard,sometimes]" if key == "run.log_with" else "sometimes"
    with pytest.raises(ValueError) as err:
        load_config(_path("8.1"), [f"{key}={value}"])
    named = f"{key}[1]" if key == "run.log_with" else key
    assert str(err.value).endswith(f"config key '{named}': Invalid value 'sometimes', expected one of "
                                   f"[{', '.join(choice)}]"), str(err.value)


@pytest.mark.parametrize("key, choice", CHOICES, ids=[key for key, _ in CHOICES])
def test_a_choice_is_its_member_and_shows_and_saves_as_its_text(key, choice):
    cfg = load_config(_path("8.1"))
    value = OmegaConf.select(OmegaConf.structured(cfg), key)
    value = value[0] if choice is Tracker else value
    assert type(value) is choice and value == value.name and repr(value) == repr(value.name) and f"{value}" == value.name
    assert f"{key.split('.')[-1]}:" + ("\n  - " if choice is Tracker else " ") + f"{value.name}\n" in to_yaml(cfg)


def test_trackers_get_plain_values_that_any_yaml_dumper_writes_as_text():
    from depthpi.train.reporting import tracker_params

    flat = tracker_params(asdict(load_config(_path("8.1"), ["run.log_with=[tensorboard,mlflow]"])))
    assert {type(v) for v in flat.values()} <= {str, int, float, bool}
    assert flat["run.precision"] == "auto" and flat["run.log_with"] == "['tensorboard', 'mlflow']"
    assert "!!python" not in yaml.dump(flat)  # accelerate's TensorBoard tracker writes hparams.yml so


def test_the_dataset_choices_are_the_data_sets_with_a_threshold():
    assert set(Dataset) == set(DEFAULT_THRESHOLDS)


RUN_CONFIGS = sorted(p for d in ("baseline", "teacher", "student", "repro", "demo") for p in (CONFIGS / d).glob("*.yaml")
                     if p.name != "common.yaml")


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_saved_config_loads_back_equal(path, tmp_path):
    cfg = load_config(path, ["run.precision=bf16", "run.log_with=[tensorboard,mlflow]"])
    assert cfg.run.precision == "bf16" and cfg.run.log_with == ["tensorboard", "mlflow"]
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    # what a resumed run compares with its saved config.yaml
    assert again == cfg and asdict(again) == asdict(cfg)
    assert asdict(load_config(tmp_path / "config.yaml", ["run.precision=fp32"])) != asdict(cfg)


def test_base_cycle_and_missing_file_are_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")


def test_a_list_of_bases_merges_left_to_right_under_the_file(tmp_path):
    (tmp_path / "row.yaml").write_text("experiment: row\noptim: {lr: 1.0e-4, epochs: 30}\nmodel: {width: 1.0}\n")
    (tmp_path / "small.yaml").write_text("optim: {epochs: 6}\nmodel: {width: 0.125}\n")
    (tmp_path / "run.yaml").write_text("base: [row.yaml, small.yaml]\nmodel: {width: 0.25}\n")
    cfg = load_config(tmp_path / "run.yaml")
    assert (cfg.experiment, cfg.optim.lr, cfg.optim.epochs, cfg.model.width) == ("row", 1e-4, 6, 0.25)
    (tmp_path / "bad.yaml").write_text("base: [row.yaml, 3]\n")
    with pytest.raises(ValueError, match="bad.yaml.*'base'"):
        load_config(tmp_path / "bad.yaml")


def _flat(tree, prefix=""):
    from dataclasses import asdict, is_dataclass
    tree = asdict(tree) if is_dataclass(tree) else tree
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


# What CPU scale may change (configs/repro/cpu.yaml); anything else differing from the
# thesis row would make the reproduction test something other than the thesis' model.
_SCALE_KEYS = ("model.arch", "model.width", "model.depth_bins", "model.init", "teacher.model.arch",
               "teacher.model.width", "teacher.model.depth_bins", "teacher.model.init",
               "data.", "optim.lr", "optim.epochs", "distill.alpha_ramp_epochs", "run.")


def _same_place_in_the_network(small_tap: str, small_arch: str, full_tap: str, full_arch: str) -> bool:
    """Two taps name the same point when they end the same stage with the same kind
    (the thesis' ``block13.post_relu`` of a ResNet-50 is ``layer3.1.post_relu`` of a ResNet-18)."""
    from depthpi.models.taps import LAYER_DEPTHS, block_to_path

    def stage_end(tap: str, arch: str) -> tuple[str, bool, str]:
        head, _, kind = tap.rpartition(".")
        if m := re.fullmatch(r"block(\d+)", head):
            head = block_to_path(int(m.group(1)), LAYER_DEPTHS[arch])
        layer, index = head.split(".")
        return layer, int(index) == LAYER_DEPTHS[arch][int(layer[5:]) - 1] - 1, kind

    return stage_end(small_tap, small_arch) == stage_end(full_tap, full_arch)


@pytest.mark.parametrize("path", sorted((CONFIGS / "repro").glob("[0-9]*.yaml")), ids=lambda p: p.stem)
def test_cpu_scale_rows_differ_from_their_thesis_row_only_in_scale(path):
    cfg = load_config(path)
    row = load_config(_path(cfg.experiment.split("-")[0]))
    small, full = _flat(cfg), _flat(row)
    changed = {k for k in full if small.get(k) != full[k]}
    allowed = {"experiment", "teacher.mode", "teacher.features"} if cfg.experiment.endswith("-precomputed") else set()
    if "distill.tap" in changed:  # the tap moves with the architecture, to the same place
        assert _same_place_in_the_network(cfg.distill.tap, cfg.model.arch, row.distill.tap, row.model.arch), path.name
        changed.discard("distill.tap")
    assert {k for k in changed if not k.startswith(_SCALE_KEYS)} <= allowed, path.name
    assert cfg.model.width == 0.25 and cfg.data.pipeline.input_size == 65 and cfg.data.dataset == "synthetic"
    assert cfg.model.init in ("none", "checkpoint")  # no ImageNet file on a fresh machine


def test_lr_schedule_equals_eq_5_10_at_epoch_boundaries():
    schedule = StepSchedule()
    expected = {0: 0.5, 0.99: 0.5, 1: 1.0, 14.99: 1.0, 15: 0.2, 19.5: 0.2, 20: 0.04, 24.9: 0.04, 25: 0.008, 29.9: 0.008}
    assert {e: schedule.factor(e) for e in expected} == expected
    short = schedule.scaled(6)  # a 6-epoch run keeps the shape: boundaries at 0.2, 3, 4, 5
    assert [short.factor(e) for e in (0.1, 0.2, 2.9, 3.0, 4.0, 5.0)] == [0.5, 1.0, 1.0, 0.2, 0.04, 0.008]


def test_alpha_ramps_linearly_for_ten_epochs_then_holds():
    cfg = DistillationConfig(alpha_warmup=0.1, alpha_target=0.2, alpha_ramp_epochs=10)
    assert [alpha_at(e, cfg) for e in (0, 5, 10, 20)] == pytest.approx([0.1, 0.15, 0.2, 0.2])


# --- hostile configs and overrides: bounded, one line, exit status 2 ----------------------------
def _refused_by_the_entry(argv, capsys) -> str:
    from depthpi.train.entry import main as train_main

    with pytest.raises(SystemExit) as stopped:
        train_main("baseline", argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 1200, err[:2000]
    return lines[0]


def test_a_config_file_of_millions_of_values_is_refused_by_its_size_at_once(tmp_path, capsys):
    import time

    path = tmp_path / "huge.yaml"
    path.write_text("stage: baseline\ndata:\n  extra_tests: [" + ",".join(["0"] * 5_000_000) + "]\n")
    start = time.monotonic()
    line = _refused_by_the_entry(["--config", str(path)], capsys)
    assert f"{path}: " in line and "a config file may hold at most" in line
    assert time.monotonic() - start < 5  # refused before YAML reads it (it took 27 s and 2.2 GB)


@pytest.mark.parametrize("override, expected", [
    ("data.extra_tests=[" + ",".join(["0"] * 20_000) + "]", "an override may hold at most"),
    ('run.log_with=[&a ["x","x","x","x","x","x","x","x","x"],&b [*a,*a,*a,*a,*a,*a,*a,*a,*a],'
     '&c [*b,*b,*b,*b,*b,*b,*b,*b,*b],&d [*c,*c,*c,*c,*c,*c,*c,*c,*c]]', "bad override: not valid YAML"),
    ("optim.lr=[unclosed", "not valid YAML"),
], ids=["20000-element list", "anchor bomb", "unclosed list"])
def test_a_hostile_override_is_one_line_and_exit_status_2(override, expected, capsys):
    line = _refused_by_the_entry(["--config", str(CONFIGS / "demo" / "baseline_rgb.yaml"), override], capsys)
    assert expected in line
