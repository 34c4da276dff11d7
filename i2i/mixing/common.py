"""Helpers shared by the regularizers of i2i.mixing: batch indexing of conditions and a seedable Beta sampler."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

Cond = Any  # None, a tensor indexed along dim 0, or a (nested) tuple/list/dict of such tensors




def index_cond(cond: Cond, idx: Tensor) -> Cond:
    """Select batch entries ``idx`` (a (K,) long tensor) of a condition: None, a tensor, or a tuple/list/dict of them."""
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return cond[idx.to(cond.device)]
    if isinstance(cond, (tuple, list)):
        return type(cond)(index_cond(part, idx) for part in cond)
    if isinstance(cond, dict):
        return {key: index_cond(part, idx) for key, part in cond.items()}
    raise TypeError(f"cond must be None, a tensor, or a tuple/list/dict of tensors; got {type(cond).__name__}")


def concat_cond(first: Cond, second: Cond) -> Cond:
    """Concatenate two conditions of the same structure along the batch dimension (None + None = None)."""
    if first is None and second is None:
        return None
    if isinstance(first, Tensor) and isinstance(second, Tensor):
        return torch.cat([first, second.to(first.device)], dim=0)
    if isinstance(first, (tuple, list)) and isinstance(second, (tuple, list)) and len(first) == len(second):
        return type(first)(concat_cond(a, b) for a, b in zip(first, second))
    raise TypeError(
        f"cannot concatenate conditions of different structure: {type(first).__name__} and {type(second).__name__}"
    )


def check_alpha(alpha: float) -> float:
    """Validate a Beta(alpha, alpha) concentration: a finite number > 0."""
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0 (Beta(alpha, alpha) concentration), got {alpha!r}")
    return float(alpha)


def _log_gamma_samples(concentration: float, n: int, device: torch.device | None,
                       generator: torch.Generator | None) -> Tensor:
    """log of n Gamma(concentration, 1) samples by Marsaglia-Tsang rejection, using only ``generator``'s draws.

    torch.distributions.Gamma cannot take a generator, which tests and seeded callers need.
    """
    boosted = concentration < 1.0  # Gamma(a) = Gamma(a + 1) * U^(1/a) for a < 1
    shape = concentration + 1.0 if boosted else concentration
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    log_sample = torch.zeros(n, device=device)
    pending = torch.ones(n, dtype=torch.bool, device=device)
    while bool(pending.any()):  # acceptance rate > 0.95 for shape >= 1, so one or two rounds
        normal = torch.randn(n, device=device, generator=generator)
        uniform = torch.rand(n, device=device, generator=generator)
        v = (1.0 + c * normal) ** 3
        log_v = torch.log(v.clamp_min(1e-30))
        accept = (v > 0) & (torch.log(uniform) < 0.5 * normal**2 + d - d * v + d * log_v)
        log_sample = torch.where(pending & accept, math.log(d) + log_v, log_sample)
        pending = pending & ~accept
    if boosted:
        uniform = torch.rand(n, device=device, generator=generator).clamp_min(1e-30)
        log_sample = log_sample + torch.log(uniform) / concentration
    return log_sample


def sample_beta(alpha: float, n: int, *, device: torch.device | str | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """n draws of Beta(alpha, alpha) as a float32 tensor (n,) in [0, 1] on ``device``.

    Built from two Gamma draws in log space (X / (X + Y) = sigmoid(log X - log Y)), which stays finite for small alpha.
    """
    alpha = check_alpha(alpha)
    log_x = _log_gamma_samples(alpha, n, device, generator)
    log_y = _log_gamma_samples(alpha, n, device, generator)
    return torch.sigmoid(log_x - log_y)


# ----------------------------------------------------------------------------------------------------------------------
# Masks
