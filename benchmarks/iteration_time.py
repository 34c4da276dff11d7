"""Training-iteration time of each regularizer relative to the baseline, measured in one run.

    python benchmarks/iteration_time.py                         # baseline vs ReMix at the demo preset
    python benchmarks/iteration_time.py --variants all          # every regularizer, alone and all together
    python benchmarks/iteration_time.py --out bench.json --rounds 5 --iters 10
    python benchmarks/iteration_time.py --task cityscapes --variants all   # any task, at its demo preset

All variants are built up front and timed in interleaved rounds (variant A, B, C, A, B, C, ...), so drifts of the
machine's speed hit every variant alike; the report gives the median seconds per iteration of each variant and its
ratio to the baseline of the same run, and the process's peak memory (resident set; on CUDA also the peak allocated).
It is a benchmark, not a test: absolute times depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import describe  # noqa: E402
from i2i.config import CONFIG_DIR, build_config  # noqa: E402
from i2i.engine.trainer import Trainer  # noqa: E402
from i2i.tasks import TASKS  # noqa: E402

VARIANTS: dict[str, dict] = {
    "baseline": {},
    "remix": {"remix.method": "remix"},
    "remix p=1": {"remix.method": "remix", "remix.p": 1.0},
    "mixup": {"regularizers.mixer": "mixup"},
    "cutmix": {"regularizers.mixer": "cutmix"},
    "srmix": {"regularizers.mixer": "srmix"},
    "adaptivemix": {"regularizers.adaptivemix": True},
    "pcr": {"regularizers.pcr": True},
    "sample correction": {"regularizers.sample_correction": True},
    "diffaug": {"regularizers.diffaug": "color,translation,cutout"},
    "amp (bf16)": {"train.amp": True},
    "compile": {"train.compile": True},  # inductor; its compile time falls in the untimed warm-up
    "nchw": {"train.channels_last": False},  # the default memory format (channels-last) against NCHW
    "all": {"remix.method": "remix", "regularizers.mixer": "cutmix", "regularizers.adaptivemix": True,
            "regularizers.pcr": True, "regularizers.sample_correction": True,
            "regularizers.diffaug": "color,translation,cutout"},
}
DEFAULT = ["baseline", "remix", "remix p=1"]


def build(task: str, name: str, overrides: dict, preset: Path, common: dict, workdir: Path):
    cfg = build_config(task, preset, {**common, **overrides, "train.progress": False})
    trainer = Trainer(cfg, workdir / name.replace(" ", "_").replace("=", ""))
    start = trainer.setup(None)
    return trainer, iter(trainer.task.train_stream(start))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=DEFAULT, help=f"'all' or names from: {', '.join(VARIANTS)}")
    parser.add_argument("--task", default="afhq", choices=sorted(TASKS))
    parser.add_argument("--preset", help="default: configs/<task>_demo.yaml")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=6, help="timed iterations per variant per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for all variants")
    parser.add_argument("--out", help="write the JSON report here too")
    args = parser.parse_args(argv)
    names = list(VARIANTS) if args.variants == ["all"] else args.variants
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if "baseline" not in names:
        names = ["baseline", *names]
    common = dict(item.split("=", 1) for item in args.set)
    args.preset = args.preset or str(CONFIG_DIR / f"{args.task}_demo.yaml")

    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: build(args.task, name, VARIANTS[name], Path(args.preset), common, Path(tmp)) for name in names}
        steps = {name: 0 for name in names}

        def timed(name: str, n: int) -> float:
            trainer, stream = runs[name]
            tic = time.perf_counter()
            for _ in range(n):
                trainer.train_iteration(next(stream), steps[name])
                steps[name] += 1
            return (time.perf_counter() - tic) / n

        for name in names:
            timed(name, args.warmup)
        samples: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.rounds):
            for name in names:
                samples[name].append(timed(name, args.iters))

    base = statistics.median(samples["baseline"])
    device = next(iter(runs.values()))[0].device
    # the process's peak: with one variant per process (as benchmarks/run_all.py runs the paper presets) it is that
    # configuration's training footprint
    memory = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        memory["peak_cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    report = {
        "benchmark": "iteration_time",
        "task": args.task,
        "preset": str(Path(args.preset).relative_to(REPO)) if Path(args.preset).is_relative_to(REPO) else args.preset,
        "overrides": common,
        "machine": describe(device),
        "memory": memory,
        "rounds": args.rounds, "iters_per_round": args.iters,
        "variants": {name: {"median_sec_per_iter": statistics.median(s), "ratio_to_baseline": statistics.median(s) / base,
                            "round_medians": s} for name, s in samples.items()},
    }
    print(f"{'variant':<20} {'s/iter':>8} {'x baseline':>11}")
    for name, row in report["variants"].items():
        print(f"{name:<20} {row['median_sec_per_iter']:>8.3f} {row['ratio_to_baseline']:>11.3f}")
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
