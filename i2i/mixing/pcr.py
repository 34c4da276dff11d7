"""Pixel-wise Combination Regularization (PCR) and Sample Correction (SC) (paper 003, Sec. 5.1, Eq. 12-13).

PCR adds negatives for D made of pixel-wise combinations of pairs of *real* images, as many as there are fakes, and
weighs fakes and combinations by 1/2 each (Eq. 13):
``L_D = E_real[f1(D(x))] + 1/2 (E_fake[f2(D(G(z)))] + E_com[f2(D(x_com))])``.
Sample Correction swaps fakes that a realism measure calls "already real" out of the negative batch before the D step;
the built-in measure is DIF, the normalised minimum L2 distance of a fake to a bank of training images.

Images are ``(N, C, H, W)`` in ``[-1, 1]``.

Public API
----------
    ``COMBINE_OPS``; ``combine_pairs(a, b, op="mean") -> (N, C, H, W)``
    ``random_derangement(n, *, device=None, generator=None) -> (n,) long``
    ``PCR(op="mean")``: ``pcr(real_a, real_b, n, generator=None) -> (n, C, H, W)``; ``pcr.last_pairs`` = (idx_a, idx_b);
    ``PCR.negative_weights = (0.5, 0.5)``;
    ``pcr.negatives(fake, cond_fake, real_a, real_b, cond_real, generator=None) -> [(images, cond, weight), ...]``
    ``dif(fake, bank, chunk=256) -> (N,)`` in [0, 1]
    ``SampleCorrection(threshold=0.1, measure=None)``: ``set_bank(images)``; ``sc(fake, spare=None, generator=None)``;
    ``sc.last_replaced``, ``sc.last_source``, ``sc.last_unresolved``, ``sc.last_scores``;
    ``sc.select_cond(cond, spare_cond=None)`` (the conditions that follow the replaced images).

Choices where the paper is silent
---------------------------------
* ``and``/``or`` on images in [-1, 1]: binary images use -1 for "off" and +1 for "on", so logical and/or are the
  pixel-wise ``min``/``max`` (exact on binary data, the fuzzy (Goedel) and/or on grey values).
* Pairs: PCR pairs ``real_a[i]`` with ``real_b[i]`` (two reals of the same condition, passed by the caller) or, without
  ``real_b``, with a random cyclic derangement of ``real_a`` (never an image with itself; pairs then need not share a
  condition and the combination takes ``real_a[i]``'s). With as many combinations as pairs (the usual n = N),
  combination k comes from pair k, so the combinations share ``real_a``'s conditions position by position (the caller
  scores them with the same condition as ``real_a``, e.g. the fakes' when ``real_a`` shares them); with fewer, a random
  subset of the pairs is used and ``last_pairs[0]`` says which (``index_cond(cond_a, pcr.last_pairs[0])``).
* DIF normalisation: ``min_j ||x - b_j||_2 / (2 sqrt(C H W))``, the distance divided by its largest possible value
  for images in [-1, 1]; it lies in [0, 1] for any resolution and equals the RMS pixel difference on a [0, 1] scale
  (threshold 0.1 = RMS difference below 10% of the pixel range).
* Replacements: SC replaces each too-real fake by a less realistic sample: first from ``spare`` (extra fakes the
  caller may pass, scored by the same measure), each used once in random order, then by duplicates of this batch's
  less-realistic fakes in random order (cycling when more are needed). If no sample passes the threshold, the
  fakes are kept and reported in ``last_unresolved``: the batch size never changes. A replaced fake brings its own
  condition along: ``select_cond`` gives the conditions of the returned batch.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from i2i.mixing.common import concat_cond, index_cond

COMBINE_OPS = ("mean", "and", "or")

Measure = Callable[[Tensor], Tensor]  # fake (N, C, H, W) -> realism score (N,); lower = more real


def combine_pairs(a: Tensor, b: Tensor, op: str = "mean") -> Tensor:
    """Pixel-wise combination of image pairs (Eq. 12): mean = (a + b) / 2, and = min(a, b), or = max(a, b).

    Args:
        a, b: (N, C, H, W) in [-1, 1]. Returns (N, C, H, W) in [-1, 1].
    """
    if a.shape != b.shape:
        raise ValueError(f"images to combine must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if op == "mean":
        return 0.5 * (a + b)
    if op == "and":
        return torch.minimum(a, b)
    if op == "or":
        return torch.maximum(a, b)
    raise ValueError(f"unknown PCR combination {op!r}; valid ops: {', '.join(COMBINE_OPS)}")


def random_derangement(n: int, *, device: torch.device | str | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
    """A random permutation (n,) with no fixed point: one n-cycle through a random order (n >= 2)."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 elements, got a batch of {n}")
    order = torch.randperm(n, device=device, generator=generator)
    derangement = torch.empty_like(order)
    derangement[order] = order.roll(-1)
    return derangement


