"""The limited-data study's bookkeeping (benchmarks/limited_data.py): finished runs are archived with the results, the
report is rebuilt from the archive alone (a fresh clone re-runs nothing), and the paired statistics are right."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
from scipy import stats

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def study(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("limited_data_under_test", REPO / "benchmarks" / "limited_data.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "REPO", tmp_path)  # run folders go to tmp_path/runs/study/...
    return module


MIOU = {"baseline": [0.30, 0.34, 0.32], "remix": [0.33, 0.36, 0.37]}


def _result(method: str, seed: int, iteration: int, miou: float) -> dict:
    return {"format": "i2i-eval", "version": 1, "task": "cityscapes", "method": method, "run": f"r{seed}",
            "seed": seed, "iteration": iteration, "backbone": "proxy", "calibrated": False, "segmenter": "proxy",
            "segmenter_calibrated": False, "metrics": {"miou": miou, "accuracy": 0.8, "fid": 5.0}}


def _finish_run(job, miou: float) -> None:
    """What run_job leaves behind: a scored curve and the final result file."""
    for iteration, value in ((100, miou - 0.1), (200, miou)):
        curve = job.run_dir / "eval" / "curve" / f"iter_{iteration:06d}.json"
        curve.parent.mkdir(parents=True, exist_ok=True)
        curve.write_text(json.dumps(_result(job.method, job.seed, iteration, value)))
    job.final.write_text(json.dumps(_result(job.method, job.seed, 200, miou)))


def test_report_is_rebuilt_from_the_archive_and_finished_runs_are_skipped(study, tmp_path):
    entry = study.ENTRIES["cityscapes"]
    out = tmp_path / "results"
    jobs = [study.Job(entry, "frac0.1", method, seed, out) for method in MIOU for seed in entry.seeds]
    for job in jobs:
        _finish_run(job, MIOU[job.method][job.seed])

    first = study.report(entry, jobs, out)
    assert all(len(job.archived_curve()) == 2 for job in jobs)
    shutil.rmtree(tmp_path / "runs")  # a fresh clone: only the committed results folder is left
    second = study.report(entry, jobs, out)
    assert second == first
    assert (out / "cityscapes_table.md").read_text().count("remix") >= 1

    cell = second["settings"]["frac0.1"]["remix"]["mIoU†"]
    diffs = [m - b for m, b in zip(MIOU["remix"], MIOU["baseline"])]
    assert cell["vs_baseline"]["mean_diff"] == pytest.approx(sum(diffs) / 3)
    interval = stats.t.interval(0.95, 2, loc=sum(diffs) / 3, scale=stats.sem(diffs))
    assert cell["vs_baseline"]["ci95"] == pytest.approx(list(interval))
    assert cell["vs_baseline"]["welch_p"] == pytest.approx(
        stats.ttest_ind(MIOU["remix"], MIOU["baseline"], equal_var=False).pvalue)
    assert second["settings"]["frac0.1"]["baseline"]["mIoU†"]["mean"] == pytest.approx(0.32)

    # an archived run is not trained again, even though its run folder is gone
    assert study.run_job(jobs[0], threads=1).startswith("skip")
    assert not jobs[0].run_dir.exists()


def test_an_unfinished_run_is_not_archived(study, tmp_path):
    entry = study.ENTRIES["cityscapes"]
    job = study.Job(entry, "frac0.1", "baseline", 0, tmp_path / "results")
    curve = job.run_dir / "eval" / "curve" / "iter_000100.json"
    curve.parent.mkdir(parents=True)
    curve.write_text(json.dumps(_result("baseline", 0, 100, 0.2)))  # scored checkpoint, but no final result yet
    assert not study.archive_run(job)
    assert job.archived_curve() == []
    assert study.report(entry, [job], tmp_path / "results") == {}


def test_the_bf16_method_refuses_to_run_where_amp_would_train_in_float32(study, monkeypatch, tmp_path):
    monkeypatch.setattr(study, "_bf16_autocast_available", lambda: False)
    job = study.Job(study.ENTRIES["afhq"], "frac0.1", "amp (bf16)", 0, tmp_path / "results")
    status = study._safe(study.run_job, job, 1)
    assert status.startswith("FAILED") and "float32" in status
    assert not job.run_dir.exists()  # nothing was trained
