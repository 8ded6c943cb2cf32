"""``depthpi sweep status`` and ``collect``: where a sweep stands (each element's record joined
with its job's state from submitit), and the tables of what it found (``docs/sweeps.md``)."""
from __future__ import annotations

import csv
import io
import json
import logging
import re
import statistics
from collections import Counter
from pathlib import Path

import submitit
import yaml

from depthpi.dotted import flatten
from depthpi.io import atomic_path, atomic_write_text, read_json
from depthpi.sweep.submit import ELEMENT_FILE, PLAN_FILE

METRICS = (("mpjpe", "MPJPE (mm)", 1), ("pa_mpjpe", "PA-MPJPE (mm)", 1), ("n_mpjpe", "N-MPJPE (mm)", 1),
           ("pck", "PCK", 3), ("auc", "AUC", 3), ("mean_pose_mpjpe", "mean-pose MPJPE (mm)", 1))
CORE_METRICS = ("mpjpe", "pck", "auc")
SEED_KEY = "run.seed"
ENDED = ("FAILED", "TIMEOUT", "CANCELLED", "OUT_OF_MEMORY", "NODE_FAIL", "EXITED")
WAITING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "SUSPENDED", "PREEMPTED")


def load_elements(sweep_dir: str | Path) -> tuple[dict, list[dict]]:
    """The plan (``sweep.json``; {} without one) and its elements, else the run directories found."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory not found: {sweep_dir}")
    plan = read_json(sweep_dir / PLAN_FILE)
    if plan is not None:
        return plan, [e for a in plan["arrays"] for e in a["elements"]]
    found = sorted(p for p in sweep_dir.iterdir() if (p / ELEMENT_FILE).is_file() or (p / "metrics.json").is_file())
    if not found:
        raise FileNotFoundError(f"{sweep_dir}: no {PLAN_FILE} and no run directories with {ELEMENT_FILE} "
                                "or metrics.json — is this a sweep directory?")
    return {}, [{"name": p.name, "kind": "train", **(read_json(p / ELEMENT_FILE) or {}), "run_dir": str(p)}
                for p in found]


def job_states(plan: dict, elements: list[dict]) -> dict[str, str]:
    """submitit's word on each job: SLURM's state (``UNKNOWN`` without accounting); a local job's id is a pid."""
    ids = [e["job_id"] for e in elements if e.get("job_id")]
    if plan.get("executor") == "local":
        return {j: "RUNNING" if Path(f"/proc/{j}").exists() else "EXITED" for j in ids}
    logging.getLogger("submitit").setLevel(logging.ERROR)  # without accounting it warns on every call
    return {j: (submitit.SlurmJob(folder=".", job_id=j).state.split() or ["UNKNOWN"])[0] for j in ids}


def _tail(path: str | None, lines: int = 8) -> str:
    return "\n".join(Path(path).read_text(errors="replace").rstrip().splitlines()[-lines:]) \
        if path and Path(path).is_file() else ""


def _saved_config(run_dir: Path) -> dict | None:
    """The run's ``config.yaml``, flattened (None before the run starts)."""
    path = run_dir / "config.yaml"
    return flatten(yaml.safe_load(path.read_text()) or {}) if path.is_file() else None


def _progress(run_dir: Path) -> str:
    """``epoch k/E (step s)`` from the newest checkpoint and the saved config."""
    from depthpi.train.checkpoint import latest_checkpoint  # light: no model imports

    epochs = (_saved_config(run_dir) or {}).get("optim.epochs")
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return f"epoch 1/{epochs or '?'}"
    trainer = json.loads((latest / "trainer.json").read_text())
    return f"epoch {min(trainer['epoch'] + 1, epochs or 10**9)}/{epochs or '?'} (step {trainer['step']})"


