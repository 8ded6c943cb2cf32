"""docs/results.md of bench/reproduce.sh: the Table 6.8-style table, curves and Fig. 6.3.

Reads ``<runs>/seed<S>/<model>/eval/metrics.json`` (``depthpi eval`` of each model's last
weights on the test split), the runs' TensorBoard events (per-epoch test MPJPE), and, for
the feature-difference figure, the seed-0 teacher 3.2, RGB baseline 1.4 and student 8.1.

    python bench/reproduce_report.py --runs runs/repro --shards shards/repro/test --out docs/results.md
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from depthpi.data.batches import Batch, build_eval_loader  # noqa: E402
from depthpi.models.posenet import tap_features  # noqa: E402
from depthpi.predict import Predictor  # noqa: E402

# (id, what it is) in the order of the table; the first three start from scratch.
MODELS = [
    ("1.2", "RGB baseline, colour + geometry augmentation"),
    ("2.1", "depth baseline"),
    ("3.2", "RGB-D teacher, depth branch from 2.1"),
    ("1.4", "RGB baseline continued from 1.2 (the students' control)"),
    ("8.1", "student of 3.2, end of layer3 (ResNet-50's block 13) after ReLU, sigmoid, α 0.1→0.2"),
    ("8.1-precomputed", "8.1 reading stored teacher features (4 views)"),
    ("8.3", "student, attention map, before ReLU, α 0.25→0.5"),
    ("8.2", "8.1 + unlabelled RGB-D pairs (⅓ of each batch)"),
    ("9.1", "8.1 with the RGB baseline 1.4 as teacher"),
]
# Why the student does or does not beat 1.4 (bench/reproduce.sh, phase 2): as 8.1.
ABLATIONS = [
    ("abl-alpha10", "8.1-precomputed with α ×10 (1 → 2)"),
    ("abl-alpha100", "8.1-precomputed with α ×100 (10 → 20)"),
    ("abl-alpha100-layer3.0", "8.1 (online) with α ×100 on layer3.0, the first layer3 block, instead of the end of layer3"),
]
# The low-label positive control (ours, not thesis rows): 1/8 of the labels, the rest as pairs.
LOW_LABEL = [
    ("low-1.2", "RGB from scratch on the labelled 1/8 (1,200 samples)"),
    ("low-1.4", "low-1.2 continued on the 1/8 (the low-label students' control)"),
    ("low-8.2", "feature distillation of 3.2 (8.2's mechanism): the 1/8 + the other 7/8 as unlabelled pairs"),
    ("low-8.2-precomputed", "low-8.2 reading stored teacher features (4 views) of both parts"),
    ("low-pose", "output distillation: 3.2's predicted 3D pose as the pairs' target (β 1, α 0)"),
]
LOW_PAIRS = [("low-8.2", "low-1.4"), ("low-8.2-precomputed", "low-1.4"), ("low-pose", "low-1.4"),
             ("low-8.2-precomputed", "low-8.2"), ("low-pose", "low-8.2"), ("low-1.4", "1.4")]
FROM_SCRATCH = {"1.2", "2.1", "3.2", "low-1.2"}


def seed_dirs(runs: Path) -> list[Path]:
    return sorted((p for p in runs.glob("seed*") if p.is_dir()), key=lambda p: int(p.name[4:]))


def load_metrics(runs: Path) -> dict[str, dict[int, dict]]:
    """{model: {seed: metrics.json}} for every evaluated model."""
    table: dict[str, dict[int, dict]] = {}
    for seed_dir in seed_dirs(runs):
        for model, _ in MODELS + ABLATIONS + LOW_LABEL:
            path = seed_dir / model / "eval" / "metrics.json"
            if path.is_file():
                table.setdefault(model, {})[int(seed_dir.name[4:])] = json.loads(path.read_text())
    return table


def eval_curve(run_dir: Path) -> list[float]:
    """Per-epoch test MPJPE (mm) logged by the engine, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    if "eval/mpjpe" not in acc.Tags()["scalars"]:
        return []
    by_step = {e.step: e.value for e in acc.Scalars("eval/mpjpe")}  # a resumed run may repeat a step
    return [by_step[s] for s in sorted(by_step)]


