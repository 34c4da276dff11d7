"""Deterministic weights for the parity fixtures in tests/fixtures/ (our implementation of the rule the
fixtures were generated with: every tensor is drawn from a PCG64 stream seeded by (seed, crc32(official name)),
so any implementation with the official names reproduces the official weights exactly)."""
from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).parent / "fixtures"
_SCALE_SUFFIXES = ("norm.weight", "norm1.weight", "norm2.weight", "bn.weight", "bn1.weight", "bn2.weight", "bn3.weight")


def _rng(name: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), 1e-12)


def _draw(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    if name.endswith("num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    rng = _rng(name, seed)
    if name.endswith("running_var"):
        return (1.0 + 0.1 * np.abs(rng.standard_normal(shape))).astype(np.float32)
    if name.endswith("running_mean"):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    std = 1.0 / math.sqrt(max(math.prod(shape[1:]), 1)) if len(shape) >= 2 else 0.1
    value = rng.standard_normal(shape) * std
    if len(shape) == 1 and name.endswith(_SCALE_SUFFIXES):
        value = value + 1.0
    return value.astype(np.float32)


def deterministic_state_dict(shapes: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """{official name: shape} -> {official name: array}; spectral-norm u/v follow from weight_orig by 30 power steps."""
    shapes = {k: tuple(int(s) for s in v) for k, v in shapes.items()}
    out = {k: _draw(k, s, seed) for k, s in shapes.items() if not k.endswith(("weight_u", "weight_v"))}
    for name in shapes:
        if not name.endswith("weight_u"):
            continue
        prefix = name[: -len("weight_u")]
        w = out[prefix + "weight_orig"].reshape(shapes[prefix + "weight_orig"][0], -1).astype(np.float64)
        v = _unit(_rng(prefix + "weight_v", seed).standard_normal(w.shape[1]))
        for _ in range(30):
            u = _unit(w @ v)
            v = _unit(w.T @ u)
        out[name] = u.astype(np.float32).reshape(shapes[name])
        out[prefix + "weight_v"] = v.astype(np.float32).reshape(shapes[prefix + "weight_v"])
    return out


def as_torch(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def fixture(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(manifest, io arrays) of tests/fixtures/<name>; io is empty for key-only fixtures."""
    folder = FIXTURES / name
    manifest = json.loads((folder / "manifest.json").read_text())
    io_path = folder / "io.npz"
    io = dict(np.load(io_path)) if io_path.exists() else {}
    return manifest, io


def filled(shapes: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    return as_torch(deterministic_state_dict(shapes, seed))