class PCR:
    """Pixel-wise Combination Regularization: extra negatives made of combined real pairs (Eq. 12-13).

    Args:
        op: one of ``COMBINE_OPS``: "mean" (natural images), "and" / "or" (binary images).
    """

    negative_weights = (0.5, 0.5)  # Eq. 13: (fakes, combinations)

    def __init__(self, op: str = "mean") -> None:
        if op not in COMBINE_OPS:
            raise ValueError(f"unknown PCR combination {op!r}; valid ops: {', '.join(COMBINE_OPS)}")
        self.op = op
        self.last_pairs = (torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))

    def __repr__(self) -> str:
        return f"PCR(op={self.op!r})"

    def __call__(self, real_a: Tensor, real_b: Tensor | None, n: int,
                 generator: torch.Generator | None = None) -> Tensor:
        """n combinations (n, C, H, W) of distinct real pairs.

        Args:
            real_a: (N, C, H, W) in [-1, 1]. real_b: (N, C, H, W), real_b[i] shares real_a[i]'s condition, or None
                to pair real_a with a derangement of itself. n: 1 <= n <= N combinations.
        The pairs used are recorded in ``last_pairs`` as indices (idx_a, idx_b) into real_a and real_b (or real_a).
        """
        if real_a.dim() != 4:
            raise ValueError(f"real_a must be (N, C, H, W), got {tuple(real_a.shape)}")
        batch = real_a.shape[0]
        if real_b is not None and real_b.shape != real_a.shape:
            raise ValueError(f"real_b must have real_a's shape {tuple(real_a.shape)}, got {tuple(real_b.shape)}")
        if not 1 <= n <= batch:
            raise ValueError(f"PCR can make 1..{batch} combinations from a batch of {batch} pairs, asked for {n}")
        device = real_a.device
        partner = torch.arange(batch, device=device) if real_b is not None else \
            random_derangement(batch, device=device, generator=generator)
        if n == batch:
            idx_a = torch.arange(batch, device=device)
        else:
            idx_a = torch.randperm(batch, device=device, generator=generator)[:n].sort().values
        idx_b = partner[idx_a]
        self.last_pairs = (idx_a, idx_b)
        second = real_b if real_b is not None else real_a
        return combine_pairs(real_a[idx_a], second[idx_b], self.op)

    def negatives(self, fake: Tensor, cond_fake: Any, real_a: Tensor, real_b: Tensor | None, cond_real: Any,
                  generator: torch.Generator | None = None) -> list[tuple[Tensor, Any, float]]:
        """The weighted negative sets of Eq. 13, (images, condition, weight): the fakes (1/2) and as many
        combinations of real pairs (1/2).

        Args:
            fake: (N, C, H, W) with condition cond_fake. real_a, real_b: (N, C, H, W) reals as in ``__call__``;
                combination k comes from (real_a[k], real_b[k]) (or real_a[k] and a derangement partner), so it
                takes real_a[k]'s condition from cond_real.
        """
        if fake.shape != real_a.shape:
            raise ValueError(f"PCR makes one combination per fake from real pairs at the same positions: fake "
                             f"{tuple(fake.shape)} and real_a {tuple(real_a.shape)} must have the same shape")
        combined = self(real_a, real_b, fake.shape[0], generator)
        weight_fake, weight_combined = self.negative_weights
        return [(fake, cond_fake, weight_fake), (combined, cond_real, weight_combined)]


def dif(fake: Tensor, bank: Tensor, chunk: int = 256) -> Tensor:
    """DIF: normalised minimum L2 distance of each fake to a bank of training images, in [0, 1].

    ``dif_i = min_j ||fake_i - bank_j||_2 / (2 sqrt(C H W))`` (2 sqrt(CHW) is the largest distance in [-1, 1]).

    Args:
        fake: (N, C, H, W) in [-1, 1]. bank: (M, C, H, W) in [-1, 1], on any device (moved chunk by chunk to fake's).
        chunk: bank images compared at once; bounds the extra memory to chunk * C * H * W values.
    Returns:
        (N,) on fake's device.
    """
    if fake.dim() != 4 or bank.dim() != 4 or fake.shape[1:] != bank.shape[1:]:
        raise ValueError(f"fake and bank must be (N, C, H, W) and (M, C, H, W) with equal C, H, W; got "
                         f"{tuple(fake.shape)} and {tuple(bank.shape)}")
    if bank.shape[0] == 0:
        raise ValueError("the DIF bank is empty: it needs at least one training image")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    flat = fake.flatten(1)
    nearest = torch.full((fake.shape[0],), math.inf, device=fake.device, dtype=fake.dtype)
    for start in range(0, bank.shape[0], chunk):
        part = bank[start:start + chunk].to(device=fake.device, dtype=fake.dtype).flatten(1)
        # direct differences, not the |a|^2 + |b|^2 - 2ab expansion, so an image of the bank is at exactly 0
        distances = torch.cdist(flat, part, compute_mode="donot_use_mm_for_euclid_dist")
        nearest = torch.minimum(nearest, distances.min(dim=1).values)
    return nearest / (2.0 * math.sqrt(flat.shape[1]))


