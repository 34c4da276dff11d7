"""The benchmark suite: every benchmark of this folder, one after the other, each in its own process, then a summary.

    python benchmarks/run_all.py                      # everything (about an hour on 2 CPU cores)
    python benchmarks/run_all.py --only iteration_time_afhq ddp_scaling
    python benchmarks/run_all.py --list               # the benchmarks and what each measures
    python benchmarks/run_all.py --summary-only       # benchmarks/results/summary.md from the JSON files present

Each benchmark writes `benchmarks/results/<name>.json`; `summary.md` collects their headline figures (ratios measured
within one run; absolute times only with the device they were measured on). Run it on an otherwise idle machine: a
second heavy process on the same cores slows both by 10-30x and the ratios with them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BENCH = REPO / "benchmarks"
PY = sys.executable
SYNTHETIC = {"afhq": ["data.root=data/synthetic_afhq", "data.synthetic=true"],
             "cityscapes": ["data.root=data/synthetic_cityscapes", "data.synthetic=true", "model.allow_random_vgg=true"],
             "nirvis": ["data.root=data/synthetic_nirvis", "data.synthetic=true"]}


@dataclass(frozen=True)
class Benchmark:
    name: str
    about: str
    command: Callable[[Path, argparse.Namespace], list[str]]  # (its JSON output, options) -> command line


def _iteration_time(task: str) -> Callable[[Path, argparse.Namespace], list[str]]:
    return lambda out, args: [PY, str(BENCH / "iteration_time.py"), "--task", task, "--variants", "all", "--out",
                              str(out)]


def _paper_preset(task: str) -> Callable[[Path, argparse.Namespace], list[str]]:
    """One variant per process, so the process's peak memory is the configuration's. The batch is --paper-batch
    (recorded in the JSON), not the config's 8-16: one iteration at those takes minutes on a CPU."""
    def command(out: Path, args: argparse.Namespace) -> list[str]:
        extra = [f"train.batch_size={args.paper_batch}", "data.num_workers=0", *SYNTHETIC[task]]
        if task == "nirvis":
            extra.append(f"model.encoder_weights={_seeded_lightcnn()}")
        return [PY, str(BENCH / "iteration_time.py"), "--task", task, "--preset", str(REPO / "configs" / f"{task}.yaml"),
                "--variants", "baseline", "--rounds", "1", "--iters", str(args.paper_iters), "--warmup", "1",
                "--out", str(out), "--set", *extra]
    return command


