"""The street generator's rendering kit: the real Cityscapes labelIds it paints, the canvas that rasterises label map,
instance map and supersampled photo together, and small colour helpers (see `streets.py` for the scene model)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from i2i.data.cityscapes_labels import LABEL_IDS

UNLABELED, EGO_VEHICLE, RECTIFICATION_BORDER, OUT_OF_ROI = 0, 1, 2, 3
ROAD, SIDEWALK, BUILDING, POLE = LABEL_IDS["road"], LABEL_IDS["sidewalk"], LABEL_IDS["building"], LABEL_IDS["pole"]
TRAFFIC_LIGHT, TRAFFIC_SIGN = LABEL_IDS["traffic light"], LABEL_IDS["traffic sign"]
VEGETATION, TERRAIN, SKY = LABEL_IDS["vegetation"], LABEL_IDS["terrain"], LABEL_IDS["sky"]
PERSON, CAR = LABEL_IDS["person"], LABEL_IDS["car"]


@dataclass(frozen=True)
class Waves:
    """A smooth random texture: the mean of a few plane waves cos(fa * a + fb * b + phase); values in [-1, 1]."""

    fa: np.ndarray
    fb: np.ndarray
    phase: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, count: int, low: float, high: float) -> "Waves":
        """`count` waves with spatial frequencies (radians per coordinate unit) in [low, high], random directions."""
        frequency, direction = rng.uniform(low, high, count), rng.uniform(0.0, 2.0 * np.pi, count)
        phase = rng.uniform(0.0, 2.0 * np.pi, count)
        return cls(*(values.astype(np.float32) for values in (frequency * np.cos(direction),
                                                              frequency * np.sin(direction), phase)))

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        total = sum(np.cos(fa * a + fb * b + ph) for fa, fb, ph in zip(self.fa, self.fb, self.phase))
        return total / np.float32(len(self.fa))


@dataclass(frozen=True)
class Window:
    """A rectangle of canvas pixels and the scene coordinates of their centres: u (1, w), v (h, 1)."""

    rows: slice
    cols: slice
    u: np.ndarray
    v: np.ndarray


Pick = Callable[[np.ndarray], np.ndarray]
Shader = Callable[[Pick], np.ndarray]


class StreetCanvas:
    """Label, instance and (optionally) colour layers of one scene, painted back to front.

    Scene coordinates are in image heights: u to the right in [0, W/H], v down in [0, 1]; pixel (r, c) samples the
    point ((c + 0.5) / H, (r + 0.5) / H). label (H, W) uint8 labelIds, instance (H, W) int32 ids, rgb (H, W, 3)
    float32 in [0, 1] (before the camera response), or None when only the maps are wanted: shaders then never run.
    """

    def __init__(self, width: int, height: int, with_colour: bool):
        self.pixels_per_unit = height
        self.u = (np.arange(width, dtype=np.float32) + 0.5) / height
        self.v = (np.arange(height, dtype=np.float32) + 0.5) / height
        self.label = np.full((height, width), UNLABELED, np.uint8)
        self.instance = np.zeros((height, width), np.int32)
        self.rgb = np.zeros((height, width, 3), np.float32) if with_colour else None

    def full(self) -> Window:
        return Window(slice(None), slice(None), self.u[None, :], self.v[:, None])

    def window(self, u0: float, u1: float, v0: float, v1: float) -> Window | None:
        """The pixels whose centres may fall in [u0, u1] x [v0, v1]; None when that is off the canvas."""
        n = self.pixels_per_unit
        c0, c1 = max(0, int(np.floor(u0 * n))), min(len(self.u), int(np.ceil(u1 * n)))
        r0, r1 = max(0, int(np.floor(v0 * n))), min(len(self.v), int(np.ceil(v1 * n)))
        if c0 >= c1 or r0 >= r1:
            return None
        return Window(slice(r0, r1), slice(c0, c1), self.u[None, c0:c1], self.v[r0:r1, None])

    def paint(self, window: Window, mask: np.ndarray, label_id: int, instance_id: int, shade: Shader | None) -> None:
        """Set label and instance ids under `mask` (bool, broadcastable to the window) and, on a canvas with
        colour, the colours `shade(pick)` returns there: (n, 3) or (3,) for the n masked pixels, where pick(values)
        gathers any window-broadcastable array ((h, w)-like, or (h, w, 3)-like) at those pixels. shade None keeps
        the colours (an annotation-only label)."""
        shape = (window.v.shape[0], window.u.shape[1])
        mask = np.broadcast_to(mask, shape)
        if not mask.any():
            return
        np.copyto(self.label[window.rows, window.cols], label_id, where=mask)
        np.copyto(self.instance[window.rows, window.cols], instance_id, where=mask)
        if self.rgb is not None and shade is not None:
            def pick(values: np.ndarray) -> np.ndarray:
                values = np.asarray(values)
                return np.broadcast_to(values, shape + values.shape[2:] if values.ndim == 3 else shape)[mask]

            self.rgb[window.rows, window.cols][mask] = shade(pick)

    def darken(self, window: Window, amount: np.ndarray) -> None:
        """Multiply the colours by 1 - amount (window-broadcastable, in [0, 1]); labels unchanged (cast shadows)."""
        if self.rgb is not None:
            self.rgb[window.rows, window.cols] *= (1.0 - amount)[..., None]


def jitter(rng: np.random.Generator, colour: np.ndarray, amount: float) -> np.ndarray:
    """A colour with each channel scaled by an independent factor in [1 - amount, 1 + amount]."""
    return np.clip(colour * rng.uniform(1.0 - amount, 1.0 + amount, 3), 0.0, 1.0).astype(np.float32)


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """Depths drawn log-uniformly: as many things per depth octave, as a street seen in perspective has."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def tile(colour: np.ndarray, count: int) -> np.ndarray:
    return np.tile(np.asarray(colour, np.float32), (count, 1))
