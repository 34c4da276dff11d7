"""The serving contract: what an exported model is, and running it without torch.

A task declares its export graphs as `GraphSpec`s (inputs and outputs as `TensorSpec`s: name, role, dtype, shape,
value range, choices); `python -m i2i.export` writes one ONNX file per graph and a `manifest.json` describing them;
`ExportedModel` runs them with onnxruntime; `translate()` turns what a person gives (images, a domain name, a seed and
a number of outputs) into the graph's feed and its output into pictures. Neither this module nor the app knows any
task: an input's `role` decides how it is filled and which widget the app shows.

Roles: `image` (an upload, fitted to the spec's size, channels from the shape), `domain` (a name from `choices`,
fed as its index), `latent` (a seeded standard-normal draw; one row per requested output), `label_map` (an upload
of label ids or a map colour-coded with the spec's `palette`; `choices` names the ids), `style` (a vector from
another graph; API use only), `embedding` (an output feature vector, e.g. a face recognizer's). Shapes use "N" for
the dynamic batch.

numpy + PIL + onnxruntime only: the app's process never imports torch.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
from PIL import Image

from i2i.imaging import decode_image, decode_label_map, to_model_input, to_pixels

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "i2i-export"
MANIFEST_VERSION = 1
BATCH = "N"
ROLES = ("image", "domain", "latent", "style", "label_map", "embedding")
DTYPES = ("float32", "int64")
MAX_OUTPUTS = 16


class ExportError(ValueError):
    """An export folder or manifest is missing or malformed, or a graph was fed wrongly; the message names it."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. `shape` holds ints and "N" (the dynamic batch); `range` is the nominal value range
    of floats; `choices` names the values 0..K-1 of a `domain` input."""

    name: str
    role: str
    dtype: str
    shape: tuple[int | str, ...]
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()
    title: str = ""
    palette: tuple[tuple[int, int, int], ...] = ()  # label_map: the colour of each id

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ExportError(f"tensor '{self.name}': role {self.role!r} is not one of {ROLES}")
        if self.dtype not in DTYPES:
            raise ExportError(f"tensor '{self.name}': dtype {self.dtype!r} is not one of {DTYPES}")
        if not self.shape or self.shape[0] != BATCH or not all(isinstance(d, int) and d > 0 for d in self.shape[1:]):
            raise ExportError(f"tensor '{self.name}': shape {self.shape} must be ('N', positive ints...)")
        if self.role == "domain" and (self.dtype != "int64" or not self.choices):
            raise ExportError(f"tensor '{self.name}': a domain input is int64 with named choices")
        if self.role == "image" and (len(self.shape) != 4 or self.shape[1] not in (1, 3)):
            raise ExportError(f"tensor '{self.name}': an image is (N, 1 or 3, H, W), got {self.shape}")
        if self.role == "label_map" and (self.dtype != "int64" or len(self.shape) != 3 or not self.palette):
            raise ExportError(f"tensor '{self.name}': a label map is int64 (N, H, W) with a palette")

    @property
    def label(self) -> str:
        return self.title or self.name

    def to_json(self) -> dict[str, Any]:
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        data["palette"] = [list(c) for c in self.palette]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TensorSpec":
        return cls(name=data["name"], role=data["role"], dtype=data["dtype"], shape=tuple(data["shape"]),
                   range=tuple(data["range"]) if data.get("range") is not None else None,
                   choices=tuple(data.get("choices", ())), title=data.get("title", ""),
                   palette=tuple(tuple(c) for c in data.get("palette", ())))


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph. `ui` graphs are the modes a person picks in the app; the others (a style encoder alone,
    say) are exported for programs."""

    name: str
    title: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    ui: bool = True
    description: str = ""

    def input(self, role: str) -> list[TensorSpec]:
        return [spec for spec in self.inputs if spec.role == role]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "ui": self.ui, "description": self.description,
                "inputs": [s.to_json() for s in self.inputs], "outputs": [s.to_json() for s in self.outputs]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "GraphSpec":
        return cls(name=data["name"], title=data.get("title", data["name"]), ui=bool(data.get("ui", True)),
                   description=data.get("description", ""),
                   inputs=tuple(TensorSpec.from_json(s) for s in data["inputs"]),
                   outputs=tuple(TensorSpec.from_json(s) for s in data["outputs"]))


