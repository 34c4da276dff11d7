"""The limited-data study: every method at 10% and 100% of the procedural data, several seeds, scored as the papers do.

    python benchmarks/limited_data.py                       # run what is missing, then tables, plots, statistics
    python benchmarks/limited_data.py --report-only          # only rebuild the report from the archived runs
    nohup python benchmarks/limited_data.py > study.log &    # the whole study, in the background (resumable)

A task is one `StudyEntry`: its preset, its methods (flag sets), its data settings and which methods run in each,
the seeds, how a checkpoint is evaluated, and which metrics the report shows. The script only schedules: each run is
a normal run folder (`python -m i2i.train`, `--resume auto`, so an interrupted run continues where it stopped), each
saved checkpoint is scored by the task's evaluator (`RUN/eval/curve/iter_NNNNNN.json`; the last one also as
`RUN/eval/<task>.json`, what `python -m evaluators table` reads), and finished runs and evaluations are skipped.
Every finished run's scores are archived in the results folder (`runs/<task>/<setting>/<method>/seed<N>/`, a few KB
of JSON, committed), and the report is built from that archive: a study continues on another machine or a fresh
clone without re-running what is archived. The report (`benchmarks/results/limited_data/`): the metric table (mean ±
std over seeds, md + csv), metric-vs-iteration curves with seed bands, a bar chart with error bars, and each method
compared with the baseline of the same seeds (paired differences: mean, 95% t-interval, Welch's p; n stated).

Runs are independent processes with `--threads` torch threads each (default 1: the study can run beside other work
on a 2-core machine; `--jobs 2` runs two at a time).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results" / "limited_data"


@dataclass(frozen=True)
class Metric:
    label: str
    path: tuple[str, ...]  # inside result["metrics"]
    better: str  # "lower" | "higher"


@dataclass(frozen=True)
class Setting:
    """A data setting of a study: its flags of python -m i2i.train and the methods run in it."""

    flags: list[str]
    methods: list[str]


@dataclass(frozen=True)
class StudyEntry:
    task: str
    preset: Path
    methods: dict[str, list[str]]  # method name -> extra flags of python -m i2i.train
    settings: dict[str, Setting]  # e.g. "frac0.1" -> 10% of the data, with all methods
    seeds: tuple[int, ...]
    evaluate: Callable[[Path, Path, Path, int], list[str]]  # (run, checkpoint, out, threads) -> command
    metrics: tuple[Metric, ...]
    result_name: str  # RUN/eval/<result_name>.json
    extra_train_flags: list[str] = field(default_factory=list)


def afhq_evaluation(run: Path, checkpoint: Path, out: Path, threads: int) -> list[str]:
    """StarGAN v2's protocol with the proxy networks of the procedural set (FID†, LPIPS‡, target acc†, content†)."""
    return [sys.executable, "-m", "evaluators", "afhq", "--run", str(run), "--checkpoint", str(checkpoint),
            "--out", str(out), "--backbone", "proxy", "--allow-random-lpips", "--num-outs", "5", "--no-progress",
            "--device", "cpu", "--cache-dir", str(REPO / "runs" / "study" / ".eval-cache")]


def cityscapes_evaluation(run: Path, checkpoint: Path, out: Path, threads: int) -> list[str]:
    """SPADE's protocol with a proxy segmenter trained on the procedural photos (mIoU†, accuracy†, FID†)."""
    return [sys.executable, "-m", "evaluators", "cityscapes", "--run", str(run), "--checkpoint", str(checkpoint),
            "--out", str(out), "--segmenter", "proxy", "--segmenter-steps", "300", "--backbone", "proxy",
            "--no-progress", "--device", "cpu", "--cache-dir", str(REPO / "runs" / "study" / ".eval-cache")]


def nirvis_evaluation(run: Path, checkpoint: Path, out: Path, threads: int) -> list[str]:
    """Recognition via generation with the run's encoder (trained on the procedural identities: Rank-1†, VR†)."""
    return [sys.executable, "-m", "evaluators", "nirvis", "--run", str(run), "--checkpoint", str(checkpoint),
            "--out", str(out), "--no-progress", "--device", "cpu"]


FEATURE_MIX_METHODS = {
    "baseline": [],
    "remix": ["--remix"],
    "wm": ["--feature-mix", "wm"],
    "mixup-target": ["--feature-mix", "mixup"],
}

