"""Nested dicts as dotted keys, ``{"optim": {"lr": 1e-4}}`` → ``{"optim.lr": 1e-4}``: the keys
of command-line overrides, of the sweep tables' columns and of tracker parameters."""
from __future__ import annotations


def flatten(tree: dict, prefix: str = "") -> dict:
    """Every leaf of ``tree`` under its dotted key; an empty dict is a leaf (no key is lost)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