def status(sweep_dir: str | Path) -> list[dict]:
    """One row per element: ``not started``, ``pending``, ``requeued``, ``running``, ``done`` or ``failed``."""
    plan, elements = load_elements(sweep_dir)
    queue, rows = job_states(plan, elements), []
    for element in elements:
        run_dir = Path(element["run_dir"])
        record = read_json(run_dir / ELEMENT_FILE) or {}
        job_id = element.get("job_id") or (record.get("job_ids") or [None])[-1]
        said = queue.get(job_id or "", "")
        row = {"name": element["name"], "job_id": job_id or "-", "slurm": said or "-",
               "attempts": record.get("attempts", 0), "detail": "", "state": "not started"}
        state, training = record.get("state"), element.get("kind", "train") == "train"
        if state == "done":
            metrics = record.get("metrics") or read_json(run_dir / "metrics.json") or {}
            row.update(state="done", detail=" ".join(f"{k}={metrics[k]:.{d}f}" for k, _, d in METRICS
                                                       if type(metrics.get(k)) in (int, float)))
        elif state == "failed" or said in ENDED:
            row.update(state="failed", detail=record.get("error", f"job ended without finishing ({said})"),
                       log_tail=_tail(record.get("error_log")) or _tail(record.get("log")))
        elif state == "running" and said not in WAITING:
            row.update(state="running", detail=_progress(run_dir) if training else "")
        elif said in WAITING:  # or running by its record while the queue has it waiting
            row.update(state="requeued" if record else "pending",
                       detail=_progress(run_dir) + " saved" if record and training else "")
        rows.append(row)
    return rows


def format_status(rows: list[dict]) -> str:
    """A fixed-width table and the state counts; failed elements followed by their last log lines."""
    table = [("element", "state", "job", "queue", "tries")] + \
        [(r["name"], r["state"], r["job_id"], r["slurm"], str(r["attempts"])) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(5)]
    details = ["detail"] + [(str(r["detail"]).splitlines() or [""])[0][:120] for r in rows]
    lines = ["  ".join(c.ljust(w) for c, w in zip(t, widths)) + "  " + d for t, d in zip(table, details)]
    lines.append(", ".join(f"{n} {s}" for s, n in Counter(r["state"] for r in rows).items()))
    for r in rows:
        lines += ["", f"--- {r['name']}: last log lines", r["log_tail"]] if r.get("log_tail") else []
    return "\n".join(lines)


def _metric_stats(runs: list[dict]) -> dict:
    """{metric: (mean, sample std; 0 for one run) over the runs that report it, or None}."""
    values = {key: [float(r[key]) for r in runs if type(r.get(key)) in (int, float)] for key, _, _ in METRICS}
    return {key: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) if v else None
            for key, v in values.items()}


