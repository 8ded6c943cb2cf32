"""``depthpi sweep status`` and ``depthpi sweep collect``: where a sweep stands, what it found.

Status combines SLURM's view (``squeue``, then ``sacct`` where accounting is on) with
the run directories (``sweep_element.json``, checkpoints, ``metrics.json``). Collect
builds the thesis' tables: one row per element (or per group of seeds: mean ± sample
standard deviation over ``run.seed``), the config keys that differ between elements, and
the final MPJPE / PCK / AUC, as Markdown, CSV and a bar plot. PA-MPJPE, N-MPJPE and the
mean-pose MPJPE (the error of the training split's mean pose, the baseline a model must
beat) get columns when a run's ``metrics.json`` has them; older runs leave those cells empty.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import subprocess
from collections import OrderedDict
from pathlib import Path

import yaml

from depthpi.io import atomic_path, atomic_write_text
from depthpi.sweep.submit import ELEMENT_FILE, PLAN_FILE, read_json

# (metrics.json key, column header, digits), in table order.
METRICS = (("mpjpe", "MPJPE (mm)", 1), ("pa_mpjpe", "PA-MPJPE (mm)", 1), ("n_mpjpe", "N-MPJPE (mm)", 1),
           ("pck", "PCK", 3), ("auc", "AUC", 3), ("mean_pose_mpjpe", "mean-pose MPJPE (mm)", 1))
# Columns every table has; the others appear when at least one run reports them.
CORE_METRICS = ("mpjpe", "pck", "auc")
SEED_KEY = "run.seed"
_IGNORED_KEYS = {"run.out_dir"}


# --- which elements, in which order ---------------------------------------------------
def load_elements(sweep_dir: str | Path) -> list[dict]:
    """The sweep's elements (from ``sweep.json``, else the run dirs found), each a dict."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory not found: {sweep_dir}")
    plan = read_json(sweep_dir / PLAN_FILE)
    if plan is not None:
        return [e for s in plan["stages"] for e in s["elements"]]
    # No plan (e.g. run dirs gathered by hand): every subdirectory that looks like a run, by name.
    found = sorted(p for p in sweep_dir.iterdir()
                   if (p / ELEMENT_FILE).is_file() or (p / "metrics.json").is_file())
    if not found:
        raise FileNotFoundError(f"{sweep_dir}: no {PLAN_FILE} and no run directories with {ELEMENT_FILE} "
                                "or metrics.json — is this a sweep directory?")
    elements = []
    for run_dir in found:
        record = read_json(run_dir / ELEMENT_FILE) or {}
        elements.append({"name": record.get("name", run_dir.name), "kind": record.get("kind", "train"),
                         "run_dir": str(run_dir), "overrides": record.get("overrides", []),
                         "job_id": (record.get("job_ids") or [None])[-1]})
    return elements


