"""Export a trained translator to ONNX, verified against PyTorch:

    python -m i2i.export --run runs/X [--checkpoint PATH] [--out exports/X]
    python -m i2i.export --task afhq --official-checkpoint 100000_nets_ema.ckpt --out exports/afhq256

The task declares its graphs (`Task.export_graphs`); this module knows no task. Each graph becomes one self-contained
`.onnx` file (no external data) with a dynamic batch and static image sizes, exported by torch's dynamo exporter at
opset >= 18, and is then run by onnxruntime on seeded inputs at batch 1 and 3 and compared with PyTorch: the export
fails, naming the graph, when the max abs difference exceeds the tolerance (1e-4). `manifest.json` records the task,
the graphs (inputs/outputs with roles, dtypes, shapes, value ranges, domain names), the image size, the pre/post-
processing, example images, the source checkpoint (path and sha256), the i2i/torch/onnx versions, the opset and the
parity figures. The folder is written beside its destination and renamed into place, so a failed export never
leaves a half-written folder behind and a running app never reads one.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

import i2i
from i2i.data.images import DatasetError
from i2i.engine.inference import frozen, load_run, resolve_checkpoint
from i2i.fileio import atomic_write_text
from i2i.serving import MANIFEST_NAME, ExportError, GraphSpec, Manifest, check_feed, random_feed, read_manifest
from i2i.tasks import TASKS, task_class
from i2i.tasks.base import ExportGraph, Task
from i2i.weights import UntrustedCheckpointError

DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-4
PARITY_BATCHES = (1, 3)
EXPORT_BATCH = 2  # torch.export specialises sizes 0 and 1; tracing at 2 keeps the batch symbolic
PREPROCESSING = {
    "decode": "any PIL mode -> 8-bit RGB (alpha composited on black), EXIF orientation applied",
    "resize": "shorter side to image_size (bilinear, antialiased), centre crop to image_size x image_size",
    "input_range": [-1.0, 1.0],
    "output": "clip to [-1, 1], (x + 1) * 127.5, round to uint8",
}


class ParityError(ExportError):
    """onnxruntime's output differs from PyTorch's by more than the tolerance."""


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _torch_inputs(spec: GraphSpec, feed: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(feed[s.name])) for s in spec.inputs)


def _as_tuple(outputs: Any) -> tuple[torch.Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def export_onnx(graph: ExportGraph, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """One graph -> one .onnx file with a dynamic batch (all inputs share it)."""
    spec = graph.spec
    batch = torch.export.Dim("batch", min=1, max=1024)
    example = _torch_inputs(spec, random_feed(spec, EXPORT_BATCH, seed=0))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's progress chatter and deprecation notes
        program = torch.onnx.export(
            graph.module.eval(), example, dynamo=True, opset_version=opset, external_data=False, verbose=False,
            input_names=[s.name for s in spec.inputs], output_names=[s.name for s in spec.outputs],
            dynamic_shapes=(tuple({0: batch} for _ in spec.inputs),),  # forward(*inputs): one varargs entry
        )
        program.save(str(path), external_data=False)


def verify_onnx(graph: ExportGraph, path: Path, tolerance: float = DEFAULT_TOLERANCE,
                batches: tuple[int, ...] = PARITY_BATCHES) -> dict[str, float]:
    """Max abs difference between onnxruntime and PyTorch per batch size; ParityError above `tolerance`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec, diffs = graph.spec, {}
    for batch in batches:
        feed = random_feed(spec, batch, seed=1000 + batch)
        with torch.no_grad():
            expected = [t.numpy() for t in _as_tuple(graph.module(*_torch_inputs(spec, feed)))]
        got = session.run([s.name for s in spec.outputs], feed)
        diffs[f"batch_{batch}"] = max(float(np.abs(e - g).max()) for e, g in zip(expected, got))
    worst = max(diffs.values())
    if not worst <= tolerance:  # also catches NaN
        raise ParityError(f"graph '{spec.name}': onnxruntime differs from PyTorch by {worst:.3g} (> tolerance "
                          f"{tolerance:g}) at {diffs}; the export is not trustworthy")
    return diffs


