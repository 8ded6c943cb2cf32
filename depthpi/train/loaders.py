"""The loaders of one run, built and checked at start: train (labelled and unlabelled), test
and extra tests; and the training loop's iteration over them (resumable mid-epoch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from depthpi.config import TrainConfig
from depthpi.data.batches import Batch, build_eval_loader, build_train_loaders, with_depth
from depthpi.data.features import check_feature_shards
from depthpi.data.loader import ShardLoader
from depthpi.data.shards import ManifestError
from depthpi.evaluate import threshold_for_split


@dataclass
class Loaders:
    """The loaders of one run: labelled train, unlabelled train (or None), test (and its PCK
    threshold, mm), extra tests (each with its threshold)."""

    labeled: ShardLoader
    unlabeled: ShardLoader | None
    test: ShardLoader
    test_threshold_mm: float
    extra_tests: dict[str, tuple[ShardLoader, float]]
    steps_per_epoch: int

    def train_loaders(self) -> dict[str, ShardLoader]:
        return {"train": self.labeled, **({"unlabeled": self.unlabeled} if self.unlabeled is not None else {})}

    def start_epoch(self, epoch: int, positions: dict, batches_done: int) -> None:
        """Select the epoch; when resuming inside it, each train loader skips what it handed out."""
        for name, loader in self.train_loaders().items():
            loader.set_epoch(epoch)
            if batches_done:
                loader.load_state_dict(positions.get(name) or {"epoch": epoch, "batches": batches_done})

    def train_batches(self, start: int) -> Iterator[tuple[int, Batch]]:
        """(index in epoch, labelled batch followed by its unlabelled share) until the epoch's end."""
        unlabeled = iter(self.unlabeled) if self.unlabeled is not None else None
        for index, raw in enumerate(self.labeled, start=start):
            if index >= self.steps_per_epoch:
                return
            batch = Batch.from_collated(raw)
            pairs = Batch.from_collated(next(unlabeled)).as_unlabeled() if unlabeled is not None else None
            yield index, batch.cat(pairs)

    def positions(self) -> dict[str, dict]:
        return {name: loader.state_dict() for name, loader in self.train_loaders().items()}

    def pass_reports(self) -> list[dict]:
        """This rank's read reports of the current pass of the train loaders."""
        return [loader.pass_stats() for loader in self.train_loaders().values()]


def check_precomputed(cfg: TrainConfig) -> tuple[str, str | None]:
    """Feature shards of the train (and unlabelled) split, checked against the config."""
    sigmoid = cfg.distill.sigmoid or cfg.distill.term == "bce"
    pairs = [(cfg.teacher.features, cfg.data.train)]
    if cfg.data.unlabeled is not None:
        pairs.append((cfg.teacher.unlabeled_features, cfg.data.unlabeled))
    for features, source in pairs:
        check_feature_shards(features, source, tap=cfg.distill.tap, input_size=cfg.data.pipeline.input_size,
                             sigmoid_needed=sigmoid, teacher_weights=cfg.teacher.weights, teacher_model=cfg.teacher.model)
    return cfg.teacher.features, cfg.teacher.unlabeled_features


def build_loaders(cfg: TrainConfig, needs_depth: bool, rank: int, world: int) -> Loaders:
    """Every loader of the run, with the stage's pipeline (depth when a model of the stage reads
    it, the stored teacher features of a precomputed student); checks fail here, before training."""
    pipeline = with_depth(cfg.data.pipeline, needs_depth)
    features = None
    if cfg.stage == "student" and cfg.teacher.mode == "precomputed":
        features = check_precomputed(cfg)
    labeled, unlabeled = build_train_loaders(cfg.data, pipeline, cfg.run.seed, rank, world, features)
    steps = len(labeled) if not cfg.run.steps_per_epoch else min(len(labeled), cfg.run.steps_per_epoch)
    if steps == 0:
        raise ValueError(f"data.train {cfg.data.train}: too few samples for one batch of "
                         f"{cfg.data.batch_size} on each of {world} ranks")
    test = build_eval_loader(cfg.data, pipeline, cfg.data.test, rank, world)
    threshold = threshold_for_split(cfg.data.test, cfg.data.dataset)
    return Loaders(labeled, unlabeled, test, threshold, build_extra_tests(cfg, pipeline, rank, world), steps)


def build_extra_tests(cfg: TrainConfig, pipeline, rank: int, world: int) -> dict[str, tuple[ShardLoader, float]]:
    """``data.extra_tests`` as {name: (eval loader, threshold mm)}, checked at start: a test
    set that is not there fails now, not after 30 epochs."""
    tests = {}
    for name, split in (cfg.data.extra_tests or {}).items():
        if split is None:  # dropped by an override
            continue
        try:
            threshold = threshold_for_split(split, cfg.data.dataset)
        except ManifestError as err:
            raise ValueError(f"data.extra_tests.{name}: {err}; convert that data set (README) or drop it "
                             f"with data.extra_tests.{name}=null") from None
        tests[name] = (build_eval_loader(cfg.data, pipeline, split, rank, world), threshold)
    return tests
