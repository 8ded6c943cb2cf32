"""Augmentation parameters (thesis §4.1.4): drawn once per view, stored, replayable.

A view's augmentation is a small record of numbers (:class:`ViewParams`). It is drawn
from a generator seeded by (run seed, epoch, sample key, view), so the same view can be
rebuilt bit for bit — that is what lets a precomputed teacher view be replayed for the
student. Geometry is applied by the pose pipeline (``depthpi.data.pipeline``) in the loader
workers; colour by ``depthpi.data.colour`` in the training step.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from depthpi.validation import check


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the augmentations; ``geometry``/``colour`` switch each family off.

    Defaults are the thesis' (eq. 4.14–4.21). Units: roll in radians, hue in degrees,
    brightness in normalised [0, 1] intensity.
    """

    geometry: bool = True
    colour: bool = True
    roll: float = np.pi / 12
    flip_probability: float = 0.5
    zoom: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.125
    contrast: tuple[float, float] = (0.8, 1.25)
    hue_degrees: float = 18.0
    saturation: tuple[float, float] = (0.8, 1.25)

    def __post_init__(self):
        for name in ("roll", "brightness", "hue_degrees"):
            check(getattr(self, name) >= 0, name, ">= 0", getattr(self, name))
        check(0 <= self.flip_probability <= 1, "flip_probability", "a value in [0, 1]", self.flip_probability)
        for name in ("zoom", "contrast", "saturation"):
            low, high = getattr(self, name)
            check(0 < low <= high, name, "[low, high] with 0 < low <= high", [low, high])


@dataclass(frozen=True)
class ViewParams:
    """One view's augmentation; the identity view is ``ViewParams()``."""

    roll: float = 0.0
    flip: bool = False
    zoom: float = 1.0
    brightness: float = 0.0
    contrast: float = 1.0
    hue: float = 0.0
    saturation: float = 1.0

    def to_dict(self) -> dict:
        # Shallow: every field is a number (dataclasses.asdict deep-copies, ~35 µs per sample).
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def colour_vector(self) -> np.ndarray:
        """(4,) float32 brightness, contrast, hue (degrees), saturation, the order
        ``depthpi.data.colour.colour_augment`` takes."""
        return np.array([self.brightness, self.contrast, self.hue, self.saturation], np.float32)

    @classmethod
    def from_dict(cls, record: dict) -> ViewParams:
        """A view from its stored record; raises ValueError naming an unknown or non-numeric field."""
        if not isinstance(record, dict):
            raise ValueError(f"ViewParams: expected a mapping of fields, got {type(record).__name__}")
        unknown = set(record) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"ViewParams: unknown fields {sorted(unknown)}")
        values = {}
        for name, value in record.items():
            kind = bool if name == "flip" else float
            if not isinstance(value, (bool, int, float)) or (kind is float and isinstance(value, bool)):
                raise ValueError(f"ViewParams.{name}: expected a {kind.__name__}, got {value!r}")
            if kind is float and not np.isfinite(value):
                raise ValueError(f"ViewParams.{name}: expected a finite number, got {value!r}")
            values[name] = kind(value)
        return cls(**values)


def view_rng(seed: int, epoch: int, key: str, view: int) -> np.random.Generator:
    """The generator of one view: a pure function of (seed, epoch, key, view)."""
    key_hash = zlib.crc32(key.encode())
    return np.random.default_rng([seed, epoch, key_hash, view])


def draw_view(rng: np.random.Generator, cfg: AugmentConfig) -> ViewParams:
    """Draw all parameters in a fixed order (so adding a family never reshuffles another)."""
    u = rng.uniform(size=7)
    params = {}
    if cfg.geometry:
        params.update(roll=float((2 * u[0] - 1) * cfg.roll), flip=bool(u[1] < cfg.flip_probability),
                      zoom=float(_lerp(cfg.zoom, u[2])))
    if cfg.colour:
        params.update(brightness=float((2 * u[3] - 1) * cfg.brightness),
                      contrast=float(_lerp(cfg.contrast, u[4])),
                      hue=float((2 * u[5] - 1) * cfg.hue_degrees),
                      saturation=float(_lerp(cfg.saturation, u[6])))
    return ViewParams(**params)


def _lerp(bounds: tuple[float, float], u: float) -> float:
    return bounds[0] + (bounds[1] - bounds[0]) * u
