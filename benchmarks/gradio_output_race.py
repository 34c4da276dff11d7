"""Reproduces the Gradio failure that concurrent requests for the same image meet, and shows the app's way around it.

    python benchmarks/gradio_output_race.py [--rounds 9] [--clients 20]

A minimal app (flip the uploaded image) is served twice: returning a numpy array (Gradio encodes it into its cache at
`<cache>/<sha256 of the bytes>/image.webp` with a plain `write_bytes`, i.e. truncate then write), and returning the
path of a PNG the handler wrote under a unique name (Gradio copies files into its cache with a temp file and a
rename). `--clients` threads upload the same file at once, `--rounds` times. With identical requests the outputs are
identical, so concurrent requests rewrite the same cache file while earlier ones are downloading it: some downloads
come back empty or truncated (httpx: "peer closed connection", PIL: "cannot identify image file"). The upload side
is not the cause (uploads are renamed into place). Results: benchmarks/results/gradio_output_race.json.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np


def serve_and_hammer(kind: str, work: Path, rounds: int, clients: int) -> dict:
    import gradio as gr
    from gradio_client import Client, handle_file
    from PIL import Image

    source = work / "source.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(source)
    (work / "outputs").mkdir(exist_ok=True)

    def flip(image):
        flipped = np.asarray(image)[::-1].copy()
        if kind == "numpy":
            return flipped
        path = work / "outputs" / f"{secrets.token_hex(12)}.png"
        tmp = path.with_suffix(".tmp")
        Image.fromarray(flipped).save(tmp, format="PNG")
        os.replace(tmp, path)
        return str(path)

    demo = gr.Interface(flip, gr.Image(type="pil"), gr.Image(type="numpy" if kind == "numpy" else "filepath"))
    demo.queue(default_concurrency_limit=4)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=None, quiet=True,
                            allowed_paths=[str(work / "outputs")])
    client = Client(url, verbose=False)
    failures: list[str] = []

    def request() -> None:
        try:
            out = client.predict(handle_file(str(source)), api_name="/flip")
            Image.open(out).load()
        except Exception as error:  # counted: this is what the script measures
            failures.append(f"{type(error).__name__}: {str(error)[:120]}")

    try:
        for _ in range(rounds):
            threads = [threading.Thread(target=request) for _ in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        demo.close()
    total = rounds * clients
    print(f"{kind:>8} outputs: {len(failures)} of {total} requests failed", flush=True)
    return {"requests": total, "failed": len(failures), "examples": sorted(set(failures))[:3]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gradio_output_race.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GRADIO_TEMP_DIR"] = str(Path(tmp) / "gradio")
        os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
        import gradio

        report = {"gradio": gradio.__version__}
        for kind in ("numpy", "file"):
            work = Path(tmp) / kind
            work.mkdir()
            report[kind] = serve_and_hammer(kind, work, args.rounds, args.clients)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
