"""Typed run configuration: defaults ← YAML (with ``base:`` inheritance) ← CLI overrides.

Each component receives its own typed sub-config, never the whole tree. A YAML file
may name a ``base:`` file (relative to itself) whose values it overrides, or a list of
them merged left to right (``base: [../student/8.1.yaml, cpu.yaml]``: a thesis row at a
smaller scale); thesis experiment files hold only what their table row varies. Command-line overrides are
OmegaConf dotlists: ``optim.lr=1e-4 data.batch_size=64``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from depthpi.data.pipeline import PipelineConfig
from depthpi.data.remote import RemoteConfig
from depthpi.io import atomic_write_text
from depthpi.losses import DistillationConfig, RegressionLossConfig
from depthpi.models.posenet import Init, ModelConfig, ModelKind
from depthpi.models.taps import parse_tap
from depthpi.validation import Choice, ConfigError, check

# A config is tens of lines; these bounds refuse a hostile one before YAML parses it.
MAX_CONFIG_BYTES = 256 << 10
MAX_OVERRIDE_BYTES = 16 << 10
MAX_OVERRIDES = 1000
MAX_BASE_DEPTH = 16


Stage = Choice("Stage", "baseline teacher student")
# each training data set picks a PCK/AUC threshold (depthpi.metrics.DEFAULT_THRESHOLDS)
Dataset = Choice("Dataset", "synthetic ntu pku h36m")
TeacherMode = Choice("TeacherMode", "online precomputed")
Precision = Choice("Precision", "auto bf16 fp16 fp32")
Offload = Choice("Offload", "none cpu")
Tracker = Choice("Tracker", "tensorboard mlflow wandb")


@dataclass(frozen=True)
class DataConfig:
    """Where samples come from and how they are batched.

    Attributes:
        train, test: split directories (each with ``manifest.json``).
        unlabeled: optional split of unlabelled RGB-D pairs (student stage, §4.2.2).
        unlabeled_fraction: share of each batch drawn from ``unlabeled`` (thesis: 1/3).
        batch_size: samples per device per step, labelled and unlabelled together.
        eval_batch_size: samples per device in evaluation.
        num_workers: loader processes per device.
        shuffle_buffer: samples held for shuffling in each worker.
        verify_shards: check every shard of every split against its manifest (sha256,
            sample counts) before training starts (``depthpi shards verify`` does it alone).
        cache_dir: where shards of splits given as URLs are kept once downloaded (admitted
            with the manifest's sha256 and count, hashed again before each use); None
            fetches them into temporary files on every pass, checked the same way.
        remote: connect and stall timeouts and retries of reads from a server
            (``data.remote.stall_timeout_s`` …, see :class:`depthpi.data.remote.RemoteConfig`).
        allow_split_roles: train on a split whose manifest names another role (e.g. a
            ``test`` split as ``data.train``), or on the test split itself; refused otherwise.
        dataset: training data set name; picks the PCK/AUC threshold (``ntu``/``pku``: 50 mm,
            ``h36m``: 150 mm, ``synthetic``: 50 mm) when the test split's manifest does not
            name its source (converted splits do, and their source wins).
        extra_tests: further test sets, name → split directory, scored after the last
            epoch at their own source's threshold (the thesis' tables: Human3.6M beside
            NTU RGB+D, and PKU-MMD in Table 6.8); ``data.extra_tests.pku=null`` drops one,
            ``data.extra_tests=null`` all.
    """

    train: str = "shards/synth/train"
    test: str = "shards/synth/test"
    unlabeled: str | None = None
    unlabeled_fraction: float = 1 / 3
    batch_size: int = 32
    eval_batch_size: int = 64
    num_workers: int = 4
    shuffle_buffer: int = 500
    dataset: Dataset = Dataset.synthetic
    extra_tests: dict[str, str | None] | None = None
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    verify_shards: bool = False
    allow_split_roles: bool = False
    cache_dir: str | None = None
    remote: RemoteConfig = field(default_factory=RemoteConfig)

    def __post_init__(self):
        for key in ("train", "test"):
            check(bool(getattr(self, key)), key, "a split directory or URL", getattr(self, key))
        check(0 <= self.unlabeled_fraction < 1, "unlabeled_fraction", "a share in [0, 1)", self.unlabeled_fraction)
        check(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        check(self.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1", self.eval_batch_size)
        check(self.num_workers >= 0, "num_workers", "an integer >= 0 (0: load in the training process)",
              self.num_workers)
        check(self.shuffle_buffer >= 1, "shuffle_buffer", "an integer >= 1", self.shuffle_buffer)


@dataclass(frozen=True)
class OptimConfig:
    """Adam with the step schedule of eq. 5.10 (§5.3).

    ``lr_milestones`` are in epochs of a 30-epoch run; a run with ``epochs`` other than
    30 stretches them proportionally (so a 3-epoch demo keeps the schedule's shape).
    """

    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 4e-5
    epochs: int = 30
    lr_milestones: tuple[float, ...] = (1, 15, 20, 25)
    lr_factors: tuple[float, ...] = (0.5, 1.0, 0.2, 0.04, 0.008)
    grad_clip: float = 5.0
    freeze_bn_after_epoch: int | None = None

    def __post_init__(self):
        check(self.lr > 0, "lr", "> 0", self.lr)
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)",
              list(self.betas))
        check(self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay)
        check(self.epochs >= 1, "epochs", "an integer >= 1", self.epochs)
        check(len(self.lr_factors) == len(self.lr_milestones) + 1, "lr_factors",
              f"len(optim.lr_milestones) + 1 = {len(self.lr_milestones) + 1} values", list(self.lr_factors))
        check(list(self.lr_milestones) == sorted(self.lr_milestones) and all(m >= 0 for m in self.lr_milestones),
              "lr_milestones", "non-negative and increasing", list(self.lr_milestones))
        check(all(f >= 0 for f in self.lr_factors), "lr_factors", "values >= 0", list(self.lr_factors))
        check(self.grad_clip >= 0, "grad_clip", ">= 0 (0: no clipping)", self.grad_clip)
        check(self.freeze_bn_after_epoch is None or self.freeze_bn_after_epoch >= 0, "freeze_bn_after_epoch",
              "null or an integer >= 0", self.freeze_bn_after_epoch)


@dataclass(frozen=True)
class TeacherConfig:
    """The frozen teacher of a student run (§4.2.2).

    Attributes:
        weights: exported weights (a teacher run's ``export/last.pt``).
        model: the teacher's architecture (``kind: teacher`` for RGB-D, ``baseline``
            with ``input: rgb`` for an RGB teacher as in experiment 9.1).
        mode: ``online`` runs the teacher each step; ``precomputed`` reads its stored
            features from ``features`` (``depthpi precompute``).
        features: feature-shard directory of ``data.train`` for ``precomputed``
            (written by ``depthpi precompute``).
        unlabeled_features: the same for ``data.unlabeled``.
    """

    weights: str | None = None
    model: ModelConfig = field(default_factory=lambda: ModelConfig(kind=ModelKind.teacher, init=Init.none))
    mode: TeacherMode = TeacherMode.online
    features: str | None = None
    unlabeled_features: str | None = None


@dataclass(frozen=True)
class DeepSpeedConfig:
    """DeepSpeed through accelerate, configured here and nowhere else.

    Attributes:
        zero_stage: 0 (DeepSpeed off: DDP), 1 (optimiser states sharded) or 2 (gradients too).
            Stage 3 (parameters sharded) is not offered: a ResNet fits on any GPU, and
            evaluating a sharded model would need collectives in every forward.
        offload_optimizer: ``none`` or ``cpu`` (ZeRO-Offload of the optimiser states).
    """

    zero_stage: int = 0
    offload_optimizer: Offload = Offload.none

    def __post_init__(self):
        check(self.zero_stage in (0, 1, 2), "zero_stage", "0 (off), 1 or 2", self.zero_stage)


@dataclass(frozen=True)
class RunConfig:
    """Bookkeeping of one run.

    Attributes:
        out_dir: run directory (checkpoints, TensorBoard logs, exports, config.yaml).
        seed: seeds model init and every augmentation draw.
        steps_per_epoch: cap on steps per epoch (0 = the whole split); for demos.
        precision: ``auto`` (bf16 on GPU, fp32 on CPU), ``bf16``, ``fp16`` (loss
            scaling), ``fp32``. The only precision setting: ``accelerate launch
            --mixed_precision`` and accelerate config files do not change it.
        cpu: force CPU even when a GPU is present.
        compile: wrap the model in ``torch.compile``.
        channels_last: NHWC activations on GPU (ignored on CPU).
        sync_bn: convert BatchNorm to SyncBatchNorm across ranks.
        deepspeed: DeepSpeed ZeRO (off by default); the only DeepSpeed setting.
        collective_timeout_s: a collective that does not complete within this many seconds
            (a rank died or missed it) fails with a message instead of hanging.
        checkpoint_every: steps between checkpoints (an epoch's end always saves).
        keep_last: checkpoints kept besides the exported best weights.
        allow_config_change: resume a run directory whose config.yaml differs from this
            config (refused otherwise, naming the keys that differ); the new config is then
            saved and the old one kept beside it.
        log_every: steps between scalar logs.
        image_every: steps between TensorBoard image summaries (0 = epoch ends only).
        log_with: experiment trackers (accelerate's): any of ``tensorboard`` (writes
            ``out_dir/tensorboard``), ``mlflow`` (``MLFLOW_TRACKING_URI``), ``wandb``; each is
            checked at start (installed, its store writable or answering).
        tracker_timeout_s: how long the check at start waits for a tracker's server.
    """

    # what runs
    out_dir: str = "runs/default"
    seed: int = 0
    steps_per_epoch: int = 0
    # on what
    precision: Precision = Precision.auto
    cpu: bool = False
    compile: bool = False
    channels_last: bool = True
    sync_bn: bool = False
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    collective_timeout_s: float = 1800.0
    # checkpoints
    checkpoint_every: int = 1000
    keep_last: int = 2
    allow_config_change: bool = False
    # reports
    log_every: int = 20
    image_every: int = 0
    log_with: list[Tracker] = field(default_factory=lambda: [Tracker.tensorboard])
    tracker_timeout_s: float = 20.0

    def __post_init__(self):
        check(bool(self.out_dir), "out_dir", "a directory", self.out_dir)
        check(self.seed >= 0, "seed", "an integer >= 0", self.seed)
        check(self.steps_per_epoch >= 0, "steps_per_epoch", "an integer >= 0 (0: the whole split)",
              self.steps_per_epoch)
        check(self.collective_timeout_s > 0, "collective_timeout_s", "> 0", self.collective_timeout_s)
        for key in ("checkpoint_every", "keep_last", "log_every"):
            check(getattr(self, key) >= 1, key, "an integer >= 1", getattr(self, key))
        check(self.image_every >= 0, "image_every", "an integer >= 0 (0: epoch ends only)", self.image_every)
        check(0 < self.tracker_timeout_s <= 600, "tracker_timeout_s", "seconds in (0, 600]", self.tracker_timeout_s)


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run. ``experiment`` names the thesis table row (e.g. ``"8.1"``).

    Each section checks its own keys; the checks here are the rules between sections.
    """

    stage: Stage = Stage.baseline
    experiment: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: RegressionLossConfig = field(default_factory=RegressionLossConfig)
    distill: DistillationConfig = field(default_factory=DistillationConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        if self.stage == Stage.student:
            self._check_student()
        check(self.model.init == Init.checkpoint or self.model.init_checkpoint is None, "model.init_checkpoint",
              f"unset unless model.init=checkpoint (it is {self.model.init}, so the file would never be read)",
              self.model.init_checkpoint)
        if self.stage == Stage.teacher:
            check(self.model.kind == ModelKind.teacher, "model.kind", "teacher for stage teacher", self.model.kind)

    def _check_student(self) -> None:
        for model in (self.model, self.teacher.model):
            try:
                parse_tap(self.distill.tap, model.arch, teacher=model.kind == ModelKind.teacher)
            except ValueError as err:
                raise ValueError(f"config key 'distill.tap': {err}") from None
        teacher, distill, unlabeled = self.teacher, self.distill, self.data.unlabeled
        precomputed = teacher.mode == TeacherMode.precomputed
        check(teacher.weights is not None or precomputed, "teacher.weights",
              "a path (exported teacher weights) for an online-teacher student run", None)
        check(not precomputed or teacher.features is not None,
              "teacher.features", "a feature-shard directory when teacher.mode=precomputed", None)
        check(not precomputed or unlabeled is None or teacher.unlabeled_features is not None,
              "teacher.unlabeled_features", "feature shards of data.unlabeled in precomputed mode", None)
        check(distill.pose_weight == 0 or not precomputed, "distill.pose_weight",
              "0 when teacher.mode=precomputed (output distillation needs the online teacher's pose)",
              distill.pose_weight)
        check(distill.pose_weight == 0 or unlabeled is not None, "distill.pose_weight",
              "0 without data.unlabeled (output distillation acts on unlabelled pairs only)", distill.pose_weight)
        for key in ("features", "unlabeled_features"):
            check(precomputed or getattr(teacher, key) is None, f"teacher.{key}",
                  "unset unless teacher.mode=precomputed (an online teacher reads no stored features)",
                  getattr(teacher, key))


def _load_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> OmegaConf:
    path = path.resolve()
    if path in seen:
        raise ValueError(f"{path}: 'base:' inheritance forms a cycle through {[str(p) for p in seen]}")
    if len(seen) >= MAX_BASE_DEPTH:
        raise ValueError(f"{path}: 'base:' inheritance deeper than {MAX_BASE_DEPTH} files")
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size} bytes; a config file may hold at most {MAX_CONFIG_BYTES} "
                         f"(it lists settings, not data)")
    try:
        node = OmegaConf.load(path)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid YAML ({_one_line(err)})") from None
    if not isinstance(node, DictConfig):
        raise ValueError(f"{path}: expected a mapping of config keys at the top level, got {type(node).__name__}")
    base = node.pop("base", None)
    if base is None:
        return node
    bases = list(base) if OmegaConf.is_list(base) else [base]
    if not bases or not all(isinstance(b, str) for b in bases):
        raise ValueError(f"{path}: key 'base': expected a file name or a list of them, got {base!r}")
    return OmegaConf.merge(*(_load_yaml_chain(path.parent / b, seen + (path,)) for b in bases), node)


def _parse_overrides(overrides: list[str]) -> DictConfig:
    """``key=value`` overrides (each value YAML), size-limited before YAML reads them."""
    if len(overrides) > MAX_OVERRIDES:
        raise ValueError(f"{len(overrides)} overrides; at most {MAX_OVERRIDES}")
    for override in overrides:
        if len(override.encode(errors="replace")) > MAX_OVERRIDE_BYTES:
            raise ValueError(f"override {override[:40]!r}...: {len(override.encode(errors='replace'))} bytes; an "
                             f"override may hold at most {MAX_OVERRIDE_BYTES}")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except yaml.YAMLError as err:
        raise ValueError(f"bad override: not valid YAML ({_one_line(err)})") from None


def _one_line(err: BaseException | str, limit: int = 600) -> str:
    """The error's lines joined by '; ', whitespace collapsed, at most ``limit`` characters."""
    text = "; ".join(" ".join(line.split()) for line in str(err).splitlines() if line.strip())
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def load_config(path: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()) -> TrainConfig:
    """Defaults ← YAML chain ← overrides, validated into a frozen TrainConfig.

    ``overrides``: ``key=value`` texts, read as on a command line, or a mapping of dotted
    keys to values, taken as they are (a sweep's: a string stays that string).
    """
    schema = OmegaConf.structured(TrainConfig)
    layers = [schema]
    try:
        if path is not None:
            layers.append(_load_yaml_chain(Path(path)))
        if isinstance(overrides, Mapping):
            layers.append(OmegaConf.create())
            for key, value in overrides.items():
                OmegaConf.update(layers[-1], key, value, force_add=True)
        else:
            layers.append(_parse_overrides(list(overrides)))
        merged = OmegaConf.merge(*layers)
    except OmegaConfBaseException as err:  # an unknown key, a value of the wrong type, not a Choice's name
        raise ValueError(f"bad config{_where(path, overrides)}: {_named(err)}") from None
    try:
        return OmegaConf.to_object(merged)
    except ConfigError as err:  # a section's own check names the key inside the section
        raise ValueError(f"bad config{_where(path, overrides)}: {err.under(_failing_section(merged))}") from None
    except (OmegaConfBaseException, ValueError) as err:
        raise ValueError(f"bad config{_where(path, overrides)}: {_one_line(err)}") from None


def _named(err: OmegaConfBaseException) -> str:
    """OmegaConf's message on one line, led by the full key it names."""
    if not err.full_key:
        return _one_line(err)
    return f"config key {err.full_key!r}: {_one_line(err.msg.splitlines()[0] if err.msg else err)}"


def _where(path, overrides) -> str:
    if isinstance(overrides, Mapping):
        shown = dict(overrides)
    else:
        shown = [o if len(o) <= 80 else f"{o[:77]}..." for o in list(overrides)[:20]]
        shown = f"{shown} and {len(overrides) - 20} more" if len(overrides) > 20 else shown
    return (f" in {path}" if path else "") + (f" with overrides {shown}" if overrides else "")


def _failing_section(node: DictConfig, prefix: str = "") -> str:
    """Dotted key of the innermost section whose check fails (``teacher.model``), '' for the root.

    A dataclass's ``__post_init__`` knows its own class, not where it sits: ModelConfig is
    both ``model`` and ``teacher.model``.
    """
    for key in node:
        child = node[key]
        if isinstance(child, DictConfig):
            try:
                OmegaConf.to_object(child)
            except ConfigError:
                return _failing_section(child, f"{prefix}{key}.") or f"{prefix}{key}"
    return ""


def to_yaml(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config atomically (run_dir/config.yaml)."""
    atomic_write_text(path, to_yaml(cfg))
