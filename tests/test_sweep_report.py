"""``depthpi sweep collect`` tables: PA-MPJPE, N-MPJPE and mean-pose MPJPE columns from
fabricated run directories, beside runs whose metrics.json predates them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from depthpi.sweep import report

OLD = {"mpjpe": 40.0, "pck": 0.8, "auc": 0.5, "threshold_mm": 50.0}


def fabricate(sweep: Path, name: str, seed: int, lr: float, metrics: dict, state: str | None = None) -> Path:
    run = sweep / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"optim": {"lr": lr}, "run": {"seed": seed}}))
    (run / "metrics.json").write_text(json.dumps(metrics))
    if state:
        (run / "sweep_element.json").write_text(json.dumps({"name": name, "run_dir": str(run), "state": state}))
    return run


def test_new_columns_beside_mpjpe_and_empty_cells_for_older_runs(tmp_path):
    sweep = tmp_path / "sw"
    fabricate(sweep, "a-old", 0, 1e-3, OLD)
    fabricate(sweep, "b-new", 0, 1e-4, {**OLD, "mpjpe": 30.0, "pa_mpjpe": 21.25, "n_mpjpe": 28.04,
                                        "mean_pose_mpjpe": 118.66})
    paths = report.collect(sweep)
    markdown = paths["markdown"].read_text().splitlines()
    assert markdown[0] == ("| element | optim.lr | MPJPE (mm) | PA-MPJPE (mm) | N-MPJPE (mm) | PCK@50mm | AUC "
                           "| mean-pose MPJPE (mm) |")
    assert markdown[2] == "| a-old | 0.001 | 40.0 | — | — | 0.800 | 0.500 | — |"
    assert markdown[3] == "| b-new | 0.0001 | 30.0 | 21.2 | 28.0 | 0.800 | 0.500 | 118.7 |"
    header, old, new = paths["csv"].read_text().splitlines()
    assert header == ("element,optim.lr,n,mpjpe_mean,mpjpe_std,pa_mpjpe_mean,pa_mpjpe_std,n_mpjpe_mean,n_mpjpe_std,"
                      "pck_mean,pck_std,auc_mean,auc_std,mean_pose_mpjpe_mean,mean_pose_mpjpe_std")
    assert old == "a-old,0.001,1,40.0,0.0,,,,,0.8,0.0,0.5,0.0,,"
    assert new == "b-new,0.0001,1,30.0,0.0,21.25,0.0,28.04,0.0,0.8,0.0,0.5,0.0,118.66,0.0"


def test_a_sweep_of_older_runs_keeps_its_table(tmp_path):
    sweep = tmp_path / "sw"
    fabricate(sweep, "a", 0, 1e-3, OLD)
    fabricate(sweep, "b", 0, 1e-4, {**OLD, "pa_mpjpe": None})  # null counts as absent
    keys, rows = report.collect_rows(sweep)
    assert report.to_markdown(keys, rows).splitlines()[0] == "| element | optim.lr | MPJPE (mm) | PCK@50mm | AUC |"
    assert report.to_csv(keys, rows).splitlines()[0] == "element,optim.lr,n,mpjpe_mean,mpjpe_std,pck_mean,pck_std,auc_mean,auc_std"


def test_seed_mean_of_a_new_metric_is_over_the_seeds_that_report_it(tmp_path):
    sweep = tmp_path / "sw"
    fabricate(sweep, "x_seed-0", 0, 1e-3, {**OLD, "pa_mpjpe": 20.0, "mean_pose_mpjpe": 120.0})
    fabricate(sweep, "x_seed-1", 1, 1e-3, {**OLD, "pa_mpjpe": 24.0, "mean_pose_mpjpe": 120.0})
    fabricate(sweep, "x_seed-2", 2, 1e-3, {**OLD, "mpjpe": 46.0})  # an older run of the same row
    keys, rows = report.collect_rows(sweep)
    (row,) = rows
    assert row["n"] == 3 and row["mpjpe"] == pytest.approx((42.0, 3.4641016))
    assert row["pa_mpjpe"] == pytest.approx((22.0, 2.8284271)) and row["n_mpjpe"] is None
    assert row["mean_pose_mpjpe"] == (120.0, 0.0)
    assert report.to_markdown(keys, rows).splitlines()[2] == (
        "| x | 3 | 42.0 ± 3.5 | 22.0 ± 2.8 | 0.800 ± 0.000 | 0.500 ± 0.000 | 120.0 ± 0.0 |")


def test_extra_test_sets_get_the_new_columns_they_report(tmp_path):
    sweep = tmp_path / "sw"
    h36m = {"mpjpe": 110.0, "pa_mpjpe": 70.0, "pck": 0.7, "auc": 0.4, "threshold_mm": 150.0, "count": 17}
    fabricate(sweep, "a", 0, 1e-3, {**OLD, "tests": {"h36m": h36m, "pku": {**OLD, "count": 17}}})
    fabricate(sweep, "b", 0, 1e-4, {**OLD, "tests": {"h36m": {k: v for k, v in h36m.items() if k != "pa_mpjpe"}}})
    keys, rows = report.collect_rows(sweep)
    markdown = report.to_markdown(keys, rows).splitlines()
    assert markdown[0].endswith("| h36m MPJPE (mm) | h36m PA-MPJPE (mm) | h36m PCK@150mm | h36m AUC "
                                "| pku MPJPE (mm) | pku PCK@50mm | pku AUC |")
    assert markdown[2].endswith("| 110.0 | 70.0 | 0.700 | 0.400 | 40.0 | 0.800 | 0.500 |")
    assert markdown[3].endswith("| 110.0 | — | 0.700 | 0.400 | — | — | — |")
    assert "h36m.pa_mpjpe_mean,h36m.pa_mpjpe_std,h36m.pck_mean" in report.to_csv(keys, rows)


def test_status_of_a_done_run_shows_what_its_metrics_json_has(tmp_path):
    sweep = tmp_path / "sw"
    fabricate(sweep, "new", 0, 1e-3, {**OLD, "pa_mpjpe": 21.25}, state="done")
    fabricate(sweep, "old", 0, 1e-4, {**OLD, "n_mpjpe": None}, state="done")
    rows = {r["name"]: r for r in report.status(sweep)}
    assert rows["new"]["detail"] == "mpjpe=40.0 pa_mpjpe=21.2 pck=0.800 auc=0.500"
    assert rows["old"]["detail"] == "mpjpe=40.0 pck=0.800 auc=0.500"
