"""What each rank trained on, to audit data sharding and DDP synchronisation."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from depthpi.io import atomic_write_json


class RankLedger:
    """``run_dir/ranks/rank-<r>.json``: sample keys per epoch (up to ``max_keys``), samples
    per epoch, and a parameter checksum (equal on every rank when DDP kept them in sync)."""

    def __init__(self, rank: int, world_size: int, max_keys: int = 20000):
        self.rank, self.world_size, self.max_keys = rank, world_size, max_keys
        self.keys: dict[int, list[str]] = {}
        self.counts: dict[int, int] = {}

    def add(self, epoch: int, keys: list[str]) -> None:
        self.counts[epoch] = self.counts.get(epoch, 0) + len(keys)
        kept = self.keys.setdefault(epoch, [])
        if len(kept) < self.max_keys:
            kept.extend(keys[: self.max_keys - len(kept)])

    def write(self, run_dir: Path, step: int, model: nn.Module) -> None:
        checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
        record = {"rank": self.rank, "world_size": self.world_size, "step": step, "param_checksum": checksum,
                  "samples_per_epoch": self.counts, "keys": self.keys}
        atomic_write_json(run_dir / "ranks" / f"rank-{self.rank}.json", record, indent=None)