def collect_rows(sweep_dir: str | Path) -> tuple[list[str], list[dict]]:
    """(the differing config keys, the rows) of a sweep's training elements; elements that differ only in
    ``run.seed`` form one row (``n`` runs with metrics, each mean over the runs with that metric)."""
    elements = [e for e in load_elements(sweep_dir)[1] if e.get("kind", "train") == "train"]
    configs = [_saved_config(Path(e["run_dir"])) or dict(e.get("overrides") or {}) for e in elements]  # not started
    keys = [k for k in dict.fromkeys(k for c in configs for k in c) if k != "run.out_dir"
            and len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]
    shown, seeded = [k for k in keys if k != SEED_KEY], SEED_KEY in keys
    groups: dict[str, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(json.dumps([config.get(k) for k in shown], default=str) if seeded else str(i), []).append(i)
    rows = []
    for members in groups.values():
        metrics = [m for m in (read_json(Path(elements[i]["run_dir"]) / "metrics.json") for i in members) if m]
        names = dict.fromkeys(re.sub(r"(^|_)seed-[^_]+", "", elements[i]["name"]).strip("_") for i in members)
        row = {"element": "/".join(n for n in names if n) or "all" if seeded else elements[members[0]]["name"],
               "n": len(metrics), "config": {k: configs[members[0]].get(k) for k in shown},
               "threshold_mm": metrics[0].get("threshold_mm") if metrics else None, **_metric_stats(metrics)}
        if seeded:
            row["seeds"] = [configs[i].get(SEED_KEY) for i in members]
        tests = dict.fromkeys(name for m in metrics for name in m.get("tests", {}))
        row["tests"] = {name: {"threshold_mm": runs[0].get("threshold_mm"), **_metric_stats(runs)} for name in tests
                        for runs in [[m["tests"][name] for m in metrics if name in m.get("tests", {})]]}
        rows.append(row)
    return shown, rows


def _table(keys: list[str], rows: list[dict]) -> tuple[list[tuple], list[tuple[list[str], list]]]:
    """The metric columns (test set or None, metric key, header, digits); per row its element and config
    cells as text and its (mean, std) or None per metric column."""
    columns = []
    for name in [None, *dict.fromkeys(n for r in rows for n in r["tests"])]:
        stats = rows if name is None else [r["tests"][name] for r in rows if name in r["tests"]]
        thresholds = {s["threshold_mm"] for s in stats} - {None}
        pck = f"PCK@{thresholds.pop():g}mm" if len(thresholds) == 1 else "PCK"
        columns += [(name, k, f"{name + ' ' if name else ''}{pck if k == 'pck' else h}", d) for k, h, d in METRICS
                    if k in CORE_METRICS or any(s.get(k) is not None for s in stats)]
    text = [[r["element"], *("" if v is None else json.dumps(v) if isinstance(v, (list, dict, bool)) else str(v)
                             for v in (r["config"][k] for k in keys))] for r in rows]
    values = [[r.get(k) if name is None else r["tests"].get(name, {}).get(k) for name, k, _, _ in columns]
              for r in rows]
    return columns, list(zip(text, values))


def to_markdown(keys: list[str], rows: list[dict]) -> str:
    """The Markdown table; metric cells read ``mean ± std`` when seeds were grouped."""
    grouped, (columns, cells) = any("seeds" in r for r in rows), _table(keys, rows)
    header = ["element", *keys, *(["seeds"] if grouped else []), *(h for _, _, h, _ in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, (text, values) in zip(rows, cells):
        text += [str(row["n"])] if grouped else []
        text += ["—" if v is None else f"{v[0]:.{d}f} ± {v[1]:.{d}f}" if grouped else f"{v[0]:.{d}f}"
                 for v, (*_, d) in zip(values, columns)]
        lines.append("| " + " | ".join(text) + " |")
    return "\n".join(lines) + "\n"


def to_csv(keys: list[str], rows: list[dict]) -> str:
    """CSV with full-precision ``<metric>_mean`` and ``_std`` columns (``<set>.<metric>_…`` for extra sets)."""
    buffer, (columns, cells) = io.StringIO(), _table(keys, rows)
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["element", *keys, "n", *(f"{name + '.' if name else ''}{k}_{s}" for name, k, _, _ in columns
                                              for s in ("mean", "std"))])
    for row, (text, values) in zip(rows, cells):
        writer.writerow([*text, row["n"], *("" if v is None else repr(v[j]) for v in values for j in (0, 1))])
    return buffer.getvalue()


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Bar plot of MPJPE, PCK and AUC per row (error bars: std over seeds), saved atomically."""
    from matplotlib.figure import Figure  # no pyplot: no backend, no global figure to close

    fig = Figure(figsize=(max(8, 3.6 * len(rows)), 3.6), layout="tight")
    for ax, (key, label, _) in zip(fig.subplots(1, 3), [m for m in METRICS if m[0] in CORE_METRICS]):
        ax.bar(range(len(rows)), [r[key][0] if r[key] else float("nan") for r in rows],
               yerr=[r[key][1] if r[key] else 0.0 for r in rows], capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(rows)), [r["element"] for r in rows], rotation=45, ha="right", fontsize=8)
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)


def collect(sweep_dir: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Write ``results.md``, ``results.csv`` and ``results.png`` of a sweep; returns their paths."""
    sweep_dir = Path(sweep_dir)
    out = Path(out) if out else sweep_dir
    keys, rows = collect_rows(sweep_dir)
    if not rows:
        raise ValueError(f"{sweep_dir}: no training elements to collect")
    paths = {"markdown": out / "results.md", "csv": out / "results.csv", "plot": out / "results.png"}
    atomic_write_text(paths["markdown"], to_markdown(keys, rows))
    atomic_write_text(paths["csv"], to_csv(keys, rows))
    plot(rows, paths["plot"], sweep_dir.name)
    return paths
