"""Image-space sample mixing for the discriminator: Mixup, CutMix and SRMix (paper 000, Algorithm 1, Eq. 1-2).

A fraction ``r`` of the discriminator's fake batch is replaced by mixed samples
``x~ = M * x_real + (1 - M) * x_fake`` that are scored as *fakes* (no label mixing), so the scheme works with hinge,
WGAN and non-saturating losses alike. Images are ``(N, C, H, W)`` in ``[-1, 1]``; masks are ``(N, 1, H, W)`` in
``[0, 1]`` and broadcast over channels; ``M = 1`` selects the real image.

Public API
----------
Masks (samplers draw parameters, builders are deterministic functions of them):
    ``mixup_masks(n, size, alpha, *, device=None, generator=None) -> (N, 1, H, W)``
    ``cutmix_boxes(n, size, alpha, *, device=None, generator=None) -> (N, 4) long [top, left, bottom, right)``
    ``box_masks(size, boxes, real_inside) -> (N, 1, H, W)``
    ``cutmix_masks(n, size, alpha, *, device=None, generator=None) -> (N, 1, H, W)``
    ``tanh_masks(size, horizontal, sign, centre, width) -> (N, 1, H, W)``
    ``srmix_masks(n, size, *, device=None, generator=None) -> (N, 1, H, W)``
    ``mix_images(real, fake, masks) -> (N, C, H, W)``
    ``ImageMixer(kind="none", ratio=0.25, alpha=1.0)``; ``mixer(real, fake, generator=None) -> fake'``;
    ``mixer.last_replaced`` (indices), ``mixer.last_lambdas`` (mean(M) of each mixed sample).

Reading of the paper
--------------------
* CutMix: the paper's text gives M a unit-valued box, its Fig. 2 shows a fake box cut into a real image; Eq. 1 leaves
  which of the two images is ``x_i`` open. Both readings are used: per sample, with probability 1/2, the box holds the
  real image (M = 1 inside) or the fake (M = 0 inside). The box has area fraction ``1 - lambda`` before clipping,
  ``lambda ~ Beta(alpha, alpha)``; after clipping at the borders the actual real fraction is ``mean(M)``
  (``ImageMixer.last_lambdas``).
* SRMix: pixel ``k`` along the chosen axis sits at coordinate ``k + 0.5`` (pixel centres on ``[0, L]``);
  ``x0 ~ U[L/8, 7L/8]``, ``dx ~ U[2, max(2, L/16)]`` pixels, ``L = H`` for the vertical axis and ``W`` for the
  horizontal one. The mask has no lambda of its own: its mean plays that role.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from i2i.mixing.common import check_alpha, sample_beta

MIX_KINDS = ("none", "mixup", "cutmix", "srmix")

def _as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive (H, W), got {size!r}")
    return int(height), int(width)


def mixup_masks(n: int, size: int | tuple[int, int], alpha: float, *, device: torch.device | str | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Mixup masks: a constant lambda ~ Beta(alpha, alpha) per sample. Returns (N, 1, H, W) in [0, 1]."""
    height, width = _as_size(size)
    lam = sample_beta(alpha, n, device=device, generator=generator)
    return lam.view(n, 1, 1, 1).expand(n, 1, height, width).contiguous()


