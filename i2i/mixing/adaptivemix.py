"""AdaptiveMix: feature-space shrinkage for the discriminator (paper 001, Eq. 2, Sec. 3.3).

The discriminator is split as ``D = head . features``: ``features(images, cond) -> h`` (any shape (N, ...), e.g.
StarGAN v2 (N, C, 1, 1), StyleGAN2 (N, 512, 4, 4); flattened per sample here; or a list of them, one per scale of a
multi-scale critic such as SPADE's, whose distances are averaged) and ``head(h, cond) -> logits`` (a list likewise). A hard sample ``x^ = lam * x_a + (1 - lam) * x_b``, ``lam ~ Beta(alpha, alpha)`` (one per
batch), is pulled towards the mixed easy features ``v = lam * F(x_a) + (1 - lam) * F(x_b) + noise`` (noise
~ N(0, sigma^2), v detached): ``L_ada = weight * distance(F(x^), v)``, added to D's loss and (``on_generator``) G's.

Two variants (spec "AdaptiveMix" table):

* ``pairs="within"`` (official code, default): ``x_b = x_a[perm]`` for a random permutation of the batch; the critic
  returned by ``wrap`` outputs ``head(lam h + (1 - lam) h[perm], c) + head(F(x^), c)`` and records ``L_ada``; the
  trainer adds ``pop_loss()`` to the D loss (and to the G loss when the wrapped critic scored G's fakes).
* ``pairs="real_fake"`` (paper text): ``real_fake_loss(features, real, fake, cond)`` mixes a real with a fake; the logits
  are unchanged (``wrap`` returns the plain ``head . features`` and records nothing).

Public API
----------
    ``AdaptiveMix(pairs="within", distance="cos", alpha=1.0, noise=0.05, weight=1.0, on_generator=True)``
    ``AdaptiveMix.wrap(features, head, groups_fn=None) -> critic(images, cond) -> logits``
    ``AdaptiveMix.pop_loss(generator_step=False) -> 0-d Tensor``
    ``AdaptiveMix.real_fake_loss(features, real, fake, cond, generator=None) -> 0-d Tensor``
    ``mix_within(features, head, images, cond, lam, perm, noise, distance, generator=None) -> (logits, loss)``
    ``group_permutation(groups, generator=None) -> (N,) long``, ``feature_distance(pred, target, kind) -> 0-d``

Facts checked against the official code (WentianZhang-ML/AdaptiveMix, generation/training/{networks,loss}.py):
``F`` is the output of the last discriminator block before the epilogue (before minibatch-std and pooling/FC);
``lam`` is one draw per call; the permutation is unconstrained ``randperm`` (``pairing="batch"``; our default pairs
within condition groups without fixed points, ``PAIRINGS``); the condition of the mixed sample is the
unpermuted ``c`` (the *first* element's); the noise is added to the mixed easy features (the target), the logits use
the noise-free mix; the loss is ``-cos`` per sample, averaged over the batch, with the target detached. The paper's
Eq. 2 writes the noise on ``F(x^)`` instead; for a zero-mean Gaussian this gives the same loss distribution under L2
and the code's form is followed. The official code runs ``F`` on ``x[perm]`` again; ``F(x)[perm]`` is used here instead
(one forward less, identical for per-sample feature extractors, and it keeps each image with its own condition).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from i2i.mixing.common import check_alpha, sample_beta

PAIRS = ("within", "real_fake")
DISTANCES = ("cos", "mse")
# How "within" pairs are drawn: a derangement inside each condition group (no sample mixed with itself; a group of
# one keeps its sample), the official code's permutation of the whole batch (conditions ignored), or a permutation
# inside each group (with fixed points: at batch 8 and 3 domains about a third of the pairs are x with itself).
PAIRINGS = ("derangement", "batch", "permutation")

Features = Callable[[Tensor, Any], Tensor]  # (images (N, C, H, W), cond) -> h (N, ...)
Head = Callable[[Tensor, Any], Tensor]  # (h (N, ...), cond) -> logits (N, ...)
Critic = Callable[[Tensor, Any], Tensor]  # (images, cond) -> logits


def feature_distance(pred: Any, target: Any, kind: str) -> Tensor:
    """Distance between features (N, ...) flattened per sample; for a list of feature maps (a multi-scale critic)
    the mean of the per-map distances.

    ``cos``: negative cosine similarity per sample, averaged over the batch (in [-1, 1]);
    ``mse``: mean squared error over all elements.
    """
    if isinstance(pred, (list, tuple)):
        return torch.stack([feature_distance(p, t, kind) for p, t in zip(pred, target)]).mean()
    if pred.shape != target.shape:
        raise ValueError(f"feature shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if kind == "cos":
        return -F.cosine_similarity(pred.flatten(1), target.flatten(1), dim=1).mean()
    if kind == "mse":
        return F.mse_loss(pred, target)
    raise ValueError(f"unknown AdaptiveMix distance {kind!r}; valid distances: {', '.join(DISTANCES)}")


def _tree(fn: Callable[..., Tensor], *trees: Any) -> Any:
    """fn applied leaf by leaf to tensors or (equally shaped) lists/tuples of them: a multi-scale critic's features
    and logits are lists, one entry per scale."""
    if isinstance(trees[0], (list, tuple)):
        return type(trees[0])(_tree(fn, *leaves) for leaves in zip(*trees))
    return fn(*trees)


def group_permutation(groups: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A random permutation (N,) that maps each index to an index of the same group (groups: (N,) integer labels).

    Members of a group are shuffled among themselves; a group of one maps to itself.
    """
    if groups.dim() != 1 or groups.dtype.is_floating_point:
        raise ValueError(f"groups must be a (N,) integer tensor, got shape {tuple(groups.shape)} dtype {groups.dtype}")
    shuffled = torch.randperm(groups.numel(), device=groups.device, generator=generator)
    # stable sort by group: members in index order vs. members in random order, aligned group by group
    by_group_in_order = torch.argsort(groups, stable=True)
    by_group_shuffled = shuffled[torch.argsort(groups[shuffled], stable=True)]
    perm = torch.empty_like(by_group_in_order)
    perm[by_group_in_order] = by_group_shuffled
    return perm


