"""The shared kit of the procedural datasets: an idempotent, atomic dataset-folder lifecycle and a soft-edged painter.

Every generator goes through `generate_once`, which makes it idempotent and safe: the set is written to a hidden
temp folder beside the target and renamed into place with a marker file recording the parameters; an existing set
with the same marker is left untouched, and a folder holding anything else is never overwritten.
"""
from __future__ import annotations

import colorsys
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from i2i.data.images import DatasetError

MARKER_NAME = ".i2i-synthetic.json"
SUPERSAMPLE = 2
SPLIT_CODES = {"train": 0, "val": 1}


# ------------------------------------------------------------------------------------------- dataset folder lifecycle
def generate_once(root: str | Path, params: dict[str, Any], write: Callable[[Path], None]) -> Path:
    """Create the dataset `root` with `write(tmp_dir)` unless it already holds the set described by `params`.

    Raises DatasetError when `root` is a file, holds a synthetic set made with other parameters, or holds anything
    else (never overwrites a user's data).
    """
    root = Path(root).expanduser().absolute()
    params = json.loads(json.dumps(params))  # tuples -> lists, so it compares equal to the marker read back
    if root.exists():
        if not root.is_dir():
            raise DatasetError(f"cannot write a synthetic dataset to '{root}': it is a file")
        existing = _read_marker(root)
        if existing == params:
            return root
        if existing is not None:
            changed = {k: (existing.get(k), v) for k, v in params.items() if existing.get(k) != v}
            raise DatasetError(
                f"'{root}' holds a synthetic dataset made with other parameters (existing, requested: {changed}); "
                "delete it or choose another folder"
            )
        if any(root.iterdir()):
            raise DatasetError(
                f"'{root}' already exists and is not an i2i synthetic dataset (no {MARKER_NAME}); refusing to write "
                "into it. Choose an empty or new folder"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0o700 mode would survive the rename; mkdir honours the user's umask.
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        write(tmp)
        (tmp / MARKER_NAME).write_text(json.dumps(params, indent=1) + "\n", encoding="utf-8")
        _publish(tmp, root, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _read_marker(root: Path) -> dict[str, Any] | None:
    marker = root / MARKER_NAME
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"synthetic-dataset marker '{marker}' is unreadable ({error}); delete '{root}'") from error


def _publish(tmp: Path, root: Path, params: dict[str, Any]) -> None:
    """Rename the finished set into place; tolerate a concurrent writer (e.g. another DDP rank) that finished first."""
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()  # renaming onto an existing (even empty) folder is not portable
    try:
        os.rename(tmp, root)
    except OSError:
        if _read_marker(root) != params:
            raise


# ------------------------------------------------------------------------------------------------------- rendering kit
def hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    """An RGB colour (3,) float32 in [0, 1] from HSV components in [0, 1] (hue wraps around)."""
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), dtype=np.float32)