# --- status -----------------------------------------------------------------------------
def _run(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM state per job id (``123_4`` for array tasks): squeue, then sacct for finished jobs."""
    arrays = sorted({j.split("_")[0] for j in job_ids if j})
    if not arrays:
        return {}
    states = {}
    out = _run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(arrays)])
    for line in (out or "").splitlines():
        if "|" in line:
            job, state = line.split("|", 1)
            states[job.strip()] = state.split()[0] if state.strip() else "UNKNOWN"
    out = _run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(arrays)])
    for line in (out or "").splitlines():  # squeue is current; it wins over sacct
        if "|" in line:
            job, state = line.split("|", 1)
            states[job.strip()] = state.strip()
    return states


def local_states(job_ids: list[str]) -> dict[str, str]:
    """``RUNNING`` or ``EXITED`` per local job (its controller process on this machine)."""
    states = {}
    for job_id in filter(None, job_ids):
        try:
            os.kill(int(job_id), 0)
            states[job_id] = "RUNNING"
        except (ValueError, ProcessLookupError):
            states[job_id] = "EXITED"
        except PermissionError:
            states[job_id] = "RUNNING"
    return states


def _tail(path: str | None, lines: int = 8) -> str:
    if not path or not Path(path).is_file():
        return ""
    text = Path(path).read_text(errors="replace").rstrip().splitlines()
    return "\n".join(text[-lines:])


def _progress(run_dir: Path) -> str:
    """``epoch k/E (step s)`` from the newest checkpoint and the saved config."""
    from depthpi.train.checkpoint import latest_checkpoint  # light: no model imports

    epochs = None
    if (run_dir / "config.yaml").is_file():
        epochs = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("optim", {}).get("epochs")
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return f"epoch 1/{epochs or '?'}"
    trainer = json.loads((latest / "trainer.json").read_text())
    return f"epoch {min(trainer['epoch'] + 1, epochs or 10**9)}/{epochs or '?'} (step {trainer['step']})"


def element_status(element: dict, slurm: dict[str, str]) -> dict:
    """One element's state: ``not started`` / ``pending`` / ``running`` / ``done`` / ``failed``."""
    run_dir = Path(element["run_dir"])
    record = read_json(run_dir / ELEMENT_FILE) or {}
    job_id = element.get("job_id") or (record.get("job_ids") or [None])[-1]
    slurm_state = slurm.get(job_id or "", "")
    row = {"name": element["name"], "job_id": job_id or "-", "slurm": slurm_state or "-",
           "attempts": record.get("attempts", 0), "detail": ""}
    state = record.get("state")
    if state == "done":
        metrics = record.get("metrics") or read_json(run_dir / "metrics.json") or {}
        row["state"] = "done"
        row["detail"] = " ".join(f"{k}={metrics[k]:.{d}f}" for k, _, d in METRICS
                                 if _number(metrics.get(k)) is not None)
    elif state == "failed" or (state == "running" and slurm_state == "EXITED") or \
            slurm_state in ("FAILED", "TIMEOUT", "CANCELLED", "OUT_OF_MEMORY", "NODE_FAIL"):
        row["state"] = "failed"
        row["detail"] = record.get("error", f"job ended without finishing ({slurm_state})")
        row["log_tail"] = _tail(record.get("error_log")) or _tail(record.get("log"))
    elif state == "running" and slurm_state in ("", "RUNNING", "COMPLETING"):
        row["state"] = "running"
        row["detail"] = _progress(run_dir) if element.get("kind", "train") == "train" else ""
    elif state == "running" or slurm_state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "SUSPENDED", "PREEMPTED"):
        row["state"] = "pending" if not record else "requeued"
        row["detail"] = (_progress(run_dir) + " saved") if record and element.get("kind", "train") == "train" else ""
    else:
        row["state"] = "not started"
    return row


def status(sweep_dir: str | Path) -> list[dict]:
    """Status rows of every element of a sweep."""
    elements = load_elements(sweep_dir)
    plan = read_json(Path(sweep_dir) / PLAN_FILE) or {}
    job_ids = [e.get("job_id") or "" for e in elements]
    # Local job ids are process ids (submitit's controller), not SLURM's.
    slurm = local_states(job_ids) if plan.get("executor") == "local" else slurm_states(job_ids)
    return [element_status(e, slurm) for e in elements]


def format_status(rows: list[dict]) -> str:
    """A fixed-width table, failed elements followed by the last lines of their logs."""
    header = ("element", "state", "job", "queue", "tries", "detail")
    table = [header] + [(r["name"], r["state"], r["job_id"], r["slurm"], str(r["attempts"]),
                         (str(r["detail"]).splitlines() or [""])[0][:120]) for r in rows]
    widths = [max(len(str(t[i])) for t in table) for i in range(len(header) - 1)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(t[:-1], widths)) + "  " + str(t[-1]) for t in table]
    counts = OrderedDict()
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    for r in rows:
        if r.get("log_tail"):
            lines += ["", f"--- {r['name']}: last log lines", r["log_tail"]]
    return "\n".join(lines)


# --- collect ----------------------------------------------------------------------------
def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
    return {k.rstrip("."): v for k, v in flat.items()}


