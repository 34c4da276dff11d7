"""ReMix (Cao et al., CVPR 2021, paper 002) and its baselines WM and mixup.

With probability p a branch's batch is replaced by an interpolated one (Eq. 3, 6-7):
    mu ~ Beta(alpha, alpha),  lambda = max(mu, 1 - mu) >= 0.5,  e' = lambda * e1 + (1 - lambda) * e2,  s' = G2(e')
and the task's content loss is replaced, for that batch, by
    remix  (Eq. 8-9):  L_p + L_n,  L_p = mean relu(d1 - d2),  L_n = mean relu(d2 - a_bar),  d_k = con(phi(s'), phi(t_k))
    wm     (Eq. 13):   con(phi(s'), phi(t1))                  (t1 is the target of the sample that weighs more)
    mixup  (Eq. 12):   con(phi(s'), phi(lambda t1 + (1 - lambda) t2))
a_bar tracks the mean distance of unrelated output/target pairs (Eq. 10-11), updated without gradient after each
ReMix step from a = mean_i con(phi(s'_i), phi(t2_j)), j != i (a derangement of the batch). With `a_bar="per_branch"`
each branch of a task keeps its own a_bar (StarGAN v2's latent and reference branches measure distances between
different networks' codes, whose scales differ); "shared" is one value for all, as a one-branch reading of the paper.

Which branches mix, and how often: `draw="per_branch"` draws "mix or not" (probability p) and lambda for every mixing
branch independently (StarGAN v2's two branches then mix about 44% of iterations at p = 0.25); "per_iteration" draws
once and mixes every mixing branch of that iteration with the same lambda (p of the iterations).

All random draws of this module come from its own numpy generator (saved in checkpoints), so a run with p = 0 makes
exactly the same torch computations as a run without feature mixing.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from i2i.mixing.common import index_cond

FEATURE_MIX_METHODS = ("none", "remix", "wm", "mixup")
MOMENTUM_FORMS = ("paper", "ema")
DRAWS = ("per_branch", "per_iteration")
A_BAR_MODES = ("per_branch", "shared")

Distance = Callable[[Any, Any], Tensor]


def draw_lambda(rng: np.random.Generator, alpha: float, size: int | None = None) -> np.ndarray:
    """lambda = max(mu, 1 - mu) with mu ~ Beta(alpha, alpha): a scalar (size None) or (size,) values in [0.5, 1]."""
    mu = rng.beta(alpha, alpha, size=size)
    return np.maximum(mu, 1.0 - mu)


def interpolate(e1: Any, e2: Any, lam: Tensor) -> Any:
    """lam * e1 + (1 - lam) * e2 for tensors or (nested) lists/tuples/dicts of tensors.

    lam: 0-d (one weight for the batch) or (N,) (one per sample), broadcast over the remaining dimensions.
    Parts that are the same object in e1 and e2 (e.g. a style code shared by both batches) are passed through.
    """
    if e1 is e2:
        return e1
    if isinstance(e1, Tensor):
        w = lam.to(device=e1.device, dtype=e1.dtype)
        if w.dim() == 1:
            w = w.view(-1, *([1] * (e1.dim() - 1)))
        return w * e1 + (1 - w) * e2
    if isinstance(e1, dict):
        return {k: interpolate(e1[k], e2[k], lam) for k in e1}
    if isinstance(e1, (list, tuple)):
        return type(e1)(interpolate(a, b, lam) for a, b in zip(e1, e2))
    raise TypeError(f"cannot interpolate values of type {type(e1).__name__}; expected tensors or lists/dicts of them")


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of range(n) with no fixed point (n >= 2)."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 elements, got a batch of {n}")
    while True:  # about e tries on average
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def relative_content_loss(
    phi_s: Any, phi_t1: Any, phi_t2: Any, distance: Distance, a_bar: float | Tensor
) -> tuple[Tensor, Tensor]:
    """L'_con = L_p + L_n (Eq. 8-9). Returns (L_p, L_n); gradients flow into phi_s and the targets."""
    d1 = distance(phi_s, phi_t1)
    d2 = distance(phi_s, phi_t2)
    l_p = torch.relu(d1 - d2).mean()
    l_n = torch.relu(d2 - a_bar).mean()
    return l_p, l_n


