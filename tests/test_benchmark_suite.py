"""benchmarks/run_all.py: a benchmark of the suite runs in its own process, writes its JSON, and the summary reports
its headline figure."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_ddp_scaling_benchmark_runs_and_is_summarised(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--only", "ddp_scaling",
                           "--ddp-iters", "3", "--results", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    report = json.loads((tmp_path / "ddp_scaling.json").read_text())
    assert set(report["runs"]) == {"1 process(es)", "2 process(es)"}
    assert all(row["sec_per_iter"] > 0 for row in report["runs"].values())
    assert f"speed-up {report['speedup_2_ranks']:.2f}x" in (tmp_path / "summary.md").read_text()


def test_an_unknown_benchmark_name_is_refused_naming_the_choices():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--only", "nope"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown benchmark(s) ['nope']" in done.stderr and "ddp_scaling" in done.stderr
