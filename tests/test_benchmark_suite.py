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


def test_the_summary_says_which_cpu_and_whether_it_had_bf16_instructions(tmp_path, monkeypatch):
    """bf16 autocast and memory-format ratios hinge on the CPU: a row says what it was measured on."""
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks import run_all
    from benchmarks.machine import describe

    machine = describe("cpu")
    assert machine["cpu"] and machine["threads"] >= 1 and set(machine["cpu_flags"]) <= {"avx2", "avx512f",
                                                                                      "avx512_bf16", "amx_bf16"}
    with_bf16 = {**machine, "cpu": "Some CPU", "cpu_flags": ["avx2", "avx512f", "avx512_bf16"]}
    without = {**machine, "cpu": "Other CPU", "cpu_flags": ["avx2"]}
    for task, where in (("afhq", with_bf16), ("cityscapes", without)):
        (tmp_path / f"iteration_time_{task}.json").write_text(json.dumps({
            "preset": f"configs/{task}_demo.yaml", "machine": where, "memory": {"peak_rss_mib": 1.0},
            "variants": {"baseline": {"median_sec_per_iter": 1.0, "ratio_to_baseline": 1.0},
                         "amp (bf16)": {"median_sec_per_iter": 0.8, "ratio_to_baseline": 0.8}}}))
    text = run_all.summary(tmp_path)
    assert "| afhq | amp (bf16) 0.80 | cpu, " in text and "Some CPU with AVX-512 BF16 |" in text
    assert "Other CPU with no bf16 instructions |" in text