def cell(values: list[float], digits: int) -> str:
    """Mean ± sample std (0 for one value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


def table(metrics: dict[str, dict[int, dict]], rows: list[tuple[str, str]] = MODELS) -> str:
    """One row per model: MPJPE mean ± std over seeds, per seed, its ratio to the mean-pose
    reference (the training split's mean pose scored on the test split), PCK and AUC."""
    threshold = next(iter(next(iter(metrics.values())).values())).get("threshold_mm", 150)
    lines = [f"| model | what | seeds | MPJPE (mm) | per seed | × mean pose | PCK@{threshold:g}mm | AUC |",
             "|---|---|---|---|---|---|---|---|"]
    for model, what in rows:
        runs = metrics.get(model)
        if not runs:
            lines.append(f"| {model} | {what} | 0 | — | — | — | — | — |")
            continue
        seeds = sorted(runs)
        mpjpe = [runs[s]["mpjpe"] for s in seeds]
        ratios = [runs[s]["mpjpe"] / runs[s]["mean_pose_mpjpe"] for s in seeds if runs[s].get("mean_pose_mpjpe")]
        ratio = f"{np.mean(ratios):.2f}" if ratios else "—"
        lines.append(f"| {model} | {what} | {len(seeds)} | {cell(mpjpe, 1)} | "
                     f"{', '.join(f'{v:.1f}' for v in mpjpe)} | {ratio} | {cell([runs[s]['pck'] for s in seeds], 3)} | "
                     f"{cell([runs[s]['auc'] for s in seeds], 3)} |")
    return "\n".join(lines) + "\n"


def mean_pose_line(metrics: dict[str, dict[int, dict]], rows: list[tuple[str, str]] = MODELS,
                   training: str = "training") -> str:
    """The reference the models of ``rows`` are judged against, from their evaluations."""
    values = [m["mean_pose_mpjpe"] for model, _ in rows for m in metrics.get(model, {}).values()
              if m.get("mean_pose_mpjpe")]
    if not values:
        return "The evaluations recorded no mean-pose reference."
    return (f"The mean {training} pose, predicted for every test image, scores **{np.mean(values):.1f} mm** "
            f"(the mean-pose reference; the × mean pose column divides each model's MPJPE by it).")


def phase_minutes(runs: Path) -> str:
    """Time of each phase from ``timings.tsv`` (bench/reproduce.sh: phase, seed, model, seconds)."""
    path = runs / "timings.tsv"
    if not path.is_file():
        return ""
    phases: dict[str, dict[str, list[float]]] = {}
    for line in path.read_text().splitlines():
        phase, _, model, seconds = line.split("\t")
        phases.setdefault(phase, {}).setdefault(model, []).append(float(seconds) / 60)
    lines = ["| phase | minutes (sum over seeds) | per model, mean minutes a seed |", "|---|---|---|"]
    for phase, models in phases.items():
        total = sum(sum(v) for v in models.values())
        each = ", ".join(f"{m} {np.mean(v):.0f}" for m, v in models.items())
        lines.append(f"| {phase} | {total:.0f} | {each} |")
    return "\n".join(lines) + "\n"


# Student's t by degrees of freedom (n − 1 seeds): two-sided 95 % critical values, and the
# one-sided 80 % quantiles that a power of 0.8 adds; beyond the tables, the normal's.
T_95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23, 12: 2.18,
        15: 2.13, 20: 2.09, 30: 2.04}
T_80 = {1: 1.376, 2: 1.061, 3: 0.978, 4: 0.941, 5: 0.920, 6: 0.906, 7: 0.896, 8: 0.889, 9: 0.883, 10: 0.879,
        12: 0.873, 15: 0.866, 20: 0.860, 30: 0.854}


def _t(table: dict[int, float], df: int, limit: float) -> float:
    """The tabulated quantile for ``df``, the next larger df's when it is not listed (conservative)."""
    larger = [k for k in table if k >= df]
    return table[min(larger)] if larger else limit


def detectable_effect(std: float, seeds: int) -> float:
    """Smallest true paired difference (mm) a two-sided 95 % paired t-test over ``seeds`` finds
    with 80 % power, for a seed-to-seed standard deviation ``std`` of the differences."""
    df = seeds - 1
    return (_t(T_95, df, 1.96) + _t(T_80, df, 0.842)) * std / seeds ** 0.5


def seeds_needed(std: float, effect: float, most: int = 1000) -> int | None:
    """Seeds a paired test needs to find ``effect`` mm with 80 % power at 95 % (None: over ``most``)."""
    for seeds in range(2, most + 1):
        if detectable_effect(std, seeds) <= effect:
            return seeds
    return None


def paired(metrics: dict[str, dict[int, dict]], model: str, control: str) -> tuple[float, float, int] | None:
    """Mean ± std over seeds of MPJPE(model) − MPJPE(control), seed by seed (same 1.2 start)."""
    a, b = metrics.get(model, {}), metrics.get(control, {})
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s]["mpjpe"] - b[s]["mpjpe"] for s in seeds]
    return statistics.mean(diffs), statistics.stdev(diffs) if len(diffs) > 1 else 0.0, len(diffs)


