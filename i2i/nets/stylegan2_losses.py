"""StyleGAN2's training losses and regularisers (rosinality/stylegan2-pytorch `train.py`): the non-saturating logistic
losses, R1 on reals, path-length regularisation, and the Adam settings of lazy regularisation. Predictions are the
discriminator's (N, 1) logits; images (N, 3, H, W)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from i2i.engine.amp import penalty_grad

# Reference training recipe (train.py defaults); the translator's trainer owns the loop, these are its settings.
R1_GAMMA = 10.0
D_REG_EVERY = 16
PATH_REG_WEIGHT = 2.0
G_REG_EVERY = 4
G_EMA_DECAY = 0.5 ** (32 / 10_000)


def d_logistic_loss(real_pred: Tensor, fake_pred: Tensor) -> Tensor:
    """Discriminator logistic loss: mean softplus(-D(real)) + mean softplus(D(fake))."""
    return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def g_nonsaturating_loss(fake_pred: Tensor) -> Tensor:
    """Generator non-saturating loss: mean softplus(-D(fake))."""
    return F.softplus(-fake_pred).mean()


def d_r1_loss(real_pred: Tensor, real_img: Tensor) -> Tensor:
    """R1 penalty: mean over samples of |d D(real) / d real|^2, with the graph kept for the double backward.

    real_img must require grad before D(real_img) is computed. With lazy regularisation (every D_REG_EVERY steps)
    the reference backpropagates R1_GAMMA / 2 * r1 * D_REG_EVERY.
    """
    if not real_img.requires_grad:
        raise ValueError("d_r1_loss: real_img must require grad (call real_img.requires_grad_(True) before D(real_img))")
    grad = penalty_grad(real_pred, real_img)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()


def g_path_regularize(fake_img: Tensor, latents: Tensor, mean_path_length: float | Tensor,
                      decay: float = 0.01) -> tuple[Tensor, Tensor, Tensor]:
    """Path-length penalty: (penalty, updated running mean (detached), per-sample path lengths (N,)).

    fake_img, latents = G(styles, return_latents=True); the path length is |J^T y| for y ~ N(0, I) / sqrt(H W),
    and the penalty its squared deviation from the running mean. The reference weights it by PATH_REG_WEIGHT *
    G_REG_EVERY.
    """
    if not latents.requires_grad:
        raise ValueError("g_path_regularize: latents must be part of the graph "
                         "(G(..., return_latents=True) with grad enabled)")
    noise = torch.randn_like(fake_img) / math.sqrt(fake_img.shape[2] * fake_img.shape[3])
    grad = penalty_grad(fake_img * noise, latents)
    path_lengths = torch.sqrt(grad.pow(2).sum(2).mean(1))
    path_mean = mean_path_length + decay * (path_lengths.mean() - mean_path_length)
    return (path_lengths - path_mean).pow(2).mean(), path_mean.detach(), path_lengths


def lazy_adam_settings(lr: float, reg_every: int) -> dict[str, object]:
    """Adam kwargs that compensate lazy regularisation: lr * c and betas (0, 0.99 ** c), c = reg_every / (reg_every + 1).

    The reference uses G_REG_EVERY for G's optimiser and D_REG_EVERY for D's.
    """
    c = reg_every / (reg_every + 1)
    return {"lr": lr * c, "betas": (0.0**c, 0.99**c)}
