"""Translate images from the command line, with a run (PyTorch) or an export (onnxruntime):

    python -m i2i.translate --run runs/X --source cat.jpg --domain dog --seed 3 --num 4 --out out.png
    python -m i2i.translate --exports exports/X --source cat.jpg --domain dog --reference dog.jpg --out out.png
    python -m i2i.translate --exports exports/X --source photos/ --domain wild --out translated/

The pre- and post-processing are the app's (`i2i.imaging`: any image mode and size, resized and centre-cropped to the
model's size). The mode follows from the flags: `--reference` picks the graph with a second image input, otherwise
the latent-guided graph (`--graph NAME` to choose any UI graph). Several outputs of one source (`--num`) are written
side by side in one PNG. A folder of sources writes `<stem>_<domain>.png` per source into the `--out` folder.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from i2i.data.images import is_image_file
from i2i.imaging import ImageInputError, decode_image, save_png, side_by_side
from i2i.serving import MAX_OUTPUTS, ExportError, ExportedModel, GraphRunner, GraphSpec, translate


def pick_graph(model: GraphRunner, name: str | None, with_reference: bool) -> GraphSpec:
    """The UI graph named `name`, else the one whose image inputs fit the flags (two images with --reference)."""
    graphs = model.manifest.ui_graphs
    if name is not None:
        if name not in model.manifest.graphs:
            raise ExportError(f"no graph '{name}'; choose one of {[g.name for g in graphs]}")
        return model.manifest.graphs[name]
    wanted = 2 if with_reference else 1
    for graph in graphs:
        if len(graph.input("image")) == wanted:
            return graph
    raise ExportError(f"no graph takes {wanted} image(s); graphs: {[g.name for g in graphs]}"
                      + (" (drop --reference)" if with_reference else " (give --reference)"))


def _sources(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if is_image_file(p))
        if not files:
            raise ImageInputError(f"no image files in '{path}'")
        return files
    if not path.is_file():
        raise ImageInputError(f"source '{path}' does not exist")
    return [path]


def _load_model(args: argparse.Namespace) -> GraphRunner:
    if args.exports:
        return ExportedModel(args.exports)
    from i2i.engine.inference import load_run
    from i2i.export import EagerModel

    run = load_run(args.run, args.checkpoint, device=args.device)
    return EagerModel(run.task, run.nets)


def run(args: argparse.Namespace) -> list[Path]:
    model = _load_model(args)
    graph = pick_graph(model, args.graph, args.reference is not None)
    images = [s.name for s in graph.input("image")]
    domains = graph.input("domain")
    if len(domains) > 1:
        raise ExportError(f"graph '{graph.name}' takes several domains; use the Python API")
    choices = {}
    if domains:
        if args.domain is None:
            raise ExportError(f"--domain is required: one of {list(domains[0].choices)}")
        choices[domains[0].name] = args.domain
    reference = decode_image(args.reference) if args.reference else None
    sources = _sources(Path(args.source))
    out = Path(args.out)
    if len(sources) > 1 and out.suffix:
        raise ImageInputError(f"--source is a folder of {len(sources)} images: --out must be a folder, got '{out}'")
    written = []
    for source in sources:
        given = {images[0]: decode_image(source)}
        if len(images) > 1:
            given[images[1]] = reference
        pictures = translate(model, graph.name, images=given, choices=choices, seed=args.seed, num=args.num)
        target = out if len(sources) == 1 and out.suffix else out / f"{source.stem}_{args.domain or graph.name}.png"
        written.append(save_png(side_by_side(pictures) if len(pictures) > 1 else pictures[0], target))
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m i2i.translate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", metavar="DIR", help="a training run (PyTorch, its latest checkpoint)")
    where.add_argument("--exports", metavar="DIR", help="an export folder (onnxruntime)")
    parser.add_argument("--checkpoint", metavar="FILE", help="with --run: a given checkpoint")
    parser.add_argument("--device", default="cpu", help="with --run: cpu, cuda, ...")
    parser.add_argument("--source", required=True, metavar="IMAGE|DIR")
    parser.add_argument("--domain", metavar="NAME", help="target domain")
    parser.add_argument("--reference", metavar="IMAGE", help="reference image (reference-guided mode)")
    parser.add_argument("--seed", type=int, default=0, help="latent seed (latent-guided mode)")
    parser.add_argument("--num", type=int, default=1, help=f"outputs per source, 1..{MAX_OUTPUTS} (latent mode)")
    parser.add_argument("--graph", metavar="NAME", help="the graph to run (default: from the flags)")
    parser.add_argument("--out", required=True, metavar="PNG|DIR")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        written = run(args)
    except (ImageInputError, ExportError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