def group_derangement(groups: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A random permutation (N,) mapping each index to ANOTHER index of its group (groups: (N,) integer labels):
    a random cycle through each group's members; only a group of one maps to itself."""
    if groups.dim() != 1 or groups.dtype.is_floating_point:
        raise ValueError(f"groups must be a (N,) integer tensor, got shape {tuple(groups.shape)} dtype {groups.dtype}")
    n = groups.numel()
    shuffled = torch.randperm(n, device=groups.device, generator=generator)
    order = shuffled[torch.argsort(groups[shuffled], stable=True)]  # grouped, random order inside each group
    g = groups[order]
    position = torch.arange(n, device=groups.device)
    new_group = torch.ones(n, dtype=torch.bool, device=groups.device)
    new_group[1:] = g[1:] != g[:-1]
    group_start = torch.cummax(torch.where(new_group, position, torch.zeros_like(position)), dim=0).values
    last_in_group = torch.ones(n, dtype=torch.bool, device=groups.device)
    last_in_group[:-1] = new_group[1:]
    successor = torch.where(last_in_group, group_start, position + 1)
    perm = torch.empty_like(order)
    perm[order] = order[successor]
    return perm


def _noisy_target(mixed_features: Any, noise: float, generator: torch.Generator | None) -> Any:
    """The detached target v = mixed easy features + N(0, noise^2)."""
    def jittered(h: Tensor) -> Tensor:
        jitter = torch.randn(h.shape, device=h.device, dtype=h.dtype, generator=generator)
        return (h + noise * jitter).detach()

    return _tree(jittered, mixed_features)


def _lerp(a: Any, b: Any, lam: Tensor | float) -> Any:
    return _tree(lambda x, y: lam * x + (1.0 - lam) * y, a, b)


def mix_within(features: Features, head: Head, images: Tensor, cond: Any, lam: Tensor | float, perm: Tensor,
               noise: float, distance: str, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The official-code AdaptiveMix critic for fixed ``lam`` and ``perm`` (the class draws them).

    Args:
        images: (N, C, H, W) in [-1, 1]. cond: the batch's condition (opaque; used as is for the mixed sample).
        lam: scalar in [0, 1] (float or 0-d tensor). perm: (N,) long permutation. noise: std of the target noise.
    Returns:
        logits = head(lam h + (1 - lam) h[perm], c) + head(F(x^), c), and the unweighted L_ada (0-d).
    """
    h = features(images, cond)
    mixed_images = _lerp(images, images[perm], lam)
    h_hard = features(mixed_images, cond)
    h_easy = _lerp(h, _tree(lambda x: x[perm], h), lam)
    loss = feature_distance(h_hard, _noisy_target(h_easy, noise, generator), distance)
    logits = _tree(torch.add, head(h_easy, cond), head(h_hard, cond))
    return logits, loss


class AdaptiveMix:
    """AdaptiveMix regularizer (see the module docstring for the two variants).

    Args:
        pairs: "within" (official code, default) or "real_fake" (paper text).
        distance: "cos" (negative cosine similarity, official) or "mse" (paper's L2).
        alpha: Beta(alpha, alpha) concentration of lam (1.0 = uniform).
        noise: std sigma of the Gaussian added to the target (paper/official: 0.05).
        weight: multiplier of L_ada.
        on_generator: whether L_ada also enters G's loss (``pop_loss(generator_step=True)`` returns 0 otherwise).
    """

    def __init__(self, pairs: str = "within", distance: str = "cos", alpha: float = 1.0, noise: float = 0.05,
                 weight: float = 1.0, on_generator: bool = True, pairing: str = "derangement") -> None:
        if pairing not in PAIRINGS:
            raise ValueError(f"unknown AdaptiveMix pairing {pairing!r}; valid values: {', '.join(PAIRINGS)}")
        if pairs not in PAIRS:
            raise ValueError(f"unknown AdaptiveMix pairs {pairs!r}; valid values: {', '.join(PAIRS)}")
        if distance not in DISTANCES:
            raise ValueError(f"unknown AdaptiveMix distance {distance!r}; valid distances: {', '.join(DISTANCES)}")
        if not isinstance(noise, (int, float)) or noise < 0:
            raise ValueError(f"AdaptiveMix noise must be a std >= 0, got {noise!r}")
        if not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"AdaptiveMix weight must be >= 0, got {weight!r}")
        self.pairs = pairs
        self.pairing = pairing
        self.distance = distance
        self.alpha = check_alpha(alpha)
        self.noise = float(noise)
        self.weight = float(weight)
        self.on_generator = bool(on_generator)
        self._recorded: list[Tensor] = []

    def __repr__(self) -> str:
        return (f"AdaptiveMix(pairs={self.pairs!r}, pairing={self.pairing!r}, distance={self.distance!r}, alpha={self.alpha}, "
                f"noise={self.noise}, weight={self.weight}, on_generator={self.on_generator})")

    def draw_lambda(self, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """One lam ~ Beta(alpha, alpha) as a 0-d tensor on ``device`` (no host sync)."""
        return sample_beta(self.alpha, 1, device=device, generator=generator)[0]

    def wrap(self, features: Features, head: Head,
             groups_fn: Callable[[Any], Tensor | None] | None = None) -> Critic:
        """A critic ``(images (N, C, H, W), cond) -> logits`` for the GAN losses.

        ``pairs="within"``: the official mixing critic; each call records ``weight * L_ada`` for ``pop_loss``.
        ``groups_fn(cond) -> (N,) int tensor`` (e.g. StarGAN v2 domain labels) restricts the pairs to a group, so a
        conditional critic mixes images that share a condition. ``pairs="real_fake"``: ``head(features(x, c), c)``.
        """
        if self.pairs == "real_fake":
            return lambda images, cond: head(features(images, cond), cond)

        def critic(images: Tensor, cond: Any, generator: torch.Generator | None = None) -> Tensor:
            if images.dim() != 4:
                raise ValueError(f"AdaptiveMix critic expects images (N, C, H, W), got {tuple(images.shape)}")
            perm = self._permutation(images, cond, groups_fn, generator)
            lam = self.draw_lambda(images.device, generator)
            logits, loss = mix_within(features, head, images, cond, lam, perm, self.noise, self.distance, generator)
            self._recorded.append(self.weight * loss)
            return logits

        return critic

    def _permutation(self, images: Tensor, cond: Any, groups_fn: Callable[[Any], Tensor | None] | None,
                     generator: torch.Generator | None) -> Tensor:
        n = images.shape[0]
        if self.pairing == "batch":
            return torch.randperm(n, device=images.device, generator=generator)
        groups = groups_fn(cond) if groups_fn is not None else None
        if groups is None:
            groups = torch.zeros(n, dtype=torch.long, device=images.device)
        elif groups.shape != images.shape[:1]:
            raise ValueError(f"groups_fn must return ({n},) labels for a batch of {n}, got shape {tuple(groups.shape)}")
        pair = group_derangement if self.pairing == "derangement" else group_permutation
        return pair(groups.to(images.device), generator)

    def pop_loss(self, generator_step: bool = False) -> Tensor:
        """Sum of the losses recorded by wrapped critics since the last pop (0-d; 0 if none), then clear them.

        With ``generator_step=True`` and ``on_generator=False`` the records are dropped and 0 is returned.
        """
        recorded, self._recorded = self._recorded, []
        if not recorded:
            return torch.zeros(())
        total = torch.stack(recorded).sum()
        if generator_step and not self.on_generator:
            return torch.zeros((), device=total.device)
        return total

    def real_fake_loss(self, features: Features, real: Tensor, fake: Tensor, cond: Any,
                       generator: torch.Generator | None = None) -> Tensor:
        """Paper variant: ``weight * distance(F(lam real + (1 - lam) fake), (lam F(real) + (1 - lam) F(fake) + n))``.

        Args:
            real, fake: (N, C, H, W) in [-1, 1]; real[i] shares fake[i]'s condition ``cond``. Gradients flow through
            ``F(x^)`` into the features and, unless detached by the caller, into ``fake`` (G step).
        Returns:
            0-d loss.
        """
        if real.dim() != 4 or real.shape != fake.shape:
            raise ValueError(f"real and fake must be (N, C, H, W) of the same shape, got {tuple(real.shape)} and "
                             f"{tuple(fake.shape)}")
        lam = self.draw_lambda(real.device, generator)
        h_easy = _lerp(features(real, cond), features(fake, cond), lam)
        h_hard = features(_lerp(real, fake, lam), cond)
        return self.weight * feature_distance(h_hard, _noisy_target(h_easy, self.noise, generator), self.distance)
