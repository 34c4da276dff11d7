"""Face-recognition evaluation as a service (torch-free): verification scores of two faces, and Rank-1 / VR@FAR of an
uploaded set, with an exported feature graph (a graph whose output has the role `embedding`, e.g. the NIR-VIS
task's `face_features`).

A set is a zip holding `gallery/<identity>/<file>` and `probe/<identity>/<file>` images (identity = the folder name).
Zips are read defensively: entries with absolute paths or `..` are refused, as are more than MAX_FILES images, more
than MAX_UNCOMPRESSED bytes once unpacked, and anything not in that layout, each with a one-line message.
"""
from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from evaluators.face_recognition import cosine_scores, far_key, rank1_vr
from i2i.data.images import IMG_EXTENSIONS
from i2i.imaging import ImageInputError, decode_image, read_bytes, to_model_input
from i2i.serving import GraphRunner, GraphSpec

MAX_FILES = 5000
MAX_UNCOMPRESSED = 500 * 2**20
MAX_ZIP_BYTES = 200 * 2**20
FARS = (1e-2, 1e-3)
ROLES = ("gallery", "probe")


def feature_graph(model: GraphRunner) -> GraphSpec | None:
    """The export's graph from one image to an embedding, if it has one."""
    for graph in model.manifest.graphs.values():
        if len(graph.inputs) == 1 and graph.inputs[0].role == "image" and graph.outputs[0].role == "embedding":
            return graph
    return None


def embed(model: GraphRunner, graph: GraphSpec, images: list[Any], batch: int = 32) -> np.ndarray:
    """Features (N, D) of uploads (bytes or paths), preprocessed as the graph's image input wants."""
    spec = graph.inputs[0]
    arrays = [to_model_input(decode_image(image), spec.shape[2], channels=spec.shape[1]) for image in images]
    out = [model.run(graph.name, {spec.name: np.concatenate(arrays[i:i + batch])})[graph.outputs[0].name]
           for i in range(0, len(arrays), batch)]
    return np.concatenate(out)


def verify(model: GraphRunner, graph: GraphSpec, face_a: Any, face_b: Any) -> float:
    """The cosine similarity of two faces' features, in [-1, 1]."""
    features = embed(model, graph, [face_a, face_b])
    return float(cosine_scores(features[:1], features[1:])[0, 0])


def read_face_set(data: bytes | str) -> dict[str, list[tuple[str, bytes]]]:
    """{"gallery": [(identity, image bytes)], "probe": [...]} from a zip; ImageInputError for any problem."""
    raw = data if isinstance(data, (bytes, bytearray)) else read_bytes(data, max_bytes=MAX_ZIP_BYTES)
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile:
        raise ImageInputError("the upload is not a zip file (expected gallery/<id>/<file> and probe/<id>/<file>)") \
            from None
    entries = [info for info in archive.infolist() if not info.is_dir()]
    if len(entries) > MAX_FILES:
        raise ImageInputError(f"the zip holds {len(entries)} files; the limit is {MAX_FILES}")
    if sum(info.file_size for info in entries) > MAX_UNCOMPRESSED:
        raise ImageInputError(f"the zip unpacks to more than {MAX_UNCOMPRESSED // 2**20} MB; refused")
    sets: dict[str, list[tuple[str, bytes]]] = {role: [] for role in ROLES}
    for info in entries:
        path = PurePosixPath(info.filename.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or info.filename.startswith(("/", "\\")):
            raise ImageInputError(f"zip entry '{info.filename}' points outside the archive; refused")
        parts = [p for p in path.parts if p not in ("", ".")]
        if parts and parts[0] == "__MACOSX" or path.name.startswith("."):
            continue
        if len(parts) >= 3 and parts[-3] in ROLES and path.suffix.lower() in IMG_EXTENSIONS:
            sets[parts[-3]].append((parts[-2], archive.read(info)))
    missing = [role for role in ROLES if not sets[role]]
    if missing:
        raise ImageInputError(f"the zip has no {' and no '.join(missing)} images: expected gallery/<id>/<file> and "
                              "probe/<id>/<file> (identity = folder name)")
    return sets


def evaluate_set(model: GraphRunner, graph: GraphSpec, data: bytes | str) -> dict[str, Any]:
    """Rank-1 and VR@FAR (percent) of a zipped gallery/probe set under the export's features."""
    sets = read_face_set(data)
    features = {role: embed(model, graph, [image for _, image in sets[role]]) for role in ROLES}
    ids = {role: [identity for identity, _ in sets[role]] for role in ROLES}
    if not set(ids["probe"]) & set(ids["gallery"]):
        raise ImageInputError("no probe identity appears in the gallery: nothing can be matched")
    scores = rank1_vr(features["probe"], ids["probe"], features["gallery"], ids["gallery"], FARS)
    return {"rank1": 100 * scores["rank1"], **{far_key(far): 100 * scores[far_key(far)] for far in FARS},
            "probes": len(ids["probe"]), "gallery": len(ids["gallery"]),
            "identities": len(set(ids["gallery"])), "probes_without_gallery_identity":
                scores["probes_without_gallery_identity"]}


def summary_markdown(result: Mapping[str, Any]) -> str:
    return (f"| Rank-1 | VR@FAR=1% | VR@FAR=0.1% | probes | gallery |\n|---:|---:|---:|---:|---:|\n"
            f"| {result['rank1']:.2f} | {result['vr_far_1e-2']:.2f} | {result['vr_far_1e-3']:.2f} | "
            f"{result['probes']} | {result['gallery']} |")

