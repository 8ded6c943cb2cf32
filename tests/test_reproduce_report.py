"""bench/reproduce_report.py: seed statistics, the paired test and the kept findings."""
import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "reproduce_report.py"
_spec = importlib.util.spec_from_file_location("reproduce_report", _PATH)
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def _write_runs(root: Path, mpjpe: dict[str, list[float]]) -> None:
    for model, values in mpjpe.items():
        for seed, value in enumerate(values):
            out = root / f"seed{seed}" / model / "eval"
            out.mkdir(parents=True)
            (out / "metrics.json").write_text(json.dumps({"mpjpe": value, "pck": 0.5, "auc": 0.3, "threshold_mm": 50.0}))


def test_paired_differences_are_taken_seed_by_seed(tmp_path):
    # 8.1 is 11 ± 1 mm below 1.4 seed by seed, although the seeds' spread (40 mm) dwarfs it.
    _write_runs(tmp_path, {"1.4": [200.0, 240.0, 280.0], "8.1": [190.0, 228.0, 269.0], "9.1": [199.0, 243.0, 275.0]})
    metrics = report.load_metrics(tmp_path)
    assert sorted(metrics) == ["1.4", "8.1", "9.1"] and sorted(metrics["8.1"]) == [0, 1, 2]
    mean, std, n = report.paired(metrics, "8.1", "1.4")
    assert (mean, std, n) == (pytest.approx(-11.0), pytest.approx(1.0), 3)
    assert report.verdict((mean, std, n)).startswith("lower, beyond seed noise")
    # 9.1 − 1.4 = −1, +3, −5: t = 1/(4/√3) is far below t(2) = 4.30.
    assert report.verdict(report.paired(metrics, "9.1", "1.4")).startswith("within seed noise")
    assert report.verdict(None) == "not run" and report.verdict((-5.0, 0.0, 1)) == "one seed: no test"
    row = next(line for line in report.table(metrics).splitlines() if line.startswith("| 1.4 |"))
    assert "240.0 ± 40.0" in row and "200.0, 240.0, 280.0" in row and "PCK@50mm" in report.table(metrics)


def test_regenerating_keeps_the_hand_written_findings():
    parts = {"table": "T\n", "paired": "P\n"}
    first = report.render(parts, "setup", 60, "## Findings\n\nthe student wins\n")
    kept = first.split(report.MARK, 1)[1].lstrip("\n")
    second = report.render({"table": "T2\n", "paired": "P2\n"}, "setup", 61, kept)
    assert second.endswith("## Findings\n\nthe student wins\n") and "T2" in second and "T\n" not in second


def test_power_of_a_paired_test_over_seeds():
    # the textbook case: 5 seeds, std 2 mm → (2.78 + 0.941) · 2 / √5 = 3.33 mm
    assert report.detectable_effect(2.0, 5) == pytest.approx(3.328, abs=1e-3)
    assert report.seeds_needed(2.0, 3.33) == 5 and report.seeds_needed(2.0, 3.32) == 6
    assert report.seeds_needed(2.0, 1.0) > 30 and report.seeds_needed(50.0, 0.01, most=100) is None


def test_the_table_divides_by_the_mean_pose_and_the_power_table_uses_the_paired_spread(tmp_path):
    _write_runs(tmp_path, {"1.4": [200.0, 240.0, 280.0], "8.1": [190.0, 228.0, 269.0]})
    for seed in range(3):
        for model in ("1.4", "8.1"):
            path = tmp_path / f"seed{seed}" / model / "eval" / "metrics.json"
            record = json.loads(path.read_text())
            path.write_text(json.dumps({**record, "mean_pose_mpjpe": 400.0}))
    metrics = report.load_metrics(tmp_path)
    row = next(line for line in report.table(metrics).splitlines() if line.startswith("| 1.4 |"))
    assert "| 0.60 |" in row and "400.0 mm" in report.mean_pose_line(metrics)
    power = report.power_table(metrics)
    assert "| 8.1 − 1.4 | 3 | 1.0 |" in power and "7.2 mm" in power  # 3 % of 240 mm


def test_low_label_rows_have_their_own_reference_pairs_and_phase_times(tmp_path):
    _write_runs(tmp_path, {"1.4": [140.0, 142.0], "low-1.4": [200.0, 204.0], "low-pose": [170.0, 171.0]})
    for model, reference in (("1.4", 280.0), ("low-1.4", 300.0), ("low-pose", 300.0)):
        for seed in range(2):
            path = tmp_path / f"seed{seed}" / model / "eval" / "metrics.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "mean_pose_mpjpe": reference}))
    (tmp_path / "timings.tsv").write_text("lowlabel\t0\tlow-1.4\t120\nlowlabel\t1\tlow-1.4\t180\nrequired\t0\t1.4\t60\n")
    metrics = report.load_metrics(tmp_path)
    assert "280.0 mm" in report.mean_pose_line(metrics)  # the thesis rows' reference, not the low-label one
    assert "300.0 mm" in report.mean_pose_line(metrics, report.LOW_LABEL, "labelled-1/8")
    paired = report.paired_table(metrics, report.LOW_PAIRS)
    assert "| low-pose − low-1.4 | -31.5 ± 2.1 | 2 |" in paired and "| low-1.4 − 1.4 | +61.0 ± 1.4 | 2 |" in paired
    timings = report.phase_minutes(tmp_path)
    assert "| lowlabel | 5 | low-1.4 2 |" in timings and "| required | 1 | 1.4 1 |" in timings
