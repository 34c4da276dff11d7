"""DiffAugment (Zhao et al., NeurIPS 2020): differentiable augmentation, the standard limited-data GAN baseline.

The same random augmentation family is applied to real and fake images, in the D and the G step; every op is
differentiable w.r.t. the images, so G receives gradients through it. Images are ``(N, C, H, W)``, nominally in
``[-1, 1]`` (the augmented values may leave that range, as in the reference implementation). Each sample draws its
own parameters. Under torchrun each rank augments its part of the global batch: `shard=(rank, world)` draws the
parameters of the whole global batch from the generator (in the same state on every rank) and keeps the rank's
rows, so the parts get distinct draws that together are exactly those of one process with the whole batch.

Policy names (comma separated, applied in the order given):
    ``color``        brightness ``x + U(-0.5, 0.5)``, saturation ``(x - mean_C) * U(0, 2) + mean_C``,
                     contrast ``(x - mean_CHW) * U(0.5, 1.5) + mean_CHW``
    ``translation``  integer shift by up to 1/8 of the height/width in each direction, zero padding
    ``cutout``       a rectangle of half the height and half the width (a square for square images) set to 0, at a
                     uniformly random integer centre, clipped at the borders

Public API
----------
    ``POLICY_OPS``; ``diff_augment(x, policy="color,translation,cutout", generator=None, shard=(0, 1))``
    ``parse_policy(policy) -> tuple[str, ...]``
    ``translate(x, shift_y, shift_x) -> (N, C, H, W)``, ``cutout_masks(size, centre_y, centre_x, box) -> (N, 1, H, W)``
    ``DiffAugment(policy, shard=(0, 1))``: ``aug(x, generator=None)``
"""

from __future__ import annotations

import torch
from torch import Tensor

from i2i.engine.distributed import shard_slice

POLICY_OPS = ("color", "translation", "cutout")
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5
Shard = tuple[int, int]  # (rank, world size)


def parse_policy(policy: str) -> tuple[str, ...]:
    """Split a policy string ("color,translation,cutout") into op names; "" gives (). Unknown names raise."""
    if not isinstance(policy, str):
        raise ValueError(f"DiffAugment policy must be a comma-separated string, got {type(policy).__name__}")
    ops = tuple(name.strip() for name in policy.split(",") if name.strip())
    unknown = [name for name in ops if name not in POLICY_OPS]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy op(s) {', '.join(map(repr, unknown))}; valid ops: "
                         f"{', '.join(POLICY_OPS)}")
    return ops


def _uniform(x: Tensor, low: float, high: float, generator: torch.Generator | None, shard: Shard) -> Tensor:
    """Per-sample U(low, high) as (N, 1, 1, 1) in x's dtype and device."""
    n = x.shape[0]
    draw = torch.rand(n * shard[1], 1, 1, 1, device=x.device, dtype=x.dtype, generator=generator)
    return low + (high - low) * draw[shard_slice(n * shard[1], shard)]


def _randint(low: int, high: int, x: Tensor, generator: torch.Generator | None, shard: Shard) -> Tensor:
    """Per-sample integers in [low, high) as (N,)."""
    n = x.shape[0]
    draw = torch.randint(low, high, (n * shard[1],), device=x.device, generator=generator)
    return draw[shard_slice(n * shard[1], shard)]


def color(x: Tensor, generator: torch.Generator | None = None, shard: Shard = (0, 1)) -> Tensor:
    """Random brightness, saturation and contrast, in that order (see the module docstring)."""
    x = x + _uniform(x, -0.5, 0.5, generator, shard)
    channel_mean = x.mean(dim=1, keepdim=True)
    x = (x - channel_mean) * _uniform(x, 0.0, 2.0, generator, shard) + channel_mean
    image_mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - image_mean) * _uniform(x, 0.5, 1.5, generator, shard) + image_mean


