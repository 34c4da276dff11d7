"""The things of a street scene, standing on the ground plane at their depth: cars, pedestrians, poles with signs and
lights, trees. Each paints its label, instance id and shaded photo pixels onto a `StreetCanvas` (see `streets.py`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from i2i.data.synthetic.common import hsv
from i2i.data.synthetic.street_canvas import (CAR, PERSON, POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, Pick,
                                              StreetCanvas, Window, jitter, tile)

if TYPE_CHECKING:  # the scene description imports the things
    from i2i.data.synthetic.streets import Street


@dataclass(frozen=True)
class GroundFrame:
    """A thing's pixels in its own frame: a (1, w) lateral and b (h, 1) height offsets in world units from its foot
    point, and its nearness t = 1 / depth."""

    window: Window
    a: np.ndarray
    b: np.ndarray
    t: float


def _ground_frame(canvas: StreetCanvas, street: Street, x: float, z: float, half_width: float,
                  height: float) -> GroundFrame | None:
    t = 1.0 / z
    foot_u, foot_v = street.vanish_u + x * t, street.horizon + street.camera_height * t
    window = canvas.window(foot_u - half_width * t, foot_u + half_width * t, foot_v - height * t, foot_v + 0.1 * t)
    if window is None:
        return None
    return GroundFrame(window, (window.u - foot_u) / np.float32(t), (foot_v - window.v) / np.float32(t), t)


def _next_instance(counts: dict[int, int], label_id: int) -> int:
    """The official thing encoding: labelId * 1000 + k, k = 0, 1, ... in painting order."""
    k = counts.get(label_id, 0)
    counts[label_id] = k + 1
    return label_id * 1000 + k


def _sunlit(rgb: np.ndarray, street: Street, facing: np.ndarray) -> np.ndarray:
    """Brighten the faces of a thing turned towards the sun ((n, 3) colours; facing (n,) in [-1, 1], left to right)."""
    return rgb * (1.0 + street.look.sun * street.look.sun_side * 0.5 * np.clip(facing, -1.0, 1.0))[:, None]


CAR_PAINTS = (hsv(0.0, 0.0, 0.9), hsv(0.0, 0.0, 0.08), hsv(0.6, 0.03, 0.6), hsv(0.0, 0.75, 0.6),
              hsv(0.62, 0.7, 0.45), hsv(0.0, 0.0, 0.3), hsv(0.33, 0.5, 0.35), hsv(0.12, 0.6, 0.75))


@dataclass(frozen=True)
class Car:
    """A car seen from behind or ahead: rounded body, tapering cabin with glazing, lamps, plate, wheels, shadow."""

    x: float
    z: float
    width: float
    height: float
    paint_colour: np.ndarray
    lamp_colour: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, x: float, z: float) -> "Car":
        lamp = hsv(0.0, 0.85, 0.8) if rng.random() < 0.7 else hsv(0.13, 0.2, 0.95)  # tail lights or headlights
        return cls(x, z, rng.uniform(0.62, 0.75), rng.uniform(0.5, 0.72),
                   jitter(rng, CAR_PAINTS[rng.integers(len(CAR_PAINTS))], 0.1), lamp)

    def paint(self, canvas: StreetCanvas, street: Street, counts: dict[int, int]) -> None:
        frame = _ground_frame(canvas, street, self.x, self.z, 0.65 * self.width, self.height)
        if frame is None:
            return
        a, b, half, h = frame.a, frame.b, 0.5 * self.width, self.height
        canvas.darken(frame.window, 0.55 * np.clip(1.0 - (a / (1.15 * half)) ** 2 - (b / 0.05) ** 2, 0.0, 1.0))
        body = (np.abs(a) / half) ** 6 + (np.abs(b - 0.36 * h) / (0.26 * h)) ** 6 <= 1.0
        cabin_half = half * (0.88 - 0.3 * (b - 0.55 * h) / (0.45 * h))
        cabin = (b >= 0.55 * h) & (b <= h) & (np.abs(a) <= cabin_half)
        wheels = (b >= 0.0) & (b < 0.17 * h) & (np.abs(a) >= 0.5 * half) & (np.abs(a) <= 0.92 * half)

        def shade(pick: Pick) -> np.ndarray:
            a_, b_, room = pick(a), pick(b), pick(cabin_half) - np.abs(pick(a))
            rgb = tile(self.paint_colour, len(a_))
            glass = pick(cabin) & (room >= 0.05) & (b_ >= 0.6 * h) & (b_ <= h - 0.04)
            rgb[glass] = (0.12 + 0.25 * (b_[glass] - 0.6 * h) / (0.4 * h))[:, None] * street.sky[1]
            rgb[(np.abs(b_ - 0.42 * h) < 0.05 * h) & (np.abs(a_) > 0.68 * half) & (np.abs(a_) < 0.9 * half)] = \
                self.lamp_colour
            rgb[(np.abs(a_) < 0.16 * half) & (np.abs(b_ - 0.25 * h) < 0.045 * h)] = 0.85
            rgb[pick(wheels & ~body)] = 0.05
            return street.look.haze_at(_sunlit(rgb, street, a_ / half), frame.t)

        canvas.paint(frame.window, body | cabin | wheels, CAR, _next_instance(counts, CAR), shade)


@dataclass(frozen=True)
class Person:
    """A pedestrian: head with hair, neck, shirt (torso and arms), trousers (two striding legs), shoes."""

    x: float
    z: float
    height: float
    width: float
    stride: float
    skin: np.ndarray
    hair: np.ndarray
    shirt: np.ndarray
    trousers: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, x: float, z: float) -> "Person":
        height = rng.uniform(0.55, 0.7)
        trousers = hsv(0.6, rng.uniform(0.3, 0.6), rng.uniform(0.2, 0.45)) if rng.random() < 0.5 \
            else hsv(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.08, 0.5))
        return cls(x, z, height, height * rng.uniform(0.28, 0.36), rng.uniform(0.0, 0.6),
                   hsv(rng.uniform(0.04, 0.09), rng.uniform(0.3, 0.55), rng.uniform(0.45, 0.9)),
                   hsv(rng.uniform(0.05, 0.1), rng.uniform(0.2, 0.6), rng.uniform(0.05, 0.5)),
                   hsv(rng.random(), rng.uniform(0.2, 0.85), rng.uniform(0.2, 0.9)), trousers)

    def paint(self, canvas: StreetCanvas, street: Street, counts: dict[int, int]) -> None:
        frame = _ground_frame(canvas, street, self.x, self.z, 0.8 * self.width, self.height)
        if frame is None:
            return
        a, b, h, w = frame.a, frame.b, self.height, self.width
        head = (a / (0.07 * h)) ** 2 + ((b - 0.91 * h) / (0.085 * h)) ** 2 <= 1.0
        neck = (b > 0.8 * h) & (b < 0.85 * h) & (np.abs(a) < 0.035 * h)
        torso = (b >= 0.46 * h) & (b <= 0.82 * h) & (np.abs(a) <= 0.5 * w * (0.75 + 0.25 * (b - 0.46 * h) / (0.36 * h)))
        arms = (b >= 0.5 * h) & (b <= 0.8 * h) & (np.abs(a) > 0.45 * w) & (np.abs(a) <= 0.58 * w)
        spread = 0.2 * w + self.stride * 0.3 * w * np.clip((0.48 * h - b) / (0.48 * h), 0.0, 1.0)
        legs = (b >= 0.0) & (b <= 0.48 * h) & ((np.abs(a - spread) <= 0.13 * w) | (np.abs(a + spread) <= 0.13 * w))

        def shade(pick: Pick) -> np.ndarray:
            b_, on_legs, on_head = pick(b), pick(legs), pick(head)
            rgb = tile(self.shirt, len(b_))
            rgb[on_legs] = self.trousers
            rgb[on_legs & (b_ < 0.035 * h)] = 0.06
            rgb[on_head | pick(neck)] = self.skin
            rgb[on_head & (b_ > 0.94 * h)] = self.hair
            return street.look.haze_at(_sunlit(rgb, street, pick(a) / (0.5 * w)), frame.t)

        canvas.paint(frame.window, head | neck | torso | arms | legs, PERSON, _next_instance(counts, PERSON), shade)


SIGN_COLOURS = ((hsv(0.0, 0.85, 0.8), hsv(0.0, 0.0, 0.95)), (hsv(0.6, 0.8, 0.6), hsv(0.6, 0.1, 0.95)),
                (hsv(0.13, 0.9, 0.9), hsv(0.0, 0.0, 0.1)), (hsv(0.0, 0.0, 0.95), hsv(0.0, 0.85, 0.75)))
LAMP_COLOURS = (hsv(0.0, 0.9, 1.0), hsv(0.1, 0.9, 1.0), hsv(0.38, 0.8, 0.9))  # red, amber, green


@dataclass(frozen=True)
class Pole:
    """A metal pole at the kerb; it may carry a traffic sign (circle, square or diamond, maybe on an arm reaching
    over the road) and a traffic light."""

    x: float
    z: float
    height: float
    width: float
    grey: float
    sign: tuple[str, float, float, int] | None  # (shape, size, lateral offset, colour scheme)
    light: tuple[float, int] | None  # (height of its centre, which lamp is lit)

    @classmethod
    def draw(cls, rng: np.random.Generator, x: float, z: float, toward_road: float) -> "Pole":
        height = rng.uniform(2.4, 4.0)
        sign = None
        if rng.random() < 0.65:
            offset = toward_road * (rng.uniform(0.3, 0.9) if rng.random() < 0.3 else 0.0)
            sign = (("circle", "square", "diamond")[rng.integers(3)], rng.uniform(0.22, 0.36), offset,
                    int(rng.integers(len(SIGN_COLOURS))))
        light = (rng.uniform(0.55, 0.75) * height, int(rng.integers(3))) if rng.random() < 0.3 else None
        return cls(x, z, height, rng.uniform(0.05, 0.08), rng.uniform(0.3, 0.55), sign, light)

    def paint(self, canvas: StreetCanvas, street: Street, counts: dict[int, int]) -> None:
        reach = 0.3 + (abs(self.sign[2]) if self.sign else 0.0)
        frame = _ground_frame(canvas, street, self.x, self.z, reach, self.height + 0.1)
        if frame is None:
            return
        a, b = frame.a, frame.b
        pole = (np.abs(a) <= 0.5 * self.width) & (b >= 0.0) & (b <= self.height)
        if self.sign and self.sign[2]:
            arm = (np.abs(b - self.height + 0.05) <= 0.025) & (a * np.sign(self.sign[2]) >= 0) \
                & (np.abs(a) <= abs(self.sign[2]))
            pole = pole | arm

        def shade_pole(pick: Pick) -> np.ndarray:
            across = np.clip(pick(a) / (0.5 * self.width), -1.0, 1.0)
            shine = self.grey * (1.0 + 0.35 * np.cos(across * np.pi * 0.5 - 0.5))
            return street.look.haze_at(np.repeat(shine[:, None], 3, axis=1), frame.t)

        canvas.paint(frame.window, pole, POLE, POLE, shade_pole)
        if self.light is not None:
            centre, lit = self.light
            box = (np.abs(a) <= 0.075) & (np.abs(b - centre) <= 0.18)
            lamp = a ** 2 + (b - centre - (0.11, 0.0, -0.11)[lit]) ** 2 <= 0.04 ** 2

            def shade_light(pick: Pick) -> np.ndarray:
                on = pick(lamp)
                rgb = tile(np.full(3, 0.1), len(on))
                rgb[on] = LAMP_COLOURS[lit]
                return street.look.haze_at(rgb, frame.t)

            canvas.paint(frame.window, box, TRAFFIC_LIGHT, TRAFFIC_LIGHT, shade_light)
        if self.sign is not None:
            shape, size, offset, scheme = self.sign
            da, db = a - offset, b - (self.height - 0.5 * size - 0.02)
            if shape == "circle":
                distance = np.sqrt(da ** 2 + db ** 2) / (0.5 * size)
            elif shape == "square":
                distance = np.maximum(np.abs(da), np.abs(db)) / (0.45 * size)
            else:
                distance = (np.abs(da) + np.abs(db)) / (0.55 * size)
            rim, face = SIGN_COLOURS[scheme]

            def shade_sign(pick: Pick) -> np.ndarray:
                on_rim = pick(distance) > 0.72
                rgb = tile(face, len(on_rim))
                rgb[on_rim] = rim
                return street.look.haze_at(rgb, frame.t)

            canvas.paint(frame.window, distance <= 1.0, TRAFFIC_SIGN, TRAFFIC_SIGN, shade_sign)


@dataclass(frozen=True)
class Tree:
    """A tree: a trunk and a crown of three bumpy lobes (all `vegetation`, as Cityscapes labels trunks)."""

    x: float
    z: float
    trunk_height: float
    trunk_width: float
    lobes: tuple[tuple[float, float, float], ...]  # (lateral offset, height, radius) per lobe
    bumps: tuple[int, float]  # the lobes' outline: bump count and phase
    foliage: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, x: float, z: float, foliage: np.ndarray) -> "Tree":
        radius, trunk_height = rng.uniform(0.5, 1.3), rng.uniform(0.8, 1.6)
        lobes = tuple((rng.uniform(-0.5, 0.5) * radius, trunk_height + rng.uniform(0.5, 1.1) * radius,
                       radius * rng.uniform(0.6, 1.0)) for _ in range(3))
        return cls(x, z, trunk_height, rng.uniform(0.08, 0.16), lobes,
                   (int(rng.integers(5, 9)), rng.uniform(0.0, 2.0 * np.pi)), jitter(rng, foliage, 0.15))

    def paint(self, canvas: StreetCanvas, street: Street, counts: dict[int, int]) -> None:
        reach = max(abs(x) + r for x, _, r in self.lobes) * 1.2
        top = max(y + r for _, y, r in self.lobes) * 1.2
        frame = _ground_frame(canvas, street, self.x, self.z, reach, top)
        if frame is None:
            return
        a, b = frame.a, frame.b
        trunk = (np.abs(a) <= 0.5 * self.trunk_width) & (b >= 0.0) & (b <= self.trunk_height + 0.3)
        crown = np.zeros(np.broadcast_shapes(a.shape, b.shape), bool)
        count, phase = self.bumps
        for x, y, radius in self.lobes:
            angle = np.arctan2(b - y, a - x)
            crown |= (a - x) ** 2 + (b - y) ** 2 <= (radius * (1.0 + 0.12 * np.cos(count * angle + phase))) ** 2
        lowest = min(y for _, y, _ in self.lobes)

        def shade(pick: Pick) -> np.ndarray:
            a_, b_ = pick(a), pick(b)
            underneath = np.clip((b_ - lowest) / (top / 1.2 - lowest), 0.0, 1.0)
            leaves = 1.0 + 0.25 * street.grain(a_ * 1.7, b_ * 1.7)
            rgb = self.foliage * ((0.65 + 0.45 * underneath) * leaves)[:, None]
            rgb[pick(trunk & ~crown)] = hsv(0.07, 0.5, 0.25)
            return street.look.haze_at(_sunlit(rgb, street, a_ / reach), frame.t)

        canvas.paint(frame.window, trunk | crown, VEGETATION, VEGETATION, shade)


Thing = Car | Person | Pole | Tree