def verdict(result: tuple[float, float, int] | None) -> str:
    """Paired t-test over seeds at 95 %: does the difference exceed seed noise?"""
    if result is None:
        return "not run"
    mean, std, n = result
    if n < 2:
        return "one seed: no test"
    bound = T_95.get(n - 1, 1.96) * std / n ** 0.5
    return (f"{'lower' if mean < 0 else 'higher'}, beyond seed noise (95 % interval ±{bound:.1f} mm)" if abs(mean) > bound
            else f"within seed noise (95 % interval ±{bound:.1f} mm)")


PAIRS = [("3.2", "1.2"), ("3.2", "2.1"), ("2.1", "1.2"), ("8.1", "1.4"), ("8.1-precomputed", "1.4"), ("8.3", "1.4"),
         ("8.2", "1.4"), ("9.1", "1.4"), ("8.1-precomputed", "8.1"), ("9.1", "8.1"), ("8.2", "8.1")]


def paired_table(metrics: dict[str, dict[int, dict]], pairs: list[tuple[str, str]] = PAIRS) -> str:
    lines = ["| comparison | Δ MPJPE (mm), mean ± std over seeds | seeds | paired t-test, 95 % |", "|---|---|---|---|"]
    for model, control in pairs:
        result = paired(metrics, model, control)
        if result:
            lines.append(f"| {model} − {control} | {result[0]:+.1f} ± {result[1]:.1f} | {result[2]} | {verdict(result)} |")
    return "\n".join(lines) + "\n"


STUDENT_PAIRS = [("8.1", "1.4"), ("8.1-precomputed", "1.4"), ("9.1", "1.4")]