def _seeded_lightcnn() -> Path:
    """LightCNN-29v2 in the official file format with seeded weights: speed does not depend on the weights."""
    path = Path(tempfile.gettempdir()) / "i2i-bench" / "LightCNN_29Layers_V2_checkpoint.pth.tar"
    if not path.is_file():
        import torch

        sys.path.insert(0, str(REPO))
        from i2i.nets.lightcnn import LightCNN29v2

        torch.manual_seed(0)
        net = LightCNN29v2(num_classes=10)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"epoch": 1, "arch": "LightCNN-29v2",
                    "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def ddp_scaling(out: Path, args: argparse.Namespace) -> None:
    """The AFHQ demo preset for a few iterations as 1 process with 2 threads and as 2 torchrun ranks with 1 thread
    each, the same global batch: seconds per iteration from the run's log (the first logged interval dropped)."""
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ranks in (1, 2):
            run = Path(tmp) / f"ranks{ranks}"
            launcher = [PY, "-m", "i2i.train"] if ranks == 1 else \
                [str(Path(PY).with_name("torchrun")), "--standalone", f"--nproc_per_node={ranks}", "-m", "i2i.train"]
            command = [*launcher, "--config", str(REPO / "configs" / "afhq_demo.yaml"), "--run-dir", str(run),
                       "--train.total_iters", str(args.ddp_iters), "--train.log_every", str(args.ddp_iters // 3),
                       "--train.save_every", str(args.ddp_iters), "--train.sample_every", str(args.ddp_iters),
                       "--train.progress", "false"]
            env = {**os.environ, "OMP_NUM_THREADS": str(2 // ranks)}
            done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"ddp_scaling: {ranks} rank(s) failed:\n{done.stderr[-2000:]}")
            log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
            seconds = [record["sec_per_iter"] for record in log[1:]]
            rows[f"{ranks} process(es)"] = {"threads_per_process": 2 // ranks,
                                            "sec_per_iter": sum(seconds) / len(seconds)}
    one, two = rows["1 process(es)"]["sec_per_iter"], rows["2 process(es)"]["sec_per_iter"]
    report = {"benchmark": "ddp_scaling", "preset": "configs/afhq_demo.yaml", "backend": "gloo", "device": "cpu",
              "iterations": args.ddp_iters, "runs": rows, "speedup_2_ranks": one / two}
    out.write_text(json.dumps(report, indent=1) + "\n")


SUITE: list[Benchmark] = [
    *(Benchmark(f"iteration_time_{task}", f"{task}: every regularizer's iteration time / the baseline's (demo preset)",
                _iteration_time(task)) for task in ("afhq", "cityscapes", "nirvis")),
    *(Benchmark(f"paper_preset_{task}", f"{task}: iteration time and peak memory at configs/{task}.yaml",
                _paper_preset(task)) for task in ("afhq", "cityscapes", "nirvis")),
    Benchmark("ddp_scaling", "1 process vs 2 torchrun ranks (gloo, CPU), same global batch", lambda out, args: []),
    Benchmark("fid_bench", "Fréchet distance vs scipy's sqrtm; Inception feature extraction vs pytorch-fid",
              lambda out, args: [PY, str(BENCH / "fid_bench.py"), "--output", str(out)]),
    Benchmark("serving", "onnxruntime vs eager per exported graph; the app's round trip",
              lambda out, args: [PY, str(BENCH / "serving.py"), "--out", str(out)]),
    *(Benchmark(f"official_step_{task}", f"one training iteration: the official {name} code vs ours, same config",
                lambda out, args, task=task: [PY, str(BENCH / "official_step.py"), "--task", task, "--out", str(out)])
      for task, name in (("afhq", "StarGAN v2"), ("cityscapes", "SPADE"))),
    Benchmark("stylegan2_reference", "StyleGAN2 G and D forward+backward: ours vs rosinality's pure-PyTorch ops",
              lambda out, args: [PY, str(BENCH / "stylegan2_reference.py"), "--out", str(out)]),
]


def run(benchmark: Benchmark, args: argparse.Namespace) -> str:
    out = args.results / f"{benchmark.name}.json"
    start = time.perf_counter()
    if benchmark.name == "ddp_scaling":
        ddp_scaling(out, args)
    else:
        done = subprocess.run(benchmark.command(out, args), cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            return f"FAILED {benchmark.name} ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}"
    return f"done {benchmark.name} in {(time.perf_counter() - start) / 60:.1f} min -> {out}"


# ----------------------------------------------------------------------------------------------------------------------
# Summary


def _load(results: Path, name: str) -> dict | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _where(machine: dict) -> str:
    """"cpu, 2 threads", plus the CPU and its bfloat16 support where the report records them (older ones do not)."""
    text = f"{machine['device']}, {machine['threads']} threads"
    if "cpu" in machine:
        bf16 = "AVX-512 BF16" if "avx512_bf16" in machine.get("cpu_flags", []) else "no bf16 instructions"
        return text + f", {machine['cpu']} with {bf16}"
    return text + " (CPU not recorded)"


def summary(results: Path) -> str:
    lines = ["# Benchmark summary", "", "Written by `python benchmarks/run_all.py` from `benchmarks/results/*.json`; "
             "ratios are measured within one run.", ""]
    rows = []
    for task in ("afhq", "cityscapes", "nirvis"):
        demo, paper = _load(results, f"iteration_time_{task}"), _load(results, f"paper_preset_{task}")
        for label, result in (("demo", demo), ("paper", paper)):
            if result:
                base = result["variants"]["baseline"]
                batch = result.get("overrides", {}).get("train.batch_size", "preset's")
                rows.append(f"| {task} | {result['preset']} | {batch} | "
                            f"{base['median_sec_per_iter']:.3f} | {result.get('memory', {}).get('peak_rss_mib', '—')} | "
                            f"{_where(result['machine'])} |")
    if rows:
        lines += ["## Iteration time and peak memory (baseline)", "",
                  "Peak RSS is the benchmark process's: a demo row's process holds every variant's trainer at once; "
                  "a paper row's holds the baseline alone.", "",
                  "| task | preset | batch | s / iteration | peak RSS MiB | device |", "|---|---|---:|---:|---:|---|",
                  *rows, ""]
    ratio_rows = []
    for task in ("afhq", "cityscapes", "nirvis"):
        result = _load(results, f"iteration_time_{task}")
        if result:
            cells = ", ".join(f"{name} {v['ratio_to_baseline']:.2f}" for name, v in result["variants"].items()
                              if name != "baseline")
            ratio_rows.append(f"| {task} | {cells} | {_where(result['machine'])} |")
    if ratio_rows:
        lines += ["## Regularizers: iteration time / baseline (demo preset)", "", "| task | × baseline | device |",
                  "|---|---|---|",
                  *ratio_rows, ""]
    ddp = _load(results, "ddp_scaling")
    if ddp:
        lines += ["## DDP on CPU (gloo)", "", f"2 ranks x 1 thread vs 1 process x 2 threads, same global batch "
                  f"({ddp['preset']}): speed-up {ddp['speedup_2_ranks']:.2f}x.", ""]
    for task in ("afhq", "cityscapes"):
        official = _load(results, f"official_step_{task}")
        if official and "ratio_ours_to_official" in official:
            lines += [f"## Official code vs ours: {task}", "",
                      f"One training iteration, ours / official = {official['ratio_ours_to_official']:.3f} "
                      f"({_where(official.get('machine', official))}; the configuration and the remaining "
                      f"differences are in `official_step_{task}.json`).", ""]
    sg2 = _load(results, "stylegan2_reference")
    if sg2:
        cells = ", ".join(f"{net} {sg2['nets'][net]['ratio_ours_to_reference']:.2f}" for net in ("generator", "discriminator"))
        lines += ["## StyleGAN2 vs rosinality (pure-PyTorch ops, CPU)", "", f"Forward+backward, ours / reference: "
                  f"{cells}; outputs differ by at most {sg2['max_abs_output_difference']:.1e}.", ""]
    fid = _load(results, "fid_bench")
    if fid:
        fd, fx = fid["frechet_distance"], fid["feature_extraction"]
        lines += ["## FID", "", f"Fréchet distance at D = {fd['dim']}: ours (eigh) {fd['speedup_eigh_vs_sqrtm']:.1f}x "
                  f"faster than scipy's sqrtm route, relative difference {fd['ours_eigh']['relative_difference']:.1e}. "
                  f"Inception feature extraction: ours / pytorch-fid throughput "
                  f"{fx['speed_ratio_ours_vs_pytorch_fid']:.2f}, max feature difference "
                  f"{fx['max_abs_feature_difference']:.1e}.", ""]
    serving = _load(results, "serving")
    if serving:
        cells = [f"{size} {graph}: {row['speedup']:.1f}x" for size, graphs in serving["graphs"].items()
                 for graph, row in graphs.items()]
        lines += ["## Serving", "", "onnxruntime / eager speed-up: " + ", ".join(cells) + ". The app's round trip "
                  f"(256 px, loopback): {serving['app_round_trip_256']['median_s']:.2f} s median.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--skip", nargs="+", default=[], metavar="NAME", help="run all but these")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and stop")
    parser.add_argument("--summary-only", action="store_true", help="write summary.md from the results present")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON files and summary.md")
    parser.add_argument("--paper-batch", type=int, default=2, help="batch of the paper-preset runs (default 2)")
    parser.add_argument("--paper-iters", type=int, default=1, help="timed iterations of the paper-preset runs")
    parser.add_argument("--ddp-iters", type=int, default=30, help="iterations of each DDP-scaling run")
    args = parser.parse_args(argv)
    names = [b.name for b in SUITE]
    unknown = [n for n in (args.only or []) + args.skip if n not in names]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(names)}")
    if args.list:
        for b in SUITE:
            print(f"{b.name:<26} {b.about}")
        return 0
    failed = False
    if not args.summary_only:
        for benchmark in SUITE:
            if (args.only is None or benchmark.name in args.only) and benchmark.name not in args.skip:
                status = run(benchmark, args)
                failed |= status.startswith("FAILED")
                print(f"{time.strftime('%H:%M:%S')} {status}", flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "summary.md").write_text(summary(args.results) + "\n")
    print(f"summary: {args.results / 'summary.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