class SampleCorrection:
    """Sample Correction (Sec. 5.1): fakes scored below ``threshold`` ("already real") are swapped for less realistic
    samples before the D step; the batch size is kept.

    Args:
        threshold: fakes with ``measure(fake) < threshold`` are replaced (paper: DIF < 0.1).
        measure: any ``(fake (N, C, H, W)) -> (N,)`` realism score, lower = more real; default DIF against the bank
            given to ``set_bank``.
    """

    def __init__(self, threshold: float = 0.1, measure: Measure | None = None) -> None:
        if not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise ValueError(f"sample-correction threshold must be a finite number, got {threshold!r}")
        if measure is not None and not callable(measure):
            raise ValueError(f"measure must be a callable (fake) -> (N,) scores, got {type(measure).__name__}")
        self.threshold = float(threshold)
        self.measure = measure
        self.bank: Tensor | None = None
        self.last_replaced = torch.empty(0, dtype=torch.long)
        self.last_unresolved = torch.empty(0, dtype=torch.long)
        self.last_source = torch.empty(0, dtype=torch.long)
        self.last_scores = torch.empty(0)

    def __repr__(self) -> str:
        measure = "dif" if self.measure is None else getattr(self.measure, "__name__", repr(self.measure))
        return f"SampleCorrection(threshold={self.threshold}, measure={measure})"

    def set_bank(self, images: Tensor) -> None:
        """Hold training images (M, C, H, W) in [-1, 1] for the DIF measure (kept on their device, e.g. CPU)."""
        if images.dim() != 4 or images.shape[0] == 0:
            raise ValueError(f"the bank must be a non-empty (M, C, H, W) batch of training images, got "
                             f"{tuple(images.shape)}")
        self.bank = images.detach()

    def score(self, images: Tensor) -> Tensor:
        """Realism scores (N,) of images (N, C, H, W) by the configured measure (no gradient)."""
        with torch.no_grad():
            if self.measure is not None:
                scores = self.measure(images)
            elif self.bank is None:
                raise ValueError("SampleCorrection with the default DIF measure needs a bank: call set_bank(images) "
                                 "or pass measure=")
            else:
                scores = dif(images, self.bank)
        if not isinstance(scores, Tensor) or scores.shape != images.shape[:1]:
            shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(f"the realism measure must return ({images.shape[0]},) scores, got {shape}")
        return scores.to(images.device)

    def __call__(self, fake: Tensor, spare: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """The fake batch (N, C, H, W) with its too-real samples replaced (see the module docstring for the source).

        Args:
            fake: (N, C, H, W) in [-1, 1]. spare: optional (S, C, H, W) extra fakes to draw replacements from.
        Returns:
            (N, C, H, W); ``fake`` itself when nothing is replaced. ``last_source`` maps each output row to its row in
            ``cat([fake, spare])``.
        """
        if fake.dim() != 4:
            raise ValueError(f"fake must be (N, C, H, W), got {tuple(fake.shape)}")
        if spare is not None and (spare.dim() != 4 or spare.shape[1:] != fake.shape[1:]):
            raise ValueError(f"spare must be (S, {', '.join(map(str, fake.shape[1:]))}), got {tuple(spare.shape)}")
        pool = fake if spare is None else torch.cat([fake, spare.to(fake.device)], dim=0)
        scores = self.score(pool)
        batch = fake.shape[0]
        too_real = (scores[:batch] < self.threshold).nonzero().flatten()
        candidates = self._ranked_candidates(scores >= self.threshold, batch, generator)
        resolvable = candidates.numel() > 0
        self.last_scores = scores[:batch]
        self.last_replaced = too_real if resolvable else too_real[:0]
        self.last_unresolved = too_real[:0] if resolvable else too_real
        self.last_source = torch.arange(batch, device=fake.device)
        if self.last_replaced.numel() == 0:
            return fake
        # spare rows are used once each before any of this batch's fakes is duplicated
        picks = torch.arange(too_real.numel(), device=fake.device) % candidates.numel()
        self.last_source = self.last_source.index_copy(0, too_real, candidates[picks])
        return pool[self.last_source]

    @staticmethod
    def _ranked_candidates(usable: Tensor, batch: int, generator: torch.Generator | None) -> Tensor:
        """Indices of usable pool rows, spare rows first (random order), then this batch's rows (random order)."""
        order = torch.rand(usable.shape[0], device=usable.device, generator=generator)
        from_batch = torch.arange(usable.shape[0], device=usable.device) < batch
        rank = order + from_batch.to(order.dtype)  # batch rows after all spare rows
        ranked = torch.argsort(rank)
        return ranked[usable[ranked]]

    def select_cond(self, cond: Any, spare_cond: Any = None) -> Any:
        """The condition of the last output: ``cat([cond, spare_cond])`` (``cond`` alone without a spare batch)
        taken at ``last_source``. Pass ``spare_cond`` whenever a spare batch was given."""
        merged = cond if spare_cond is None else concat_cond(cond, spare_cond)
        return index_cond(merged, self.last_source)