AFHQ_METHODS = {
    "baseline": [],
    "remix": ["--remix"],
    "wm": ["--feature-mix", "wm"],
    "mixup-target": ["--feature-mix", "mixup"],
    "diffaug": ["--diffaug", "color,translation,cutout"],
    "mixup": ["--mixer", "mixup"],
    "cutmix": ["--mixer", "cutmix"],
    "srmix": ["--mixer", "srmix"],
    "adaptivemix": ["--adaptivemix"],
    "pcr": ["--pcr"],
    "pcr+sc": ["--pcr", "--sample-correction"],
    # whether the demo's metrics hold in bfloat16 (issue 11); runs only where bf16 autocast is real (run_job)
    "amp (bf16)": ["--amp"],
    "remix+diffaug": ["--remix", "--diffaug", "color,translation,cutout"],
    # the review fixes of issue 8, against the behaviour before them
    "remix (shared code)": ["--remix", "--remix.second_code", "shared"],
    "adaptivemix (batch pairs)": ["--adaptivemix", "--regularizers.adaptivemix_pairing", "batch"],
}

ENTRIES: dict[str, StudyEntry] = {
    "afhq": StudyEntry(
        task="afhq",
        preset=REPO / "configs" / "afhq_study.yaml",
        methods=AFHQ_METHODS,
        settings={"frac0.1": Setting(["--data-frac", "0.1"], list(AFHQ_METHODS)),
                  "frac1": Setting(["--data-frac", "1.0"], ["baseline", "remix"])},
        seeds=(0, 1, 2),
        evaluate=afhq_evaluation,
        metrics=(Metric("latent FID†", ("latent", "fid"), "lower"),
                 Metric("reference FID†", ("reference", "fid"), "lower"),
                 Metric("latent target acc†", ("latent", "domain_accuracy"), "higher"),
                 Metric("reference target acc†", ("reference", "domain_accuracy"), "higher"),
                 Metric("latent content†", ("latent", "content"), "higher"),
                 Metric("reference content†", ("reference", "content"), "higher"),
                 Metric("latent LPIPS‡", ("latent", "lpips"), "higher")),
        result_name="afhq",
    ),
    "cityscapes": StudyEntry(
        task="cityscapes",
        preset=REPO / "configs" / "cityscapes_study.yaml",
        methods=FEATURE_MIX_METHODS,
        settings={"frac0.1": Setting(["--data-frac", "0.1"], list(FEATURE_MIX_METHODS))},
        seeds=(0, 1, 2),
        evaluate=cityscapes_evaluation,
        metrics=(Metric("mIoU†", ("miou",), "higher"), Metric("accuracy†", ("accuracy",), "higher"),
                 Metric("FID†", ("fid",), "lower")),
        result_name="cityscapes",
    ),
    "nirvis": StudyEntry(
        task="nirvis",
        preset=REPO / "configs" / "nirvis_study.yaml",
        methods=FEATURE_MIX_METHODS,
        settings={"frac0.1": Setting(["--data-frac", "0.1"], list(FEATURE_MIX_METHODS)),
                  "one-pair": Setting(["--pairs", "one"], list(FEATURE_MIX_METHODS))},
        seeds=(0, 1, 2),
        evaluate=nirvis_evaluation,
        metrics=(Metric("Rank-1†", ("rank1",), "higher"), Metric("VR@FAR=1%†", ("vr_far_1e-2",), "higher"),
                 Metric("VR@FAR=0.1%†", ("vr_far_1e-3",), "higher")),
        result_name="nirvis",
    ),
}


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "+-" else "_" for c in text).strip("_")


@dataclass(frozen=True)
class Job:
    entry: StudyEntry
    setting: str
    method: str
    seed: int
    results: Path = RESULTS

    @property
    def run_dir(self) -> Path:
        return REPO / "runs" / "study" / self.entry.task / self.setting / slug(self.method) / f"seed{self.seed}"

    @property
    def final(self) -> Path:
        return self.run_dir / "eval" / f"{self.entry.result_name}.json"

    @property
    def archive(self) -> Path:
        """The run's scored checkpoints kept with the results: `iter_NNNNNN.json`, one per checkpoint."""
        return self.results / "runs" / self.entry.task / self.setting / slug(self.method) / f"seed{self.seed}"

    def archived_curve(self) -> list[dict]:
        """The archived results in iteration order ([] when the run is not archived)."""
        return [json.loads(f.read_text()) for f in sorted(self.archive.glob("iter_*.json"))]


