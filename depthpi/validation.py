"""How a config dataclass refuses a value: one error, one line, naming the key.

A config dataclass checks its own fields in ``__post_init__`` with :func:`check`, naming
each field by its key inside the dataclass (``width``); :func:`depthpi.config.load_config`
adds where the dataclass sits (``teacher.model.width``). A field that takes one of a few
names is a :class:`Choice`, which OmegaConf checks when a config is merged.
"""
from __future__ import annotations

from enum import Enum


class ConfigError(ValueError):
    """A config value out of its range: ``config key 'k': expected E, got G``."""

    def __init__(self, key: str, expected: str, got):
        super().__init__(key, expected, got)
        self.key, self.expected, self.got = key, expected, got

    def __str__(self) -> str:
        return f"config key {self.key!r}: expected {self.expected}, got {self.got!r}"

    def under(self, section: str) -> ConfigError:
        """The same error for the dataclass at ``section`` (``teacher.model``; ``""``: the root)."""
        return ConfigError(f"{section}.{self.key}" if section else self.key, self.expected, self.got)


def check(ok: bool, key: str, expected: str, got) -> None:
    """Raise :class:`ConfigError` unless ``ok``."""
    if not ok:
        raise ConfigError(key, expected, got)


class Choice(str, Enum):
    """A config field's names: ``Precision = Choice("Precision", "auto bf16 fp16 fp32")``.

    Each member's value is its name, the text a YAML file holds (OmegaConf looks members up
    by name), and a member is that string: it compares, hashes, prints, formats and
    serialises as the text; ``repr`` shows the text too.
    """

    __str__ = str.__str__
    __format__ = str.__format__

    @staticmethod
    def _generate_next_value_(name, start, count, last_values):
        return name

    def __repr__(self) -> str:
        return repr(self.value)