def _element_config(element: dict) -> dict:
    """The run's resolved config, flattened: its ``config.yaml``, else resolved from the plan."""
    path = Path(element["run_dir"]) / "config.yaml"
    if path.is_file():
        return _flatten(yaml.safe_load(path.read_text()) or {})
    overrides = element.get("overrides", [])
    if element.get("config"):
        from depthpi.config import load_config, to_yaml

        try:
            return _flatten(yaml.safe_load(to_yaml(load_config(element["config"], overrides))))
        except (OSError, ValueError):
            pass  # the config moved or changed since submission: its overrides are what is left
    return {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in overrides)}


def differing_keys(configs: list[dict]) -> list[str]:
    """Config keys whose values differ between elements (``run.out_dir`` aside), in first-seen order."""
    keys = list(OrderedDict.fromkeys(k for c in configs for k in c))
    return [k for k in keys if k not in _IGNORED_KEYS
            and len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1; 0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _group_label(names: list[str]) -> str:
    stripped = [re.sub(r"(^|_)seed-[^_]+", "", n).strip("_") for n in names]
    unique = list(OrderedDict.fromkeys(s for s in stripped if s))
    return "/".join(unique) or "all"


def _number(value) -> float | None:
    """A metric value of metrics.json as a float; None when absent, null or not a number."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _metric_stats(runs: list[dict]) -> dict[str, tuple[float, float] | None]:
    """{metric key: (mean, sample std) over the runs that report it, or None when none does}."""
    stats = {}
    for key, _, _ in METRICS:
        values = [v for v in (_number(r.get(key)) for r in runs) if v is not None]
        stats[key] = mean_std(values) if values else None
    return stats


def collect_rows(sweep_dir: str | Path) -> tuple[list[str], list[dict]]:
    """Table rows of a sweep's training elements: differing config values and metric mean/std.

    Elements that differ only in ``run.seed`` form one row (``n`` = seeds with metrics; a
    metric's mean is over the seeds whose metrics.json has it, None when none has).

    Returns:
        (the differing config keys shown as columns, the rows).
    """
    elements = [e for e in load_elements(sweep_dir) if e.get("kind", "train") == "train"]
    configs = [_element_config(e) for e in elements]
    keys = differing_keys(configs)
    shown = [k for k in keys if k != SEED_KEY]
    groups: OrderedDict[str, list[int]] = OrderedDict()
    for i, config in enumerate(configs):
        group = json.dumps([config.get(k) for k in shown], default=str) if SEED_KEY in keys else str(i)
        groups.setdefault(group, []).append(i)
    rows = []
    for members in groups.values():
        metrics = [m for m in (read_json(Path(elements[i]["run_dir"]) / "metrics.json") for i in members) if m]
        row = {"element": _group_label([elements[i]["name"] for i in members]) if SEED_KEY in keys
               else elements[members[0]]["name"], "n": len(metrics),
               "config": {k: configs[members[0]].get(k) for k in shown},
               "threshold_mm": metrics[0].get("threshold_mm") if metrics else None}
        if SEED_KEY in keys:
            row["seeds"] = [configs[i].get(SEED_KEY) for i in members]
        row.update(_metric_stats(metrics))
        row["tests"] = _extra_tests(metrics)
        rows.append(row)
    return shown, rows


def _extra_tests(metrics: list[dict]) -> dict[str, dict]:
    """Per extra test set (``metrics.json`` ``tests``, the engine's ``data.extra_tests``):
    {name: {"threshold_mm", metric: (mean, std)}} over the runs that have it."""
    names = list(OrderedDict.fromkeys(name for m in metrics for name in m.get("tests", {})))
    out = {}
    for name in names:
        runs = [m["tests"][name] for m in metrics if name in m.get("tests", {})]
        out[name] = {"threshold_mm": runs[0].get("threshold_mm"), "n": len(runs), **_metric_stats(runs)}
    return out


def _pck_header(thresholds: set) -> str:
    thresholds = {t for t in thresholds if t is not None}
    return f"PCK@{thresholds.pop():g}mm" if len(thresholds) == 1 else "PCK"


def _shown_metrics(stats: list[dict]) -> list[tuple[str, str, int]]:
    """The METRICS entries a table shows: the core ones, and the others some row reports."""
    return [(k, h, d) for k, h, d in METRICS
            if k in CORE_METRICS or any(s.get(k) is not None for s in stats)]


def _main_columns(rows: list[dict]) -> list[tuple[str, str, int]]:
    """(metric key, header, digits) of the main test split's columns."""
    pck = _pck_header({r["threshold_mm"] for r in rows})
    return [(k, pck if k == "pck" else h, d) for k, h, d in _shown_metrics(rows)]


def _test_columns(rows: list[dict]) -> list[tuple[str, str, str, int]]:
    """(test set, metric key, header, digits) of every extra test set in ``rows``, first-seen order."""
    names = list(OrderedDict.fromkeys(name for r in rows for name in r.get("tests", {})))
    columns = []
    for name in names:
        tests = [r["tests"][name] for r in rows if name in r.get("tests", {})]
        pck = _pck_header({t["threshold_mm"] for t in tests})
        columns += [(name, k, f"{name} {pck if k == 'pck' else h}", d) for k, h, d in _shown_metrics(tests)]
    return columns


def _cell(value, digits: int, with_std: bool) -> str:
    if value is None:
        return "—"
    mean, std = value
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if with_std else f"{mean:.{digits}f}"


def _plain(value) -> str:
    return "" if value is None else (json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value))


def to_markdown(keys: list[str], rows: list[dict]) -> str:
    """The Markdown table; metric cells read ``mean ± std`` when seeds were grouped."""
    grouped = any("seeds" in r for r in rows)
    main, tests = _main_columns(rows), _test_columns(rows)
    header = ["element", *keys, *(["seeds"] if grouped else []), *(h for _, h, _ in main),
              *(h for *_, h, _ in tests)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["element"], *(_plain(r["config"][k]) for k in keys), *([str(r["n"])] if grouped else [])]
        cells += [_cell(r.get(k), d, grouped) for k, _, d in main]
        cells += [_cell(r.get("tests", {}).get(name, {}).get(k), d, grouped) for name, k, _, d in tests]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(keys: list[str], rows: list[dict]) -> str:
    """CSV with full-precision ``<metric>_mean`` and ``<metric>_std`` columns."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    main, tests = _main_columns(rows), _test_columns(rows)
    writer.writerow(["element", *keys, "n", *(f"{k}_{s}" for k, _, _ in main for s in ("mean", "std")),
                     *(f"{name}.{k}_{s}" for name, k, _, _ in tests for s in ("mean", "std"))])
    for r in rows:
        metrics = [("" if r.get(k) is None else repr(r[k][j])) for k, _, _ in main for j in (0, 1)]
        for name, k, _, _ in tests:
            value = r.get("tests", {}).get(name, {}).get(k)
            metrics += ["" if value is None else repr(value[j]) for j in (0, 1)]
        writer.writerow([r["element"], *(_plain(r["config"][k]) for k in keys), r["n"], *metrics])
    return buffer.getvalue()


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Bar plot of MPJPE, PCK and AUC per row (error bars: std over seeds), saved atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["element"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(max(8, 1.2 * len(rows) * 3), 3.6))
    for ax, (key, label, _) in zip(axes, [m for m in METRICS if m[0] in CORE_METRICS]):
        means = [r[key][0] if r[key] else float("nan") for r in rows]
        stds = [r[key][1] if r[key] else 0.0 for r in rows]
        ax.bar(range(len(rows)), means, yerr=stds, capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(rows)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def collect(sweep_dir: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Write ``results.md``, ``results.csv`` and ``results.png`` of a sweep; returns their paths."""
    sweep_dir = Path(sweep_dir)
    out = Path(out) if out else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    keys, rows = collect_rows(sweep_dir)
    if not rows:
        raise ValueError(f"{sweep_dir}: no training elements to collect")
    paths = {"markdown": out / "results.md", "csv": out / "results.csv", "plot": out / "results.png"}
    atomic_write_text(paths["markdown"], to_markdown(keys, rows))
    atomic_write_text(paths["csv"], to_csv(keys, rows))
    plot(rows, paths["plot"], sweep_dir.name)
    return paths