def _copy_examples(task: Task, folder: Path, max_per_label: int) -> list[dict[str, str]]:
    (folder / "examples").mkdir()
    examples = []
    for i, (path, label) in enumerate(task.example_images(max_per_label)):
        name = f"examples/{i:02d}_{label}{Path(path).suffix.lower()}"
        shutil.copyfile(path, folder / name)
        examples.append({"file": name, "label": label})
    return examples


def export_model(task: Task, nets: dict[str, torch.nn.Module], out: str | os.PathLike, *, source: Path,
                 opset: int = DEFAULT_OPSET, tolerance: float = DEFAULT_TOLERANCE, examples_per_label: int = 2,
                 graphs: Sequence[str] | None = None, log=print) -> Manifest:
    """Writes `out/` (one .onnx per graph — all of the task's, or those named in `graphs` —, examples/,
    manifest.json) and returns its manifest."""
    if opset < 18:
        raise ExportError(f"opset {opset} is not supported: use >= 18 (opset 17 exports were rejected by onnxruntime)")
    declared = task.export_graphs(nets)
    if graphs is not None:
        unknown = sorted(set(graphs) - {g.spec.name for g in declared})
        if unknown:
            raise ExportError(f"unknown graph(s) {unknown}; task '{task.name}' exports {[g.spec.name for g in declared]}")
        declared = [g for g in declared if g.spec.name in graphs]
    out = Path(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        specs, files, parity = {}, {}, {}
        for graph in declared:
            name, start = graph.spec.name, time.perf_counter()
            file = f"{name}.onnx"
            export_onnx(graph, tmp / file, opset)
            parity[name] = verify_onnx(graph, tmp / file, tolerance)
            specs[name], files[name] = graph.spec, file
            log(f"  {name}: {(tmp / file).stat().st_size / 2**20:.1f} MB, onnxruntime vs PyTorch max |diff| "
                + ", ".join(f"{v:.1e} ({k.replace('_', ' ')})" for k, v in parity[name].items())
                + f", {time.perf_counter() - start:.1f} s")
        import onnx
        import onnxruntime

        manifest = Manifest(
            task=task.name, title=task.title, image_size=task.cfg.data.img_size, graphs=specs, files=files,
            examples=_copy_examples(task, tmp, examples_per_label),
            info={"preprocessing": PREPROCESSING,
                  "source": {"checkpoint": str(Path(source).resolve()), "sha256": sha256_of(source)},
                  "versions": {"i2i": i2i.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                               "onnxruntime": onnxruntime.__version__},
                  "opset": opset, "parity": {"tolerance": tolerance, "max_abs_diff": parity},
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        atomic_write_text(tmp / MANIFEST_NAME, json.dumps(manifest.to_json(), indent=1) + "\n")
        _replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return read_manifest(out)


def _replace_folder(new: Path, out: Path) -> None:
    """Put `new` at `out`; an existing `out` is moved aside first and deleted after the rename."""
    old = None
    if out.exists():
        if not (out / MANIFEST_NAME).is_file():
            raise ExportError(f"'{out}' exists and is not an i2i export (no {MANIFEST_NAME}); refusing to replace it")
        old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
        os.rename(out, old)
    os.rename(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def is_current(out: Path, checkpoint: Path) -> bool:
    """True when `out` is an export of exactly `checkpoint` made by this i2i version."""
    try:
        manifest = read_manifest(out)
    except ExportError:
        return False
    source, versions = manifest.info.get("source", {}), manifest.info.get("versions", {})
    return (versions.get("i2i") == i2i.__version__ and source.get("checkpoint") == str(checkpoint.resolve())
            and source.get("sha256") == sha256_of(checkpoint))


class EagerModel:
    """A task's export graphs run by PyTorch with the serving contract's interface (`manifest`, `run`), so
    `python -m i2i.translate --run` treats a run exactly as an export."""

    def __init__(self, task: Task, nets: dict[str, torch.nn.Module]):
        self.graphs = {g.spec.name: g for g in task.export_graphs(nets)}
        specs = {name: g.spec for name, g in self.graphs.items()}
        self.manifest = Manifest(task=task.name, title=task.title, image_size=task.cfg.data.img_size, graphs=specs,
                                 files={name: "" for name in specs})

    @torch.no_grad()
    def run(self, graph: str, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if graph not in self.graphs:
            raise ExportError(f"no graph '{graph}'; this model has {sorted(self.graphs)}")
        spec = self.graphs[graph].spec
        check_feed(spec, feed)
        outputs = _as_tuple(self.graphs[graph].module(*_torch_inputs(spec, feed)))
        return {s.name: t.numpy() for s, t in zip(spec.outputs, outputs)}


def load_for_export(args: argparse.Namespace) -> tuple[Task, dict[str, torch.nn.Module], Path]:
    """(task, inference nets, source checkpoint) from --run/--checkpoint or --task/--official-checkpoint."""
    if args.official_checkpoint:
        if not args.task:
            raise ExportError("--official-checkpoint needs --task (one of: " + ", ".join(TASKS) + ")")
        source = Path(args.official_checkpoint)
        if not source.is_file():
            raise FileNotFoundError(f"official checkpoint not found: '{source}'")
        task, nets = task_class(args.task).load_official(source, img_size=args.img_size, labels=args.labels,
                                                         trust=args.trust_checkpoint, device=torch.device("cpu"))
        return task, frozen(nets, "cpu"), source
    if not args.run and not args.checkpoint:
        raise ExportError("say what to export: --run RUN_DIR (or --checkpoint FILE), or --task T --official-checkpoint F")
    run_dir = Path(args.run) if args.run else Path(args.checkpoint).parent.parent
    run = load_run(run_dir, args.checkpoint)
    return run.task, run.nets, run.checkpoint


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m i2i.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", metavar="DIR", help="a training run (its latest checkpoint unless --checkpoint)")
    parser.add_argument("--checkpoint", metavar="FILE", help="a checkpoint of the run (RUN/checkpoints/NNNNNN.pt)")
    parser.add_argument("--task", choices=sorted(TASKS), help="the task of --official-checkpoint")
    parser.add_argument("--official-checkpoint", metavar="FILE", help="a released checkpoint of the official code")
    parser.add_argument("--img-size", type=int, help="with --official-checkpoint: check the file's image size")
    parser.add_argument("--labels", nargs="+", metavar="NAME", help="with --official-checkpoint: the domain names")
    parser.add_argument("--trust-checkpoint", action="store_true", help="allow a full unpickle of the checkpoint")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: exports/<run name>)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="max abs difference onnxruntime vs PyTorch (default 1e-4)")
    parser.add_argument("--graphs", nargs="+", metavar="NAME", help="export only these graphs (default: all)")
    parser.add_argument("--examples", type=int, default=2, metavar="N", help="example images per domain (default 2)")
    parser.add_argument("--skip-if-current", action="store_true",
                        help="do nothing when OUT already exports this checkpoint (used by `make app`)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.tolerance < 0:
            raise ExportError(f"--tolerance must be >= 0, got {args.tolerance}")
        if args.skip_if_current and args.run and not args.official_checkpoint:
            out = Path(args.out) if args.out else Path("exports") / Path(args.run).name
            checkpoint = resolve_checkpoint(args.run, args.checkpoint)
            if is_current(out, checkpoint):
                print(f"'{out}' is up to date with '{checkpoint}'", file=sys.stderr)
                return 0
        task, nets, source = load_for_export(args)
        name = Path(args.run).name if args.run else source.stem
        out = Path(args.out) if args.out else Path("exports") / name
        print(f"exporting {task.title} from '{source}' to '{out}'", file=sys.stderr)
        manifest = export_model(task, nets, out, source=source, opset=args.opset, tolerance=args.tolerance,
                                examples_per_label=args.examples, graphs=args.graphs, log=lambda m: print(m, file=sys.stderr))
    except ParityError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ExportError, FileNotFoundError, ValueError, DatasetError, UntrustedCheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(manifest.graphs)} graphs and {out / MANIFEST_NAME}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