def power_table(metrics: dict[str, dict[int, dict]], relative_effect: float = 0.03) -> str:
    """From the measured seed-to-seed spread of each student-vs-control difference: the smallest
    effect these seeds can find, and how many seeds the thesis' effect size needs."""
    lines = [f"| comparison | seeds | std of the paired difference (mm) | smallest effect these seeds find "
             f"(80 % power, 95 %) | {relative_effect:.0%} of the control's MPJPE | seeds that needs |",
             "|---|---|---|---|---|---|"]
    for model, control in STUDENT_PAIRS:
        result = paired(metrics, model, control)
        if result is None or result[2] < 2:
            continue
        _, std, n = result
        effect = relative_effect * float(np.mean([m["mpjpe"] for m in metrics[control].values()]))
        needed = seeds_needed(std, effect)
        lines.append(f"| {model} − {control} | {n} | {std:.1f} | {detectable_effect(std, n):.1f} mm | {effect:.1f} mm | "
                     f"{needed if needed is not None else 'over 1000'} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def savefig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def plot_curves(runs: Path, path: Path) -> None:
    """Test MPJPE per epoch, mean over seeds (band: min–max); left from scratch, right continued from 1.2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for model, _ in MODELS + LOW_LABEL:
        curves = [c for c in (eval_curve(d / model) for d in seed_dirs(runs) if (d / model).is_dir()) if c]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        stack = np.array([c[:length] for c in curves])
        epochs = np.arange(1, length + 1)
        ax = axes[0 if model in FROM_SCRATCH else 2 if model.startswith("low-") else 1]
        (line,) = ax.plot(epochs, stack.mean(0), marker=".", label=f"{model} (n={len(curves)})")
        ax.fill_between(epochs, stack.min(0), stack.max(0), color=line.get_color(), alpha=0.15)
    for ax, title in zip(axes, ("from scratch", "continued from 1.2", "low-label, continued from low-1.2")):
        ax.set(title=title, xlabel="epoch", ylabel="test MPJPE (mm)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    savefig(fig, path)


def _features(predictor: Predictor, batch: Batch, sigmoid: bool, tap: str) -> torch.Tensor:
    inputs = predictor.inputs(batch)
    with torch.inference_mode():
        feat = tap_features(predictor.model, predictor.cfg.model, inputs.rgb, inputs.depth, tap).float()
    return feat.sigmoid() if sigmoid else feat


def feature_differences(seed_dir: Path, shards: str, count: int = 4, batches: int = 4):
    """Fig. 6.3 inputs: test crops and Σ_c |F_teacher − F| of baseline 1.4, student 8.1 and,
    when the ablations ran, the α ×100 student.

    Features are compared where 8.1's loss compares them (after its sigmoid, if it has one).

    Returns:
        (rgb (count, N, N, 3) uint8, depth (count, N, N) mm, diffs {name: (count, h, w)},
        means {name: mean over the test batches of Σ_c |ΔF| per location}).
    """
    teacher = Predictor.from_checkpoint(seed_dir / "3.2" / "export" / "last.pt")
    others = {name: Predictor.from_checkpoint(seed_dir / model / "export" / "last.pt")
              for name, model in (("1.4", "1.4"), ("8.1", "8.1"), ("8.1 α×100", "abl-alpha100"))
              if (seed_dir / model / "export" / "last.pt").is_file()}
    sigmoid, tap = others["8.1"].cfg.distill.sigmoid, others["8.1"].cfg.distill.tap
    pipeline = replace(teacher.rgb_pipeline(), depth=True)
    loader = build_eval_loader(teacher.cfg.data, pipeline, shards, rank=0, world_size=1, num_workers=0)
    sums = {name: 0.0 for name in others}
    locations, first = 0, None
    for i, batch in enumerate(loader):
        if i == batches:
            break
        device_batch = Batch.from_collated(batch)
        target = _features(teacher, device_batch, sigmoid, tap)
        diffs = {name: (target - _features(p, device_batch, sigmoid, tap)).abs().sum(1) for name, p in others.items()}
        for name, diff in diffs.items():
            sums[name] += float(diff.sum())
        locations += diffs[next(iter(diffs))].numel()
        if first is None:
            first = (batch["rgb"][:count].numpy(), batch["depth"][:count].numpy(),
                     {name: d[:count].numpy() for name, d in diffs.items()})
    return (*first, {name: s / locations for name, s in sums.items()})


def plot_feature_differences(rgb, depth, diffs: dict, path: Path) -> None:
    """One row per crop: RGB, depth, then Σ_c |ΔF| per model on one colour scale per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(diffs)
    fig, axes = plt.subplots(len(rgb), 2 + len(names), figsize=(2.2 * (2 + len(names)), 2.2 * len(rgb)),
                             squeeze=False)
    size = rgb.shape[1]
    for row in range(len(rgb)):
        vmax = max(float(diffs[n][row].max()) for n in names)
        axes[row, 0].imshow(rgb[row])
        axes[row, 1].imshow(np.where(depth[row] > 0, depth[row], np.nan), cmap="viridis")
        for col, name in enumerate(names, start=2):
            image = axes[row, col].imshow(diffs[name][row], cmap="inferno", vmin=0, vmax=vmax,
                                          extent=(0, size, size, 0))
        fig.colorbar(image, ax=axes[row, 2:].tolist(), fraction=0.046)
        for ax, title in zip(axes[row], ["RGB crop", "depth (mm)", *(f"|3.2 − {n}|" for n in names)]):
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
    savefig(fig, path)


MARK = "<!-- Findings below are written by hand; bench/reproduce_report.py keeps everything after this line. -->"


def settings(runs: Path, shards: str) -> str:
    """One paragraph of what was run, read from the runs' saved configs and the manifests."""
    import yaml

    seeds = seed_dirs(runs)
    first = yaml.safe_load((seeds[0] / "1.2" / "config.yaml").read_text())
    later = yaml.safe_load((seeds[0] / "1.4" / "config.yaml").read_text()) if (seeds[0] / "1.4").is_dir() else first
    counts = {}
    for split in ("train", "test", "unlabeled"):
        manifest = Path(shards).parent / split / "manifest.json"
        if manifest.is_file():
            counts[split] = sum(s["count"] for s in json.loads(manifest.read_text())["shards"])
    model, data = first["model"], first["data"]
    arch = {"resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50"}.get(model["arch"], model["arch"])
    return (f"{arch} at width {model['width']:g} ({model['depth_bins']} depth bins), {data['pipeline']['input_size']}×"
            f"{data['pipeline']['input_size']} crops, batch {data['batch_size']}, Adam at {first['optim']['lr']:g}, "
            f"from scratch; {first['optim']['epochs']} epochs for 1.2, 2.1 and 3.2, then "
            f"{later['optim']['epochs']} more for 1.4 and every student. Synthetic benchmark: "
            + ", ".join(f"{n} {k}" for k, n in counts.items())
            + f" samples; seeds {', '.join(p.name[4:] for p in seeds)}. Every model is evaluated with its last "
            "weights (none is selected on the test split).")


def render(parts: dict, setup: str, minutes: int | None, kept: str) -> str:
    took = f" in {minutes} min" if minutes is not None else ""
    power = (f"How many seeds the question needs: from the measured spread of each paired difference, "
             f"the smallest student-vs-control effect these seeds can detect, and the seeds needed for the "
             f"thesis' effect size (about 3 % of MPJPE):\n\n{parts['power']}\n") if parts.get("power") else ""
    ablations = (f"## Why: distillation weight and tap (ablations, each continued from 1.2 like 8.1)\n\n"
                 f"{parts['ablations']}\n") if parts.get("ablations") else ""
    low = (f"## Low-label positive control (our rows, not the thesis')\n\n"
           f"The students' labelled split cut to its first 1/8 (`depthpi shards subset`); the other 7/8 of the "
           f"training images serve as unlabelled RGB-D pairs (a third of each student batch; their labels are "
           f"withheld). Teacher 3.2 is the seed's own, trained on every label. The control low-1.4 sees the "
           f"students' labelled batches step for step.\n\n{parts['low_reference']}\n\n{parts['low']}\n"
           f"Seed-paired differences (every low-label model of a seed starts from that seed's low-1.2):\n\n"
           f"{parts['low_paired']}\n") if parts.get("low") else ""
    timings = (f"## Time of each phase\n\nWall time of every model's training + evaluation and of each "
               f"precompute, from `timings.tsv` (a resumed model counts the part run after the restart only).\n\n"
               f"{parts['timings']}\n") if parts.get("timings") else ""
    features = parts.get("features")
    feature_line = ("Mean Σ_c |F_3.2 − F| per location of the distilled tap over the first 4 test batches (seed 0): "
                    + ", ".join(f"{k} **{v:.2f}**" for k, v in features.items()) + ".\n\n"
                    "![feature differences](results/feature_difference.png)\n") if features else ""
    return f"""# The thesis' core study on the synthetic RGB-D set

Produced by `bash bench/reproduce.sh`{took} (figures by `bench/reproduce_report.py`). {setup}

## Test split (unseen subjects and cameras), Table 6.8 style

{parts.get("reference", "")}

{parts["table"]}
Seed-paired differences (every continued model of a seed starts from that seed's 1.2):

{parts["paired"]}
{power}{ablations}{low}## Training curves

Test MPJPE after each epoch, mean over seeds, band from the best to the worst seed.

![curves](results/curves.png)

## Feature differences (Fig. 6.3)

Per location of the distilled tap (the end of layer3), the summed absolute difference between the teacher's features and
those of the RGB baseline 1.4, of the student 8.1 and of the α ×100 student (ablation), in
the space 8.1's loss compares them; one colour scale per row.

{feature_line}
{timings}{MARK}
{kept}"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/repro")
    parser.add_argument("--shards", default="shards/repro/test")
    parser.add_argument("--out", default="docs/results.md")
    parser.add_argument("--minutes", type=int, default=None, help="wall time of the reproduction, for the record")
    args = parser.parse_args(argv)
    runs, out = Path(args.runs), Path(args.out)
    figures = out.parent / "results"
    metrics = load_metrics(runs)
    if not metrics:
        sys.exit(f"{runs}: no seed*/<model>/eval/metrics.json found; run bench/reproduce.sh first")
    plot_curves(runs, figures / "curves.png")
    parts = {"table": table(metrics), "paired": paired_table(metrics), "power": power_table(metrics),
             "reference": mean_pose_line(metrics), "timings": phase_minutes(runs)}
    if any(name in metrics for name, _ in LOW_LABEL):
        parts["low"] = table(metrics, LOW_LABEL)
        parts["low_paired"] = paired_table(metrics, LOW_PAIRS)
        parts["low_reference"] = mean_pose_line(metrics, LOW_LABEL, "labelled-1/8")
    if any(name in metrics for name, _ in ABLATIONS):
        parts["ablations"] = table(metrics, ABLATIONS) + "\n" + paired_table(
            metrics, [(name, control) for name, _ in ABLATIONS for control in ("1.4", "8.1-precomputed")])
    seed0 = seed_dirs(runs)[0]
    if all((seed0 / m / "export" / "last.pt").is_file() for m in ("3.2", "1.4", "8.1")):
        rgb, depth, diffs, means = feature_differences(seed0, args.shards)
        plot_feature_differences(rgb, depth, diffs, figures / "feature_difference.png")
        parts["features"] = means
    (figures / "results.json").write_text(json.dumps({"metrics": metrics, **parts}, indent=1, default=float))
    old = out.read_text() if out.is_file() else ""
    kept = old.split(MARK, 1)[1].lstrip("\n") if MARK in old else "## Findings\n\n(to be written)\n"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render(parts, settings(runs, args.shards), args.minutes, kept))
    os.replace(tmp, out)
    print(parts["table"])
    print(parts["paired"])
    print(f"wrote {out} and {figures}/")


if __name__ == "__main__":
    main()