def translate(x: Tensor, shift_y: Tensor, shift_x: Tensor) -> Tensor:
    """Shift each image by integer pixels, filling with 0: ``out[n, :, i, j] = x[n, :, i - shift_y[n], j - shift_x[n]]``.

    Args:
        x: (N, C, H, W). shift_y, shift_x: (N,) integer tensors (positive = down / right).
    """
    batch, _, height, width = x.shape
    rows = torch.arange(height, device=x.device).view(1, height, 1) - shift_y.view(batch, 1, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, width) - shift_x.view(batch, 1, 1)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)  # (N, H, W)
    batch_idx = torch.arange(batch, device=x.device).view(batch, 1, 1)
    gathered = x[batch_idx, :, rows.clamp(0, height - 1), cols.clamp(0, width - 1)]  # (N, H, W, C)
    return gathered.permute(0, 3, 1, 2) * inside.unsqueeze(1).to(x.dtype)


def translation(x: Tensor, generator: torch.Generator | None = None, shard: Shard = (0, 1)) -> Tensor:
    """Random integer shift in [-round(L / 8), round(L / 8)] per axis and sample, zero padding."""
    max_y = int(x.shape[2] * TRANSLATION_RATIO + 0.5)
    max_x = int(x.shape[3] * TRANSLATION_RATIO + 0.5)
    shift_y = _randint(-max_y, max_y + 1, x, generator, shard)
    shift_x = _randint(-max_x, max_x + 1, x, generator, shard)
    return translate(x, shift_y, shift_x)


def cutout_masks(size: tuple[int, int], centre_y: Tensor, centre_x: Tensor, box: tuple[int, int]) -> Tensor:
    """Masks (N, 1, H, W) that are 0 on a (box_h, box_w) rectangle whose rows are
    ``[centre_y - box_h // 2, centre_y - box_h // 2 + box_h)`` (same for columns), clipped, and 1 elsewhere."""
    height, width = size
    rows = torch.arange(height, device=centre_y.device).view(1, height) - (centre_y.view(-1, 1) - box[0] // 2)
    cols = torch.arange(width, device=centre_x.device).view(1, width) - (centre_x.view(-1, 1) - box[1] // 2)
    in_rows = (rows >= 0) & (rows < box[0])
    in_cols = (cols >= 0) & (cols < box[1])
    return (~(in_rows[:, :, None] & in_cols[:, None, :])).unsqueeze(1)


def cutout(x: Tensor, generator: torch.Generator | None = None, shard: Shard = (0, 1)) -> Tensor:
    """Zero a rectangle of half the height and width at a random integer centre (clipped at the borders)."""
    height, width = x.shape[2:]
    box = (int(height * CUTOUT_RATIO + 0.5), int(width * CUTOUT_RATIO + 0.5))
    # centres over [0, L] for even boxes, [0, L - 1] for odd ones: the reference implementation's range
    centre_y = _randint(0, height + 1 - box[0] % 2, x, generator, shard)
    centre_x = _randint(0, width + 1 - box[1] % 2, x, generator, shard)
    return x * cutout_masks((height, width), centre_y, centre_x, box).to(x.dtype)


_OPS = {"color": color, "translation": translation, "cutout": cutout}


def diff_augment(x: Tensor, policy: str = "color,translation,cutout",
                 generator: torch.Generator | None = None, shard: Shard = (0, 1)) -> Tensor:
    """Apply the policy's ops in order to x (N, C, H, W); an empty policy returns x itself.

    Differentiable w.r.t. x; randomness from ``generator`` (default: torch's generator on x's device).
    """
    ops = parse_policy(policy)
    if ops and x.dim() != 4:
        raise ValueError(f"DiffAugment expects images (N, C, H, W), got shape {tuple(x.shape)}")
    for name in ops:
        x = _OPS[name](x, generator, shard)
    return x


class DiffAugment:
    """``diff_augment`` with a fixed policy, validated at construction (e.g. from ``--diffaug POLICY``)."""

    def __init__(self, policy: str = "color,translation,cutout", shard: Shard = (0, 1)) -> None:
        self.ops = parse_policy(policy)
        self.policy = ",".join(self.ops)
        self.shard = shard

    def __repr__(self) -> str:
        return f"DiffAugment(policy={self.policy!r})"

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return diff_augment(x, self.policy, generator, self.shard)
