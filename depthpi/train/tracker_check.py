"""The trackers of ``run.log_with``, checked before the first step.

Each must be importable and its store usable: TensorBoard's directory writable; MLflow's
tracking store answering a real request (a server within ``run.tracker_timeout_s``, no
retries; a file or database store that can be created); W&B offline writing into the run
directory, online holding an API key. A tracker that would fail after setup fails here,
in one line naming the tracker, what was wrong and the fix. The main process checks (it
is the one that logs); every rank learns the verdict.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import netrc
import os
import tempfile
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from depthpi.dist import first_on_any_rank

INSTALL = {"tensorboard": "pip install tensorboard", "mlflow": "pip install mlflow-skinny",
           "wandb": "pip install wandb"}
MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",), "wandb": ("wandb",)}


def check_trackers(log_with: tuple[str, ...], run_dir: Path, timeout_s: float, is_main: bool) -> None:
    """Refuse a run whose trackers cannot log (a collective: every rank calls it).

    Raises:
        ValueError: one line naming ``run.log_with``, the tracker and the fix.
    """
    problem = None
    if is_main:
        problem = next(filter(None, (tracker_problem(kind, run_dir, timeout_s) for kind in log_with)), None)
    problem = first_on_any_rank(problem, "tracker check")
    if problem:
        others = [k for k in log_with if not problem.startswith(k)]
        raise ValueError(f"config key 'run.log_with': {problem}; or log without it: run.log_with=[{','.join(others)}]")


def tracker_problem(kind: str, run_dir: Path, timeout_s: float) -> str | None:
    """What keeps tracker ``kind`` from logging, or None."""
    if not any(importlib.util.find_spec(module) for module in MODULES[kind]):
        return f"{kind} is not installed ({INSTALL[kind]})"
    if kind == "tensorboard":
        return _unwritable(run_dir / "tensorboard", kind)
    if kind == "mlflow":
        return _mlflow_problem(timeout_s)
    return _wandb_problem(run_dir)


def _unwritable(directory: Path, kind: str) -> str | None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        return f"{kind} cannot write to {directory} ({err.strerror or err}); make it writable"
    return None


def _mlflow_problem(timeout_s: float) -> str | None:
    """One real request to the tracking store, bounded: MLflow's own retries (minutes) switched off."""
    with _environment(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(math.ceil(timeout_s))):
        import mlflow

        uri = mlflow.get_tracking_uri()
        try:
            mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as err:  # noqa: BLE001 — MLflow, requests, SQLAlchemy and OS errors alike
            return (f"mlflow cannot use its tracking store {uri} ({_cause(err)}); set MLFLOW_TRACKING_URI to a "
                    f"reachable server or a writable store")
    return None


def _cause(err: Exception) -> str:
    """The innermost reason of an error (MLflow wraps urllib3's in two layers of text)."""
    text = " ".join(str(err).split()) or type(err).__name__
    if "Caused by " in text:  # ...(Caused by ReadTimeoutError("HTTPConnectionPool(...): Read timed out. (...)"))
        text = text.rsplit("Caused by ", 1)[1].rsplit("): ", 1)[-1].rstrip("'\")")
    return text[:200]


def _wandb_problem(run_dir: Path) -> str | None:
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return _unwritable(run_dir, "wandb")
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    if os.environ.get("WANDB_API_KEY") or _netrc_has(host):
        return None
    return f"wandb has no API key for {host} (run `wandb login`, set WANDB_API_KEY, or WANDB_MODE=offline)"


def _netrc_has(host: str) -> bool:
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Environment variables set for the block only (the earlier values come back after it)."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