def smoothstep(edge0: float, edge1: float, t: np.ndarray) -> np.ndarray:
    """0 below edge0, 1 above edge1, a smooth cubic ramp in between."""
    s = np.clip((t - edge0) / (edge1 - edge0), 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


@dataclass(frozen=True)
class Pose:
    """Similarity transform of a drawing: centre (cx, cy) and scale in image units ([-1, 1] across), angle in rad."""

    cx: float = 0.0
    cy: float = 0.0
    scale: float = 1.0
    angle: float = 0.0


class Painter:
    """Paints soft-edged shapes in a posed local frame on an (H, W, 3) float canvas in [0, 1].

    Image coordinates span [-1, 1] (x right, y down); shapes are given in the local frame of `pose`, so one drawing
    can be shifted, rotated and scaled as a whole. Edges are one render pixel wide (signed distance -> coverage).
    """

    def __init__(self, canvas: np.ndarray, pose: Pose):
        self.canvas = canvas
        size = canvas.shape[0]
        coords = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
        x, y = coords[None, :] - pose.cx, coords[:, None] - pose.cy
        cos, sin, scale = float(np.cos(pose.angle)), float(np.sin(pose.angle)), float(pose.scale)
        self.u = (cos * x + sin * y) / scale
        self.v = (-sin * x + cos * y) / scale
        self.pixel = 2.0 / size / scale

    def coverage(self, sdf: np.ndarray) -> np.ndarray:
        """Signed distance (local units, negative inside) -> alpha in [0, 1] with a one-pixel soft edge."""
        return np.clip(0.5 - sdf / self.pixel, 0.0, 1.0)

    def ellipse_sdf(self, cx: float, cy: float, a: float, b: float, angle: float = 0.0) -> np.ndarray:
        """Approximate signed distance to an ellipse with semi-axes (a, b), rotated by `angle`: (f - 1) / |grad f|."""
        cos, sin, cx, cy, a, b = float(np.cos(angle)), float(np.sin(angle)), float(cx), float(cy), float(a), float(b)
        du, dv = self.u - cx, self.v - cy
        p, q = (cos * du + sin * dv) / a, (-sin * du + cos * dv) / b
        radius = np.sqrt(p * p + q * q)
        grad = np.sqrt((p / a) ** 2 + (q / b) ** 2) / np.maximum(radius, 1e-6)
        return (radius - 1.0) / np.maximum(grad, 1e-6)

    def polygon_sdf(self, vertices: Sequence[tuple[float, float]]) -> np.ndarray:
        """Signed distance to a convex polygon (vertices in either winding order): the max over its edge half-planes."""
        points = np.asarray(vertices, dtype=np.float32)
        centre = points.mean(axis=0)
        sdf = np.full_like(self.u, -np.inf)
        for start, end in zip(points, np.roll(points, -1, axis=0)):
            normal = np.array([end[1] - start[1], start[0] - end[0]], dtype=np.float32)
            normal /= np.linalg.norm(normal)
            if np.dot(centre - start, normal) > 0:  # make the normal point outwards
                normal = -normal
            sdf = np.maximum(sdf, (self.u - start[0]) * normal[0] + (self.v - start[1]) * normal[1])
        return sdf

    def fill(self, alpha: np.ndarray, colour: np.ndarray) -> None:
        """Composite `colour` ((3,) or (H, W, 3)) over the canvas with per-pixel `alpha` (H, W)."""
        alpha = alpha[..., None]
        self.canvas *= 1.0 - alpha
        self.canvas += alpha * colour

    def ellipse(self, colour: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float = 0.0) -> np.ndarray:
        """Paint an ellipse; returns its coverage (H, W) for use as a texture mask."""
        alpha = self.coverage(self.ellipse_sdf(cx, cy, a, b, angle))
        self.fill(alpha, colour)
        return alpha

    def polygon(self, colour: np.ndarray, vertices: Sequence[tuple[float, float]]) -> np.ndarray:
        alpha = self.coverage(self.polygon_sdf(vertices))
        self.fill(alpha, colour)
        return alpha


def gradient_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) float32 canvas: a linear gradient between two random colours along a random direction."""
    colours = [hsv(rng.random(), rng.uniform(0.1, 0.6), rng.uniform(0.3, 0.95)) for _ in range(2)]
    direction = rng.uniform(0.0, 2.0 * np.pi)
    coords = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    along = float(np.cos(direction)) * coords[None, :] + float(np.sin(direction)) * coords[:, None]
    t = along / (2.0 * 2.0 ** 0.5) + 0.5  # in [0, 1] over the square for any direction
    return colours[0] + t[..., None] * (colours[1] - colours[0])


def downsample_to_uint8(canvas: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter an (H, W, 3) canvas in [0, 1] by `factor` and quantise to uint8."""
    size = canvas.shape[0] // factor
    pooled = canvas.reshape(size, factor, size, factor, 3).mean(axis=(1, 3))
    return np.clip(np.rint(pooled * 255.0), 0, 255).astype(np.uint8)


def save_png(pixels: np.ndarray, path: Path) -> None:
    Image.fromarray(pixels).save(path, format="PNG")



def check_positive(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