def cutmix_boxes(n: int, size: int | tuple[int, int], alpha: float, *, device: torch.device | str | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
    """CutMix boxes: area fraction 1 - lambda, lambda ~ Beta(alpha, alpha), uniform centre, clipped at the borders.

    Returns (N, 4) long ``[top, left, bottom, right)`` in pixel indices (half-open; empty if top == bottom).
    """
    height, width = _as_size(size)
    lam = sample_beta(alpha, n, device=device, generator=generator)
    side = torch.sqrt(1.0 - lam)  # box side fraction; the same aspect ratio as the image
    centre_y = torch.rand(n, device=device, generator=generator) * height
    centre_x = torch.rand(n, device=device, generator=generator) * width
    half_h, half_w = side * height / 2, side * width / 2
    top = torch.round(centre_y - half_h).clamp(0, height)
    bottom = torch.round(centre_y + half_h).clamp(0, height)
    left = torch.round(centre_x - half_w).clamp(0, width)
    right = torch.round(centre_x + half_w).clamp(0, width)
    return torch.stack([top, left, bottom, right], dim=1).long()


def box_masks(size: int | tuple[int, int], boxes: Tensor, real_inside: Tensor) -> Tensor:
    """Binary masks from boxes (N, 4) ``[top, left, bottom, right)``; ``real_inside`` (N,) bool puts M = 1 in the box
    (else M = 0 in the box and 1 outside). Returns (N, 1, H, W) float32 in {0, 1}."""
    height, width = _as_size(size)
    if boxes.dim() != 2 or boxes.shape[1] != 4 or real_inside.shape != boxes.shape[:1]:
        raise ValueError(f"boxes must be (N, 4) and real_inside (N,); got {tuple(boxes.shape)} and "
                         f"{tuple(real_inside.shape)}")
    rows = torch.arange(height, device=boxes.device)
    cols = torch.arange(width, device=boxes.device)
    in_rows = (rows >= boxes[:, 0:1]) & (rows < boxes[:, 2:3])  # (N, H)
    in_cols = (cols >= boxes[:, 1:2]) & (cols < boxes[:, 3:4])  # (N, W)
    inside = in_rows[:, :, None] & in_cols[:, None, :]
    masks = inside == real_inside.to(boxes.device).view(-1, 1, 1)
    return masks.unsqueeze(1).float()


def cutmix_masks(n: int, size: int | tuple[int, int], alpha: float, *, device: torch.device | str | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
    """CutMix masks (N, 1, H, W) in {0, 1}; the actual real fraction per sample is ``masks.mean((1, 2, 3))``.

    The box orientation (real or fake inside) is drawn per sample with probability 1/2 (see the module docstring).
    """
    boxes = cutmix_boxes(n, size, alpha, device=device, generator=generator)
    real_inside = torch.rand(n, device=device, generator=generator) < 0.5
    return box_masks(size, boxes, real_inside)


def tanh_masks(size: int | tuple[int, int], horizontal: Tensor, sign: Tensor, centre: Tensor, width: Tensor) -> Tensor:
    """SRMix masks M = 1/2 [1 + sign * tanh((x - centre) / width)] (Eq. 2), one axis per sample.

    Args:
        size: (H, W).
        horizontal: (N,) bool; True: x runs along W (M constant down each column), False: along H.
        sign: (N,) in {-1, +1}. centre: (N,) in pixels, pixel k at x = k + 0.5. width: (N,) > 0 in pixels.
    Returns:
        (N, 1, H, W) float32 in [0, 1].
    """
    height, width_px = _as_size(size)
    device = centre.device
    rows = (torch.arange(height, device=device, dtype=torch.float32) + 0.5).view(1, height, 1)
    cols = (torch.arange(width_px, device=device, dtype=torch.float32) + 0.5).view(1, 1, width_px)
    shape = (-1, 1, 1)
    coord = torch.where(horizontal.view(shape), cols.expand(1, height, width_px), rows.expand(1, height, width_px))
    ramp = torch.tanh((coord - centre.float().view(shape)) / width.float().view(shape))
    return (0.5 * (1.0 + sign.float().view(shape) * ramp)).unsqueeze(1)


def srmix_masks(n: int, size: int | tuple[int, int], *, device: torch.device | str | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """SRMix masks (N, 1, H, W) in [0, 1]: random axis and sign, x0 ~ U[L/8, 7L/8], dx ~ U[2, max(2, L/16)] px."""
    height, width = _as_size(size)
    horizontal = torch.rand(n, device=device, generator=generator) < 0.5
    sign = torch.where(torch.rand(n, device=device, generator=generator) < 0.5, 1.0, -1.0)
    length = torch.where(horizontal, float(width), float(height))
    centre = length * (0.125 + 0.75 * torch.rand(n, device=device, generator=generator))
    max_width = torch.clamp(length / 16.0, min=2.0)
    ramp_width = 2.0 + (max_width - 2.0) * torch.rand(n, device=device, generator=generator)
    return tanh_masks((height, width), horizontal, sign, centre, ramp_width)


def mix_images(real: Tensor, fake: Tensor, masks: Tensor) -> Tensor:
    """Eq. 1: ``masks * real + (1 - masks) * fake``; real/fake (N, C, H, W), masks (N, 1, H, W) in [0, 1]."""
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape, got {tuple(real.shape)} and {tuple(fake.shape)}")
    masks = masks.to(device=fake.device, dtype=fake.dtype)
    return masks * real + (1.0 - masks) * fake


# ----------------------------------------------------------------------------------------------------------------------
# The regularizer


class ImageMixer:
    """Replaces floor(ratio * N) randomly chosen fakes of a D batch by real/fake mixes (paper 000, Algorithm 1).

    Each chosen fake is mixed with the real image at the same batch position (the caller passes reals that share each
    fake's condition), so the mixed sample keeps the fake's condition; the caller scores it as a fake.

    Args:
        kind: one of ``MIX_KINDS``: "none", "mixup", "cutmix", "srmix".
        ratio: fraction r in [0, 1] of the fake batch replaced (paper: 0.25 DCGAN, 0.15 ResNet/StyleGAN2).
        alpha: Beta(alpha, alpha) concentration for mixup/cutmix (paper: 1, i.e. uniform).
    """

    def __init__(self, kind: str = "none", ratio: float = 0.25, alpha: float = 1.0) -> None:
        if kind not in MIX_KINDS:
            raise ValueError(f"unknown mixer kind {kind!r}; valid kinds: {', '.join(MIX_KINDS)}")
        if not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"mix ratio must be a number in [0, 1], got {ratio!r}")
        self.kind = kind
        self.ratio = float(ratio)
        self.alpha = check_alpha(alpha)
        self.last_replaced = torch.empty(0, dtype=torch.long)
        self.last_lambdas = torch.empty(0)

    def __repr__(self) -> str:
        return f"ImageMixer(kind={self.kind!r}, ratio={self.ratio}, alpha={self.alpha})"

    def masks(self, n: int, size: tuple[int, int], device: torch.device,
              generator: torch.Generator | None = None) -> Tensor:
        """n masks (n, 1, H, W) of this mixer's kind."""
        if self.kind == "mixup":
            return mixup_masks(n, size, self.alpha, device=device, generator=generator)
        if self.kind == "cutmix":
            return cutmix_masks(n, size, self.alpha, device=device, generator=generator)
        if self.kind == "srmix":
            return srmix_masks(n, size, device=device, generator=generator)
        raise ValueError(f"mixer kind {self.kind!r} makes no masks; valid kinds: {', '.join(MIX_KINDS[1:])}")

    def __call__(self, real: Tensor, fake: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Return the fake batch with floor(ratio * N) entries replaced by mixes (the other entries are untouched).

        Args:
            real: (N, C, H, W) in [-1, 1], real[i] shares fake[i]'s condition.
            fake: (N, C, H, W) in [-1, 1]. Gradients flow to it through the result (nothing is detached here).
        Returns:
            (N, C, H, W); ``fake`` itself when the mixer is off or replaces nothing.
        """
        if real.dim() != 4 or real.shape != fake.shape:
            raise ValueError(f"real and fake must be (N, C, H, W) of the same shape, got {tuple(real.shape)} and "
                             f"{tuple(fake.shape)}")
        count = math.floor(self.ratio * fake.shape[0])
        if self.kind == "none" or count == 0:
            self.last_replaced = torch.empty(0, dtype=torch.long, device=fake.device)
            self.last_lambdas = torch.empty(0, device=fake.device)
            return fake
        idx = torch.randperm(fake.shape[0], device=fake.device, generator=generator)[:count].sort().values
        masks = self.masks(count, tuple(fake.shape[2:]), fake.device, generator)
        mixed = mix_images(real[idx], fake[idx], masks)
        self.last_replaced = idx
        self.last_lambdas = masks.mean(dim=(1, 2, 3))
        return fake.index_copy(0, idx, mixed)