def random_feed(graph: GraphSpec, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs of every graph input at `batch` (parity checks): images and other ranged floats uniform in
    their range, latents and styles standard normal, domains uniform over the choices."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in graph.inputs:
        shape = (batch, *spec.shape[1:])
        if spec.role == "domain":
            feed[spec.name] = rng.integers(0, len(spec.choices), size=shape, dtype=np.int64)
        elif spec.role == "label_map":  # blocks of random labels: a map with regions and boundaries
            coarse = rng.integers(0, len(spec.palette), size=(batch, -(-shape[1] // 8), -(-shape[2] // 8)))
            feed[spec.name] = coarse.repeat(8, 1).repeat(8, 2)[:, :shape[1], :shape[2]].astype(np.int64)
        elif spec.range is not None:
            feed[spec.name] = rng.uniform(*spec.range, size=shape).astype(np.float32)
        else:
            feed[spec.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def check_feed(graph: GraphSpec, feed: Mapping[str, np.ndarray]) -> int:
    """Raises ExportError unless `feed` has exactly the graph's inputs with their dtypes, shapes and one batch size;
    returns the batch size."""
    names = [s.name for s in graph.inputs]
    if sorted(feed) != sorted(names):
        raise ExportError(f"graph '{graph.name}' takes inputs {names}, got {sorted(feed)}")
    batches = set()
    for spec in graph.inputs:
        value = feed[spec.name]
        if value.dtype != np.dtype(spec.dtype) or tuple(value.shape[1:]) != tuple(spec.shape[1:]):
            raise ExportError(f"graph '{graph.name}' input '{spec.name}': expected {spec.dtype} of shape "
                              f"{tuple(spec.shape)}, got {value.dtype} of shape {value.shape}")
        limit = len(spec.choices) if spec.role == "domain" else len(spec.palette) if spec.role == "label_map" else None
        if limit is not None and value.size and (value.min() < 0 or value.max() >= limit):
            raise ExportError(f"graph '{graph.name}' input '{spec.name}': values must be in [0, {limit})")
        batches.add(value.shape[0])
    if len(batches) != 1 or 0 in batches:
        raise ExportError(f"graph '{graph.name}': all inputs need the same non-zero batch size, got {sorted(batches)}")
    return batches.pop()


# ----------------------------------------------------------------------------------------------------------------------
# Manifests


@dataclass
class Manifest:
    """What `manifest.json` holds (see `python -m i2i.export`)."""

    task: str
    title: str
    image_size: int
    graphs: dict[str, GraphSpec]
    files: dict[str, str]  # graph name -> .onnx file, relative to the folder
    examples: list[dict[str, str]] = field(default_factory=list)  # {"file": relative path, "label": caption}
    info: dict[str, Any] = field(default_factory=dict)  # preprocessing, source, versions, parity

    @property
    def ui_graphs(self) -> list[GraphSpec]:
        return [g for g in self.graphs.values() if g.ui]

    def to_json(self) -> dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "task": self.task, "title": self.title,
                "image_size": self.image_size,
                "graphs": [{**g.to_json(), "file": self.files[name]} for name, g in self.graphs.items()],
                "examples": self.examples, **self.info}


def read_manifest(folder: str | os.PathLike) -> Manifest:
    """The manifest of an export folder; ExportError naming the file when it is missing or malformed."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ExportError(f"no export at '{folder}': '{path}' does not exist (write one with python -m i2i.export)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != MANIFEST_FORMAT or data.get("version") != MANIFEST_VERSION:
            raise ExportError(f"'{path}' is not an i2i export manifest version {MANIFEST_VERSION} (format "
                              f"{data.get('format')!r}, version {data.get('version')!r})")
        graphs = {g["name"]: GraphSpec.from_json(g) for g in data["graphs"]}
        files = {g["name"]: g["file"] for g in data["graphs"]}
        reserved = {"format", "version", "task", "title", "image_size", "graphs", "examples"}
        manifest = Manifest(task=data["task"], title=data["title"], image_size=int(data["image_size"]), graphs=graphs,
                            files=files, examples=list(data.get("examples", [])),
                            info={k: v for k, v in data.items() if k not in reserved})
    except ExportError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        raise ExportError(f"'{path}' is malformed ({type(error).__name__}: {error})") from None
    for name, file in manifest.files.items():
        if not _inside(folder, folder / file) or not (folder / file).is_file():
            raise ExportError(f"'{path}': graph '{name}' names file '{file}', which is not a file inside '{folder}'")
    for example in manifest.examples:
        if not _inside(folder, folder / example.get("file", "")):
            raise ExportError(f"'{path}': example '{example.get('file')}' is not inside '{folder}'")
    return manifest


def _inside(folder: Path, path: Path) -> bool:
    """True when `path` resolves to a location inside `folder` (no `..` or symlink escapes)."""
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def find_exports(root: str | os.PathLike) -> list[Path]:
    """Export folders at `root`: `root` itself when it holds a manifest, else its sub-folders that do (sorted)."""
    root = Path(root)
    if (root / MANIFEST_NAME).is_file():
        return [root]
    if not root.is_dir():
        raise ExportError(f"exports folder '{root}' does not exist")
    found = sorted(p.parent for p in root.glob(f"*/{MANIFEST_NAME}"))
    if not found:
        raise ExportError(f"no exports under '{root}' (no {MANIFEST_NAME} in it or its sub-folders); write one with "
                          "python -m i2i.export --run RUN --out DIR")
    return found


# ----------------------------------------------------------------------------------------------------------------------
# Running exported graphs


class GraphRunner(Protocol):
    """What `translate` needs: a manifest and a way to run one of its graphs on a numpy feed."""

    manifest: Manifest

    def run(self, graph: str, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class ExportedModel:
    """An export folder run with onnxruntime (CPU): `run(graph, feed) -> {output name: array}`.

    Sessions are created on first use and shared by threads (onnxruntime sessions are thread-safe for `run`).
    """

    def __init__(self, folder: str | os.PathLike, *, threads: int | None = None):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.threads = threads
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()

    def session(self, graph: str):
        if graph not in self.manifest.graphs:
            raise ExportError(f"'{self.folder}' has no graph '{graph}'; it has {sorted(self.manifest.graphs)}")
        with self._lock:
            if graph not in self._sessions:
                import onnxruntime as ort

                options = ort.SessionOptions()
                if self.threads:
                    options.intra_op_num_threads = self.threads
                path = self.folder / self.manifest.files[graph]
                self._sessions[graph] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            return self._sessions[graph]

    def run(self, graph: str, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.manifest.graphs.get(graph)
        if spec is None:
            raise ExportError(f"'{self.folder}' has no graph '{graph}'; it has {sorted(self.manifest.graphs)}")
        check_feed(spec, feed)
        outputs = self.session(graph).run([s.name for s in spec.outputs], dict(feed))
        return {s.name: value for s, value in zip(spec.outputs, outputs)}


def translate(model: GraphRunner, graph: str, *, images: Mapping[str, Any] | None = None,
              choices: Mapping[str, str] | None = None, seed: int = 0, num: int = 1) -> list[np.ndarray]:
    """Run a UI graph on what a person gives; returns `num` (latent graphs) or 1 pictures (H, W, 3) uint8.

    `images` maps image and label-map input names to uploads (bytes, a path, or a PIL image for images); `choices`
    maps domain input names to
    a choice name; latents are drawn from `seed` (output k of seed s is the same whatever `num` is).
    Raises ImageInputError (bad upload) or ExportError (a missing input, an unknown choice).
    """
    spec = model.manifest.graphs.get(graph)
    if spec is None:
        raise ExportError(f"no graph '{graph}'; this model has {sorted(model.manifest.graphs)}")
    images, choices = dict(images or {}), dict(choices or {})
    latents = spec.input("latent")
    if not 1 <= num <= MAX_OUTPUTS:
        raise ExportError(f"the number of outputs must be in [1, {MAX_OUTPUTS}], got {num}")
    batch = num if latents else 1
    feed: dict[str, np.ndarray] = {}
    for tensor in spec.inputs:
        if tensor.role == "image":
            upload = images.get(tensor.name)
            if upload is None:
                raise ExportError(f"'{spec.title}' needs an image for '{tensor.label}'")
            image = upload if isinstance(upload, Image.Image) else decode_image(upload, name=None)
            x = to_model_input(image, tensor.shape[2], channels=tensor.shape[1])
            feed[tensor.name] = np.repeat(x, batch, axis=0)
        elif tensor.role == "label_map":
            upload = images.get(tensor.name)
            if upload is None:
                raise ExportError(f"'{spec.title}' needs a label map for '{tensor.label}'")
            ids = decode_label_map(upload, tensor.palette, tensor.shape[1], tensor.shape[2])
            feed[tensor.name] = np.repeat(ids, batch, axis=0)
        elif tensor.role == "domain":
            name = choices.get(tensor.name)
            if name not in tensor.choices:
                raise ExportError(f"'{tensor.label}' must be one of {list(tensor.choices)}, got {name!r}")
            feed[tensor.name] = np.full((batch,), tensor.choices.index(name), dtype=np.int64)
        elif tensor.role == "latent":
            feed[tensor.name] = seeded_latents(seed, batch, tensor.shape[1:])
        else:
            raise ExportError(f"graph '{graph}' input '{tensor.name}' (role {tensor.role}) is for programs: call "
                              "run() with the array")
    output = next(s for s in spec.outputs if s.role == "image")
    return list(to_pixels(model.run(graph, feed)[output.name]))


def seeded_latents(seed: int, count: int, shape: Sequence[int]) -> np.ndarray:
    """(count, *shape) float32 standard normal; row k depends only on (seed, k)."""
    return np.stack([np.random.default_rng([seed, k]).standard_normal(tuple(shape)) for k in range(count)]
                    ).astype(np.float32)