def update_a_bar(a_bar: float | Tensor, a: float | Tensor, momentum: float, form: str = "paper") -> float | Tensor:
    """Eq. 11 as printed (`paper`: m*a_bar + (1-m)*(a - a_bar), fixed point a/2) or the usual EMA (`ema`, fixed point a)."""
    if form == "paper":
        return momentum * a_bar + (1.0 - momentum) * (a - a_bar)
    if form == "ema":
        return momentum * a_bar + (1.0 - momentum) * a
    raise ValueError(f"momentum_form must be one of {', '.join(MOMENTUM_FORMS)}, got {form!r}")


class FeatureMix:
    """ReMix / WM / mixup on the G1 features of a task; `method='none'` (or p = 0) is the plain baseline."""

    def __init__(
        self,
        method: str = "none",
        p: float = 0.25,
        alpha: float = 0.2,
        per_sample: bool = False,
        momentum: float = 0.99,
        momentum_form: str = "paper",
        seed: int = 0,
        draw: str = "per_branch",
        a_bar_mode: str = "per_branch",
        branches: tuple[str, ...] | None = None,
    ):
        if method not in FEATURE_MIX_METHODS:
            raise ValueError(f"feature-mix method must be one of {', '.join(FEATURE_MIX_METHODS)}, got {method!r}")
        if momentum_form not in MOMENTUM_FORMS:
            raise ValueError(f"momentum_form must be one of {', '.join(MOMENTUM_FORMS)}, got {momentum_form!r}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"the mixing probability p must be in [0, 1], got {p}")
        if alpha <= 0:
            raise ValueError(f"alpha (the Beta distribution parameter) must be > 0, got {alpha}")
        if draw not in DRAWS or a_bar_mode not in A_BAR_MODES:
            raise ValueError(f"draw must be one of {DRAWS} and a_bar one of {A_BAR_MODES}, got {draw!r}, {a_bar_mode!r}")
        self.method, self.p, self.alpha, self.per_sample = method, p, alpha, per_sample
        self.momentum, self.momentum_form = momentum, momentum_form
        self.draw_mode, self.a_bar_mode = draw, a_bar_mode
        self.branches = None if branches is None else tuple(branches)  # None: every branch mixes
        # per branch: a_bar, a 0-d float32 tensor on the batch's device once updated (a float from a checkpoint), so
        # that updating it needs no host sync
        self.a_bars: dict[str, float | Tensor] = {}
        self.rng = np.random.default_rng(seed)
        self.reduce: Callable[[Tensor], Tensor] | None = None  # under DDP: the mean over the ranks

    @classmethod
    def from_config(cls, remix_cfg, seed: int) -> "FeatureMix":
        branches = None if remix_cfg.branches == "all" else tuple(remix_cfg.branches.split(","))
        return cls(remix_cfg.method, remix_cfg.p, remix_cfg.alpha, remix_cfg.per_sample, remix_cfg.momentum,
                   remix_cfg.momentum_form, seed=seed, draw=remix_cfg.draw, a_bar_mode=remix_cfg.a_bar,
                   branches=branches)

    def _a_bar_key(self, branch: str) -> str:
        return branch if self.a_bar_mode == "per_branch" else ""

    @property
    def a_bar(self) -> float:
        """The a_bar of the unnamed branch (one-branch use and the shared mode)."""
        return float(self.a_bars.get("", 0.0))

    @a_bar.setter
    def a_bar(self, value: float) -> None:
        self.a_bars[""] = float(value)

    @property
    def enabled(self) -> bool:
        return self.method != "none" and self.p > 0

    def draw(self, batch_size: int) -> Tensor | None:
        """With probability p, the interpolation weight for one branch: 0-d, or (N,) with per_sample; else None."""
        if not self.enabled or self.rng.random() >= self.p:
            return None
        lam = draw_lambda(self.rng, self.alpha, batch_size if self.per_sample else None)
        return torch.as_tensor(lam, dtype=torch.float32)

    def draw_branches(self, names: list[str], batch_size: int) -> dict[str, Tensor | None]:
        """The interpolation weight (or None) of each branch of an iteration, by the `draw` mode; branches not in
        `branches` never mix and take no draw."""
        mixing = [n for n in names if self.branches is None or n in self.branches]
        if self.draw_mode == "per_iteration":
            lam = self.draw(batch_size)
            return {n: (lam if n in mixing else None) for n in names}
        drawn = {n: self.draw(batch_size) for n in mixing}
        return {n: drawn.get(n) for n in names}

    def interpolate(self, e1: Any, e2: Any, lam: Tensor) -> Any:
        return interpolate(e1, e2, lam)

    def content_loss(
        self,
        phi_s: Any,
        t1: Any,
        t2: Any,
        lam: Tensor | None,
        target_content: Callable[[Any], Any],
        distance: Distance,
        branch: str = "",
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The content loss of a batch: plain (lam None), or the method's form for an interpolated batch.

        phi_s: φ(s) of the generated batch; t1, t2: targets of the two batches in target space;
        target_content: t -> φ(t); distance: (φa, φb) -> (N,) per-sample distances; branch: whose a_bar to use.
        """
        if lam is None:
            return distance(phi_s, target_content(t1)).mean(), {}
        logs = {"lambda": lam.mean()}
        if self.method == "wm":
            return distance(phi_s, target_content(t1)).mean(), logs
        if self.method == "mixup":
            return distance(phi_s, target_content(interpolate(t1, t2, lam))).mean(), logs
        key = self._a_bar_key(branch)
        a_bar = self.a_bars.get(key, 0.0)
        phi_t2 = target_content(t2)
        l_p, l_n = relative_content_loss(phi_s, target_content(t1), phi_t2, distance, a_bar)
        with torch.no_grad():
            # one draw from the module's generator whatever the batch size and the rejection tries, so the later
            # mixing draws (mix or not, lambda) are the same for any number of ranks
            pairing = np.random.default_rng(int(self.rng.integers(2**63)))
            perm = torch.from_numpy(derangement(_batch_size(phi_s), pairing))
            a = distance(_detach(phi_s), _detach(index_cond(phi_t2, perm))).mean().float()
            if self.reduce is not None:
                a = self.reduce(a)
            # a float (none yet, or from a checkpoint) becomes the float32 tensor it was saved from: a resumed run
            # updates exactly as the uninterrupted one
            a_bar = torch.as_tensor(a_bar, dtype=torch.float32, device=a.device)
            self.a_bars[key] = update_a_bar(a_bar, a, self.momentum, self.momentum_form)
        logs.update(l_p=l_p.detach(), l_n=l_n.detach(), a=a, a_bar=a_bar)
        return l_p + l_n, logs

    def state_dict(self) -> dict:
        return {"a_bars": {k: float(v) for k, v in self.a_bars.items()},
                "rng": _rng_state_to_plain(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict) -> None:
        # checkpoints written before per-branch a_bar hold one shared value
        self.a_bars = {k: float(v) for k, v in state["a_bars"].items()} if "a_bars" in state else \
            {"": float(state["a_bar"])}
        self.rng.bit_generator.state = state["rng"]


def _detach(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, dict):
        return {k: _detach(v) for k, v in x.items()}
    return type(x)(_detach(v) for v in x)


def _batch_size(x: Any) -> int:
    if isinstance(x, Tensor):
        return x.shape[0]
    if isinstance(x, dict):
        return _batch_size(next(iter(x.values())))
    return _batch_size(x[0])


def _rng_state_to_plain(state: dict) -> dict:
    """numpy bit-generator state as plain Python values (checkpoints are loaded with weights_only=True)."""
    return {k: (_rng_state_to_plain(v) if isinstance(v, dict) else int(v) if isinstance(v, np.integer) else v)
            for k, v in state.items()}
