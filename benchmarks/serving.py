"""Serving speed, measured in one run: onnxruntime vs eager PyTorch per graph, and the app's round trip.

    python benchmarks/serving.py                      # demo size and 256 px with the official channel widths
    python benchmarks/serving.py --sizes demo --repeats 5

For each configuration the AFHQ graphs (latent, reference) are exported with `i2i.export` from seeded random weights
(speed does not depend on the weights), then eager PyTorch and onnxruntime run the same seeded inputs in interleaved
repeats at batch 1 and 8, both with the same number of threads. The app's round trip is one 256 px latent translation
through gradio_client over loopback (upload, queue, onnxruntime, PNG, download). Results: benchmarks/results/serving.json.
A benchmark, not a test: absolute times depend on the machine; the ratios are the result.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import describe  # noqa: E402
from i2i.config import default_config  # noqa: E402
from i2i.export import EagerModel, export_model  # noqa: E402
from i2i.nets.stargan_v2 import build_nets  # noqa: E402
from i2i.serving import ExportedModel, random_feed  # noqa: E402
from i2i.tasks.afhq import AFHQTask  # noqa: E402

SIZES = {
    "demo": {"img_size": 32, "width": 16, "max_conv_dim": 64, "batches": (1, 8)},  # configs/afhq_demo.yaml
    # the official AFHQ nets
    "256": {"img_size": 256, "width": None, "max_conv_dim": 512, "batches": (1, 8)},
}
GRAPHS = ("latent", "reference")


def afhq_model(size: dict, seed: int = 0):
    cfg = default_config("afhq")
    cfg.data.img_size, cfg.model.width, cfg.model.max_conv_dim = size["img_size"], size["width"], size["max_conv_dim"]
    task = AFHQTask(cfg, torch.device("cpu"))
    task.domains = ["cat", "dog", "wild"]
    torch.manual_seed(seed)
    nets = build_nets(size["img_size"], 3, max_conv_dim=size["max_conv_dim"], width=size["width"])
    nets = {k: nets[k].eval().requires_grad_(False) for k in ("generator", "mapping_network", "style_encoder")}
    return task, nets


def seconds(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def compare(eager: EagerModel, exported: ExportedModel, repeats: int, batches: tuple[int, ...]) -> dict:
    out = {}
    for graph in GRAPHS:
        for batch in batches:
            feed = random_feed(exported.manifest.graphs[graph], batch, seed=batch)
            eager.run(graph, feed), exported.run(graph, feed)  # warm-up (allocations, onnxruntime's first run)
            eager_times, ort_times = [], []
            for _ in range(repeats):  # interleaved, so drifts of the machine hit both alike
                eager_times += seconds(lambda: eager.run(graph, feed), 1)
                ort_times += seconds(lambda: exported.run(graph, feed), 1)
            e, o = statistics.median(eager_times), statistics.median(ort_times)
            out[f"{graph}/batch_{batch}"] = {"eager_s": round(e, 5), "onnxruntime_s": round(o, 5),
                                             "speedup": round(e / o, 3)}
            print(f"  {graph:9s} batch {batch}: eager {e * 1e3:8.1f} ms  onnxruntime {o * 1e3:8.1f} ms  "
                  f"x{e / o:.2f}", flush=True)
    return out


def round_trip(folder: Path, repeats: int, work: Path) -> dict:
    os.environ["GRADIO_TEMP_DIR"] = str(work / "gradio")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from gradio_client import Client, handle_file
    from PIL import Image

    from apps.gradio_app import launch, load_tabs

    tabs = load_tabs(folder, work / "outputs")
    app, url = launch(tabs, port=None, block=False)
    try:
        client = Client(url, verbose=False)
        source = work / "source.jpg"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8)).save(source)
        call = lambda: client.predict(mode="Latent-guided", x=handle_file(str(source)), y_trg="dog", seed=0, num=1,
                                      api_name=f"/{tabs[0].name}_translate")
        call()
        times = seconds(call, repeats)
    finally:
        app.close()
    median = statistics.median(times)
    print(f"  app round trip (256 px, latent, 1 output): {median * 1e3:.0f} ms median of {repeats}", flush=True)
    return {"median_s": round(median, 4), "all_s": [round(t, 4) for t in times]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serving.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {"machine": describe("cpu"),
              "graphs": {}, "note": "random weights (speed only); eager and onnxruntime interleaved, median"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.sizes:
            task, nets = afhq_model(SIZES[name])
            source = work / f"{name}.ckpt"
            torch.save({}, source)
            print(f"{name}: exporting {task.title}", flush=True)
            folder = work / f"afhq_{name}"
            export_model(task, nets, folder, source=source, graphs=list(GRAPHS), log=lambda m: print(m, flush=True))
            exported = ExportedModel(folder, threads=args.threads)
            report["graphs"][name] = compare(EagerModel(task, nets), exported, args.repeats, SIZES[name]["batches"])
            if name == "256":
                report["app_round_trip_256"] = round_trip(folder, args.repeats, work)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