def archive_run(job: Job) -> bool:
    """Copy a finished run's curve files into the results archive; False when the run has not finished."""
    from i2i.fileio import atomic_write_text

    if not job.final.is_file():
        return False
    for source in sorted((job.run_dir / "eval" / "curve").glob("iter_*.json")):
        target = job.archive / source.name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(target, source.read_text())
    return True


def _run(command: list[str], log: Path, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"command failed ({done.returncode}), see {log}: {' '.join(command)}")


def run_job(job: Job, threads: int) -> str:
    """Train (or continue) the run, then score every checkpoint not scored yet; returns a status line."""
    if job.archived_curve():
        return f"skip {job.archive.relative_to(job.results)} (archived)"
    if job.final.is_file():
        archive_run(job)
        return f"skip {job.run_dir.relative_to(REPO)} (done; archived)"
    if "--amp" in job.entry.methods[job.method] and not _bf16_autocast_available():
        raise RuntimeError(f"{job.method!r} needs bfloat16 autocast (CUDA, or a CPU with AVX-512 BF16); here --amp "
                           "would train in float32 and the result would be float32's under a bf16 label")
    start = time.perf_counter()
    log = job.run_dir / "study.log"
    train = [sys.executable, "-m", "i2i.train", "--task", job.entry.task, "--config", str(job.entry.preset),
             "--run-dir", str(job.run_dir), "--resume", "auto", "--seed", str(job.seed),
             *job.entry.settings[job.setting].flags, "--train.progress", "false", *job.entry.extra_train_flags,
             *job.entry.methods[job.method]]
    _run(train, log, threads)
    trained = time.perf_counter() - start
    checkpoints = sorted((job.run_dir / "checkpoints").glob("*.pt"))
    for checkpoint in checkpoints:
        out = job.run_dir / "eval" / "curve" / f"iter_{checkpoint.stem}.json"
        if not out.is_file():
            _run(job.entry.evaluate(job.run_dir, checkpoint, out, threads), log, threads)
            _tag(out, job.method)
    final = json.loads((job.run_dir / "eval" / "curve" / f"iter_{checkpoints[-1].stem}.json").read_text())
    from i2i.fileio import atomic_write_text

    atomic_write_text(job.final, json.dumps(final, indent=1) + "\n")
    archive_run(job)
    return (f"done {job.run_dir.relative_to(REPO)}: train {trained / 60:.1f} min, evaluation "
            f"{(time.perf_counter() - start - trained) / 60:.1f} min")


def _bf16_autocast_available() -> bool:
    """Whether `python -m i2i.train --amp` (default --device auto) trains in bfloat16 on this machine."""
    import torch

    from i2i.engine.amp import amp_supported

    return amp_supported(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def _tag(path: Path, method: str) -> None:
    """The study's method name in the result (`study_method`; the run's own `method` is the flag summary)."""
    result = json.loads(path.read_text())
    result["study_method"] = method
    path.write_text(json.dumps(result, indent=1) + "\n")


# ----------------------------------------------------------------------------------------------------------------------
# Report


def _value(result: dict, metric: Metric) -> float | None:
    node: Any = result["metrics"]
    for key in metric.path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node)


def _curves(jobs: Sequence[Job]) -> dict:
    """{setting: {method: {seed: [(iteration, result), ...]}}} of the archived runs."""
    curves: dict = {}
    for job in jobs:
        points = job.archived_curve()
        if points:
            curves.setdefault(job.setting, {}).setdefault(job.method, {})[job.seed] = [(p["iteration"], p)
                                                                                     for p in points]
    return curves


