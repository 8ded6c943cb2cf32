"""Shared by the benchmarks: describe the machine and append a figure to docs/benchmarks.md."""
from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import torch

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def machine() -> str:
    """One line naming CPU cores, the GPU if any, and the torch build."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def record(title: str, table: str, command: str) -> None:
    """Append a dated section with the machine, the command and the table."""
    DOCS.parent.mkdir(exist_ok=True)
    if not DOCS.exists():
        DOCS.write_text("# Benchmarks\n\nFigures appended by `bench/*.py --record`; newest last.\n")
    stamp = datetime.date.today().isoformat()
    with DOCS.open("a") as f:
        f.write(f"\n## {title} — {stamp}\n\nMachine: {machine()}  \nCommand: `{command}`\n\n{table}\n")
