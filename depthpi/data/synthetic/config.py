"""The synthetic set's configuration and its splits: which subjects and setups each split uses.

Splits (as Table 5.2 splits NTU RGB+D)
    train: subjects P007 P008 P015–P028 P037–P040, setups S003–S007, S009–S017;
    test:  subjects P001–P003 P009–P011 P029–P032, setups S001 S002 S008;
    unlabeled: the remaining NTU subject ids P004–P006 P012–P014 P033–P036 and, by
    default (``unlabeled_cameras=own``), their own setups S018–S020 — a third data set
    like PKU-MMD in the thesis; ``train`` uses the train cameras instead. No subject
    and no camera is in both train and test.

A *setup* ``S…`` is one room with three sensors ``C001…C003``; a camera id is
``S{setup:03d}C{camera:03d}``, a subject id ``P{number:03d}``.
"""
from __future__ import annotations

from dataclasses import dataclass

from depthpi.validation import Choice, check

SPLIT_IDS = {"train": 0, "test": 1, "unlabeled": 2}

# Table 5.2 of the thesis (NTU RGB+D).
NTU_TRAIN_SUBJECTS = (7, 8, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 37, 38, 39, 40)
NTU_TEST_SUBJECTS = (1, 2, 3, 9, 10, 11, 29, 30, 31, 32)
NTU_TRAIN_SETUPS = (3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17)
NTU_TEST_SETUPS = (1, 2, 8)


DepthKind = Choice("DepthKind", "z distance")  # along the optical axis (Kinect v2), or radial
UnlabeledCameras = Choice("UnlabeledCameras", "own train")  # unlabeled_setups, or the train cameras


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic set. Lengths in mm, sizes (width, height) in pixels.

    Attributes:
        seed: world seed; identities, rooms, sensors and samples all derive from it.
        rgb_size, rgb_focal: colour sensor resolution and range of fx (fy = fx ± 0.5 %).
        rgb_noise: σ of additive RGB sensor noise, in 8-bit levels.
        depth_size, depth_focal: depth sensor resolution and range of its fx.
        depth_kind: ``z`` (optical-axis depth) or ``distance`` (radial).
        depth_range: valid sensor range; outside it depth is 0.
        depth_noise: (a, b) of σ(z) = a + b·z², σ in mm, z in m.
        depth_dropout_blobs: mean number of dropout blobs per depth crop.
        depth_dropout_pixels: probability of an isolated invalid pixel.
        crop_size: side of the stored (square) RGB crop.
        crop_margin: crop side / long side of the tight person box.
        person_distance: horizontal camera–person distance range.
        camera_height: sensor height range.
        body_height: subject height range (standing, floor to head top).
        *_subjects, *_setups: subject and setup numbers of each split; a camera id is
            ``S{setup:03d}C{c:03d}`` for c in 1 … cameras_per_setup.
        unlabeled_cameras: ``own`` (unlabeled_setups) or ``train`` (train cameras).
    """

    seed: int = 0
    # the colour sensor
    rgb_size: tuple[int, int] = (640, 480)
    rgb_focal: tuple[float, float] = (520.0, 600.0)
    rgb_noise: float = 2.5
    # the depth sensor
    depth_size: tuple[int, int] = (256, 212)
    depth_focal: tuple[float, float] = (176.0, 190.0)
    depth_kind: DepthKind = DepthKind.z
    depth_range: tuple[float, float] = (500.0, 6000.0)
    depth_noise: tuple[float, float] = (1.0, 1.425)
    depth_dropout_blobs: float = 3.0
    depth_dropout_pixels: float = 0.003
    # the stored crop
    crop_size: int = 288
    crop_margin: float = 1.4
    # the scene
    person_distance: tuple[float, float] = (2000.0, 5000.0)
    camera_height: tuple[float, float] = (600.0, 1800.0)
    body_height: tuple[float, float] = (1450.0, 2000.0)
    # the splits
    train_subjects: tuple[int, ...] = NTU_TRAIN_SUBJECTS
    test_subjects: tuple[int, ...] = NTU_TEST_SUBJECTS
    unlabeled_subjects: tuple[int, ...] = (4, 5, 6, 12, 13, 14, 33, 34, 35, 36)
    train_setups: tuple[int, ...] = NTU_TRAIN_SETUPS
    test_setups: tuple[int, ...] = NTU_TEST_SETUPS
    unlabeled_setups: tuple[int, ...] = (18, 19, 20)
    cameras_per_setup: int = 3
    unlabeled_cameras: UnlabeledCameras = UnlabeledCameras.own

    def __post_init__(self):
        check(1 <= self.cameras_per_setup <= 3, "cameras_per_setup", "1 to 3", self.cameras_per_setup)
        for name in ("train_subjects", "test_subjects", "unlabeled_subjects", "train_setups", "test_setups"):
            check(bool(getattr(self, name)), name, "at least one number", getattr(self, name))
        for train, test in (("train_subjects", "test_subjects"), ("train_setups", "test_setups")):
            overlap = sorted(set(getattr(self, train)) & set(getattr(self, test)))
            check(not overlap, test, f"no number of {train} (they overlap in {overlap})", getattr(self, test))
        check(self.unlabeled_cameras != UnlabeledCameras.own or bool(self.unlabeled_setups), "unlabeled_setups",
              "at least one setup while unlabeled_cameras=own", self.unlabeled_setups)
        check(self.crop_size >= 16, "crop_size", ">= 16", self.crop_size)
        check(self.crop_margin >= 1.0, "crop_margin", ">= 1", self.crop_margin)


def split_id(split: str) -> int:
    """The number of ``split`` in every sample's seed (``SPLIT_IDS``); ValueError for an unknown split."""
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLIT_IDS)}")
    return SPLIT_IDS[split]


def subjects_of(split: str, cfg: SyntheticConfig | None = None) -> list[str]:
    """Subject ids (``"P007"``) of a split."""
    cfg = cfg or SyntheticConfig()
    split_id(split)
    numbers = {"train": cfg.train_subjects, "test": cfg.test_subjects, "unlabeled": cfg.unlabeled_subjects}[split]
    return [f"P{n:03d}" for n in numbers]


def cameras_of(split: str, cfg: SyntheticConfig | None = None) -> list[str]:
    """Camera ids (``"S003C001"``) of a split."""
    cfg = cfg or SyntheticConfig()
    split_id(split)
    if split == "unlabeled":
        setups = cfg.unlabeled_setups if cfg.unlabeled_cameras == UnlabeledCameras.own else cfg.train_setups
    else:
        setups = cfg.train_setups if split == "train" else cfg.test_setups
    return [f"S{s:03d}C{c:03d}" for s in setups for c in range(1, cfg.cameras_per_setup + 1)]