def paired_comparison(method: list[float], baseline: list[float]) -> dict:
    """Method minus baseline over seeds paired by seed (same data subset and init): mean difference, its 95%
    t-interval, and Welch's two-sided p (unpaired, as a check)."""
    from scipy import stats

    n = min(len(method), len(baseline))
    diffs = [m - b for m, b in zip(method[:n], baseline[:n])]
    mean = sum(diffs) / n
    if n < 2:
        return {"n": n, "mean_diff": mean, "ci95": None, "welch_p": None}
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    welch = stats.ttest_ind(method, baseline, equal_var=False)
    return {"n": n, "mean_diff": mean, "ci95": [mean - half, mean + half],
            "welch_p": float(welch.pvalue) if math.isfinite(welch.pvalue) else None}


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def report(entry: StudyEntry, jobs: Sequence[Job], out_dir: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from evaluators.tables import render_table

    out_dir.mkdir(parents=True, exist_ok=True)
    for job in jobs:  # runs that finished before the archive existed, or elsewhere
        if not job.archived_curve():
            archive_run(job)
    finals = [{**curve[-1], "study_method": j.method, "study_setting": j.setting}
              for j in jobs if (curve := j.archived_curve())]
    if not finals:
        return {}
    for fmt in ("md", "csv"):
        (out_dir / f"{entry.task}_table.{fmt}").write_text(render_table(finals, fmt, group_by="study_method",
                                                                          split_by="study_setting"))
    curves = _curves(jobs)
    summary: dict = {"task": entry.task, "seeds": list(entry.seeds), "settings": {}}
    for setting, methods in curves.items():
        block: dict = {}
        baseline_runs = methods.get("baseline", {})
        for method, seeds in methods.items():
            row: dict = {"seeds": sorted(seeds)}
            for metric in entry.metrics:
                finals_by_seed = {s: _value(points[-1][1], metric) for s, points in seeds.items()}
                values = [v for v in finals_by_seed.values() if v is not None]
                if not values:
                    continue
                mean, std = _mean_std(values)
                cell = {"mean": mean, "std": std, "n": len(values)}
                if method != "baseline" and baseline_runs:
                    common = sorted(set(seeds) & set(baseline_runs))
                    base = [_value(baseline_runs[s][-1][1], metric) for s in common]
                    mine = [finals_by_seed[s] for s in common]
                    if common and None not in base:
                        cell["vs_baseline"] = paired_comparison(mine, base)
                row[metric.label] = cell
            block[method] = row
        summary["settings"][setting] = block
        _plot_curves(plt, entry, setting, methods, out_dir)
        _plot_bars(plt, entry, setting, block, out_dir)
    (out_dir / f"{entry.task}_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out_dir / f"{entry.task}_comparison.md").write_text(_comparison_md(entry, summary))
    return summary


def _grid(plt, panels: int):
    """Up to 3 panels per row, as many rows as the metrics need (a 3-metric entry gets one row)."""
    rows = math.ceil(panels / 3)
    return plt.subplots(rows, min(3, panels), figsize=(15, 4.25 * rows), squeeze=False)


def _plot_curves(plt, entry: StudyEntry, setting: str, methods: dict, out_dir: Path) -> None:
    import numpy as np

    shown = entry.metrics[:6]
    fig, axes = _grid(plt, len(shown))
    colours = plt.get_cmap("tab20")
    for ax, metric in zip(axes.flat, shown):
        for k, (method, seeds) in enumerate(sorted(methods.items())):
            iterations = sorted({it for points in seeds.values() for it, _ in points})
            rows = [[_value(dict(points)[it], metric) if it in dict(points) else np.nan for it in iterations]
                    for points in seeds.values()]
            values = np.asarray([[np.nan if v is None else v for v in r] for r in rows], dtype=float)
            if np.isnan(values).all():
                continue
            mean, low, high = np.nanmean(values, 0), np.nanmin(values, 0), np.nanmax(values, 0)
            style = "-" if method in ("baseline", "remix") else "--"
            ax.plot(iterations, mean, style, color=colours(k % 20), label=method, linewidth=2 if style == "-" else 1)
            ax.fill_between(iterations, low, high, color=colours(k % 20), alpha=0.12)
        ax.set_title(metric.label + (" (lower is better)" if metric.better == "lower" else " (higher is better)"))
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7, ncol=2)
    counts = sorted({len(seeds) for seeds in methods.values()})
    fig.suptitle(f"{entry.task}, {setting}: mean over {'/'.join(map(str, counts))} seeds (band: min-max)")
    fig.tight_layout()
    fig.savefig(out_dir / f"{entry.task}_curves_{setting}.png", dpi=90)
    plt.close(fig)


def _plot_bars(plt, entry: StudyEntry, setting: str, block: dict, out_dir: Path) -> None:
    shown = [m for m in entry.metrics[:6]]
    methods = sorted(block, key=lambda m: (m != "baseline", m))
    fig, axes = _grid(plt, len(shown))
    for ax, metric in zip(axes.flat, shown):
        present = [m for m in methods if metric.label in block[m]]
        means = [block[m][metric.label]["mean"] for m in present]
        stds = [block[m][metric.label]["std"] for m in present]
        colours = ["tab:grey" if m == "baseline" else "tab:red" if m.startswith("remix") else "tab:blue"
                   for m in present]
        ax.bar(range(len(present)), means, yerr=stds, color=colours, capsize=3)
        ax.set_xticks(range(len(present)), present, rotation=60, ha="right", fontsize=7)
        ax.set_title(metric.label + (" ↓" if metric.better == "lower" else " ↑"))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{entry.task}, {setting}: final checkpoint, mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(out_dir / f"{entry.task}_bars_{setting}.png", dpi=90)
    plt.close(fig)


def _comparison_md(entry: StudyEntry, summary: dict) -> str:
    lines = [f"# {entry.task}: each method minus the baseline of the same seeds (final checkpoints)", "",
             "Paired by seed (same data subset and initialisation); 95% t-interval of the mean difference; Welch's "
             "two-sided p over the seeds as a check. n = number of seed pairs. Improvement means lower FID, higher "
             "target accuracy / content / LPIPS.", ""]
    for setting, block in summary["settings"].items():
        lines += [f"## {setting}", "", "| method | " + " | ".join(m.label for m in entry.metrics) + " |",
                  "|---|" + "---|" * len(entry.metrics)]
        for method in sorted(block, key=lambda m: (m != "baseline", m)):
            cells = []
            for metric in entry.metrics:
                cell = block[method].get(metric.label)
                if cell is None:
                    cells.append("")
                elif method == "baseline":
                    cells.append(f"{cell['mean']:.3f} ± {cell['std']:.3f}")
                elif "vs_baseline" in cell and cell["vs_baseline"]["ci95"]:
                    c = cell["vs_baseline"]
                    better = c["mean_diff"] < 0 if metric.better == "lower" else c["mean_diff"] > 0
                    sure = c["ci95"][0] > 0 or c["ci95"][1] < 0
                    mark = ("**" if sure else "") if better else ("*" if sure else "")
                    p = "n/a" if c["welch_p"] is None else f"{c['welch_p']:.2f}"  # None: no spread in either
                    cells.append(f"{mark}{c['mean_diff']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] "
                                 f"p={p}{mark} (n={c['n']})")
                else:
                    cells.append(f"{cell['mean']:.3f}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", "Bold: better than the baseline with the 95% interval excluding 0; italics: worse likewise.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(ENTRIES), choices=list(ENTRIES))
    parser.add_argument("--methods", nargs="+", help="only these methods (default: the entry's)")
    parser.add_argument("--settings", nargs="+", help="only these settings (e.g. frac0.1)")
    parser.add_argument("--seeds", nargs="+", type=int, help="only these seeds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    for name in args.tasks:
        entry = ENTRIES[name]
        jobs = [Job(entry, name, method, seed, args.out)
                for name, setting in entry.settings.items() if args.settings is None or name in args.settings
                for seed in (args.seeds or entry.seeds)
                for method in setting.methods if args.methods is None or method in args.methods]
        if not args.report_only:
            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                for status in pool.map(lambda job: _safe(run_job, job, args.threads), jobs):
                    print(time.strftime("%H:%M:%S"), status, flush=True)
        all_jobs = [Job(entry, name, method, seed, args.out) for name, setting in entry.settings.items()
                    for seed in entry.seeds for method in setting.methods]
        summary = report(entry, all_jobs, args.out)
        print(f"{name}: report in {args.out} ({sum(bool(j.archived_curve()) for j in all_jobs)} of {len(all_jobs)} "
              "runs archived)"
              if summary else f"{name}: no finished runs yet")
    return 0


def _safe(fn, job: Job, threads: int) -> str:
    try:
        return fn(job, threads)
    except Exception as error:  # one failed run must not stop the study; it is retried on the next start
        return f"FAILED {job.run_dir.relative_to(REPO)}: {error}"


if __name__ == "__main__":
    sys.exit(main())
