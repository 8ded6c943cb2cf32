"""Command line of the stage entry points (``launch/train_*.py``)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from depthpi.config import load_config
from depthpi.dist import world_info
from depthpi.log import configure_logging


def main(stage: str, argv: list[str] | None = None) -> dict:
    """``--config FILE`` plus ``key=value`` overrides; trains one run of ``stage``."""
    parser = argparse.ArgumentParser(
        prog=f"train_{stage}.py",
        description=f"Train a depthpi {stage}. Runs as one process, or under `accelerate launch` on many "
                    "GPUs/nodes: DDP, or DeepSpeed with run.deepspeed.zero_stage=1/2. A user error (a bad "
                    "key, path or file) ends in one line and exit status 2; a full disk or an unreachable "
                    "shard server in one line and exit status 1 (the same command then resumes).")
    parser.add_argument("--config", required=True, help=f"YAML, e.g. configs/{stage}/*.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-4 run.out_dir=runs/x")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except (FileNotFoundError, ValueError) as err:  # one line, exit status 2
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    if cfg.stage != stage:
        parser.error(f"{args.config}: stage is {cfg.stage!r}; use launch/train_{cfg.stage}.py")
    from depthpi.data.remote import ServerUnreachable
    from depthpi.io import DiskFullError
    from depthpi.train.checkpoint import resume_hint
    from depthpi.train.engine import train  # heavy imports after argument errors
    from depthpi.train.startup_checks import StartupError

    configure_logging()
    try:
        return train(cfg)
    except StartupError as err:
        message = f"{parser.prog}: error: {err}"
        tell_launcher(message)
        parser.exit(2, f"{message}\n" if world_info().rank == 0 else None)  # once, not once per rank
    except (ServerUnreachable, DiskFullError) as err:  # stopped by a cause outside the run: one line, status 1
        parser.exit(1, f"{parser.prog}: error: {err}; {resume_hint(cfg.run.out_dir)}\n")


def tell_launcher(message: str) -> None:
    """Hand a one-line error to torchrun / ``accelerate launch``: the launcher's failure report
    shows it as its root cause (instead of "To enable traceback see ...")."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        with open(path, "w") as f:
            json.dump({"message": message, "timestamp": str(int(time.time()))}, f)
