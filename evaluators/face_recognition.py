"""Face-recognition metrics for NIR -> VIS "recognition via generation" (CASIA NIR-VIS 2.0, ReMix Table 2).

Probes (translated NIR images) are matched against a gallery (one VIS image per subject) by the cosine similarity of
their LightCNN-29v2 features. Genuine pairs are (probe, gallery image of the probe's subject); every other pair is an
impostor. Higher scores mean more similar.

    result = rank1_vr(probe_feats, probe_ids, gallery_feats, gallery_ids)       # fold 1: 6,208 x 358, well under 1 s
    result["rank1"], result["vr_far_1e-2"], result["vr_far_1e-3"]                 # fractions in [0, 1]
    genuine, impostor = genuine_impostor(cosine_scores(probe_feats, gallery_feats), probe_ids, gallery_ids)
    plot_roc({"ReMix": roc_curve(genuine, impostor)[:2]}, "roc.png")

Definitions (specs/nirvis.md):
- Rank-1: fraction of probes whose best-scoring gallery entry has the probe's identity. Ties at the top score are
  split by default (`ties="split"`: a probe whose top score is shared by n gallery entries, g of them genuine, counts
  g / n, the expected value under random tie-breaking); "pessimistic" counts it only when all n are genuine,
  "optimistic" when any is. Probes whose identity has no gallery entry count as misses.
- VR@FAR: a pair is accepted when its score is strictly greater than the threshold t(FAR) = the (k+1)-th largest
  impostor score, k = the largest integer with k / N_imp <= FAR (k = floor(FAR * N_imp)); VR = fraction of genuine
  scores > t. This is the TPR of the ROC point with the largest FPR <= FAR (ROC over the distinct scores, accepting
  score >= threshold, as sklearn's `roc_curve` without dropped points). Scores tied with t are rejected, genuine and
  impostor alike, so at most k impostors are accepted.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from i2i.fileio import atomic_write

__all__ = [
    "TIE_CONVENTION", "RANK1_TIES", "cosine_scores", "genuine_mask", "genuine_impostor", "rank1", "threshold_at_far",
    "verification_rate", "vr_at_far", "roc_curve", "far_key", "rank1_vr", "plot_roc",
]

RANK1_TIES = ("split", "pessimistic", "optimistic")
TIE_CONVENTION = ("VR: accept score > t(FAR), t = the (floor(FAR*N_imp)+1)-th largest impostor score (ties with t "
                  "rejected); Rank-1: ties at the top score split (g genuine of n tied count g/n)")

ArrayLike = Any  # numpy arrays, sequences, or torch tensors (converted without importing torch: the app is torch-free)


def _host(x: Any) -> Any:
    """A torch tensor as a CPU array (duck-typed), anything else unchanged."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") and hasattr(x, "cpu") else x


def _as_float64(x: ArrayLike, what: str) -> np.ndarray:
    array = np.asarray(_host(x), dtype=np.float64)
    if np.isnan(array).any():
        raise ValueError(f"{what} contain NaN")
    return array


def cosine_scores(probe_feats: ArrayLike, gallery_feats: ArrayLike) -> np.ndarray:
    """(P, D) and (G, D) features -> (P, G) float64 cosine similarities in [-1, 1] (a zero vector scores 0)."""
    probes, gallery = _as_float64(probe_feats, "probe features"), _as_float64(gallery_feats, "gallery features")
    if probes.ndim != 2 or gallery.ndim != 2 or probes.shape[1] != gallery.shape[1]:
        raise ValueError(f"expected features (P, D) and (G, D), got {probes.shape} and {gallery.shape}")
    probes = probes / np.maximum(np.linalg.norm(probes, axis=1, keepdims=True), 1e-12)
    gallery = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    return probes @ gallery.T


def _id_codes(probe_ids: Sequence | np.ndarray, gallery_ids: Sequence | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes for identities (ints or strings; int 10117 and str '10117' are the same subject)."""
    p = np.asarray(_host(probe_ids)).ravel()
    g = np.asarray(_host(gallery_ids)).ravel()
    if not (p.dtype.kind in "iub" and g.dtype.kind in "iub"):
        p, g = p.astype(str), g.astype(str)
    _, codes = np.unique(np.concatenate([p, g]), return_inverse=True)
    return codes[: p.size], codes[p.size:]


def genuine_mask(probe_ids: Sequence | np.ndarray, gallery_ids: Sequence | np.ndarray) -> np.ndarray:
    """(P, G) bool: True where probe i and gallery entry j are the same identity."""
    p, g = _id_codes(probe_ids, gallery_ids)
    return p[:, None] == g[None, :]


def _scores_and_mask(scores: ArrayLike, probe_ids, gallery_ids) -> tuple[np.ndarray, np.ndarray]:
    s = _as_float64(scores, "scores")
    if s.ndim != 2:
        raise ValueError(f"expected a (probes, gallery) score matrix, got shape {s.shape}")
    mask = genuine_mask(probe_ids, gallery_ids)
    if mask.shape != s.shape:
        raise ValueError(f"scores {s.shape} do not match {mask.shape[0]} probe ids x {mask.shape[1]} gallery ids")
    return s, mask


def genuine_impostor(scores: ArrayLike, probe_ids, gallery_ids) -> tuple[np.ndarray, np.ndarray]:
    """1-D float64 genuine scores (same identity) and impostor scores (all other pairs) of a (P, G) score matrix."""
    s, mask = _scores_and_mask(scores, probe_ids, gallery_ids)
    return s[mask], s[~mask]


def _rank1(s: np.ndarray, mask: np.ndarray, ties: str) -> float:
    if ties not in RANK1_TIES:
        raise ValueError(f"ties must be one of {RANK1_TIES}, got {ties!r}")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"rank-1 needs >= 1 probe and >= 1 gallery entry, got scores of shape {s.shape}")
    at_top = s == s.max(axis=1, keepdims=True)
    n_top = at_top.sum(axis=1)
    g_top = (at_top & mask).sum(axis=1)
    if ties == "split":
        hits = g_top / n_top
    elif ties == "pessimistic":
        hits = (g_top == n_top).astype(np.float64)
    else:
        hits = (g_top > 0).astype(np.float64)
    return float(hits.mean())


def rank1(scores: ArrayLike, probe_ids, gallery_ids, *, ties: str = "split") -> float:
    """Rank-1 identification rate in [0, 1] of a (P, G) score matrix (see the module docstring for `ties`)."""
    s, mask = _scores_and_mask(scores, probe_ids, gallery_ids)
    return _rank1(s, mask, ties)


def _false_accepts_allowed(far: float, n_impostor: int) -> int:
    """The largest k with k / n_impostor <= far (computed with the same float division as an ROC's FPR)."""
    if not 0 < far <= 1:
        raise ValueError(f"FAR must be in (0, 1], got {far}")
    k = min(int(math.floor(far * n_impostor)), n_impostor)
    while k < n_impostor and (k + 1) / n_impostor <= far:
        k += 1
    while k > 0 and k / n_impostor > far:
        k -= 1
    return k


def _thresholds(impostor: np.ndarray, fars: Sequence[float]) -> list[float]:
    n = impostor.size
    if n == 0:
        raise ValueError("no impostor scores: VR@FAR needs at least one impostor pair")
    ks = [_false_accepts_allowed(far, n) for far in fars]
    positions = sorted({n - 1 - k for k in ks if k < n})  # ascending order: the (k+1)-th largest is at n - 1 - k
    ordered = np.partition(impostor, positions) if positions else impostor
    return [float(ordered[n - 1 - k]) if k < n else -math.inf for k in ks]


def threshold_at_far(impostor: ArrayLike, far: float) -> float:
    """t(FAR): the (k+1)-th largest impostor score, k = floor(FAR * N_imp) false accepts allowed (-inf when k = N_imp)."""
    return _thresholds(_as_float64(impostor, "impostor scores").ravel(), [far])[0]


def verification_rate(genuine: ArrayLike, impostor: ArrayLike, far: float) -> float:
    """VR@FAR in [0, 1]: fraction of genuine scores strictly above `threshold_at_far(impostor, far)`."""
    g = _as_float64(genuine, "genuine scores").ravel()
    if g.size == 0:
        raise ValueError("no genuine scores: VR@FAR needs at least one genuine pair")
    return float(np.count_nonzero(g > threshold_at_far(impostor, far)) / g.size)


def vr_at_far(scores: ArrayLike, probe_ids, gallery_ids, fars: float | Sequence[float] = (1e-2, 1e-3)
              ) -> float | dict[float, float]:
    """VR@FAR of a (P, G) score matrix: a float for one FAR, {far: VR} for several."""
    genuine, impostor = genuine_impostor(scores, probe_ids, gallery_ids)
    if isinstance(fars, (int, float)):
        return verification_rate(genuine, impostor, float(fars))
    return {far: _vr(genuine, t) for far, t in zip(fars, _thresholds(impostor, list(fars)))}


def _vr(genuine: np.ndarray, threshold: float) -> float:
    if genuine.size == 0:
        raise ValueError("no genuine scores: VR@FAR needs at least one genuine pair")
    return float(np.count_nonzero(genuine > threshold) / genuine.size)


def roc_curve(genuine: ArrayLike, impostor: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): one point per distinct score, accepting score >= threshold, thresholds decreasing from
    +inf (the (0, 0) point) to the lowest score (the (1, 1) point); equal to sklearn's `roc_curve(...,
    drop_intermediate=False)` except that its first threshold is +inf rather than max + 1."""
    g = _as_float64(genuine, "genuine scores").ravel()
    i = _as_float64(impostor, "impostor scores").ravel()
    if g.size == 0 or i.size == 0:
        raise ValueError(f"an ROC needs genuine and impostor scores, got {g.size} and {i.size}")
    values = np.concatenate([g, i])
    order = np.argsort(-values, kind="stable")
    sorted_values = values[order]
    is_genuine = order < g.size
    last_of_value = np.r_[np.flatnonzero(np.diff(sorted_values)), sorted_values.size - 1]
    tps = np.cumsum(is_genuine)[last_of_value]
    fps = last_of_value + 1 - tps
    fpr = np.r_[0.0, fps / i.size]
    tpr = np.r_[0.0, tps / g.size]
    return fpr, tpr, np.r_[math.inf, sorted_values[last_of_value]]


def far_key(far: float) -> str:
    """1e-2 -> "vr_far_1e-2" (the result-file and table field name)."""
    mantissa, exponent = f"{far:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"vr_far_{mantissa}e{int(exponent)}"


def rank1_vr(probe_feats: ArrayLike, probe_ids, gallery_feats: ArrayLike, gallery_ids,
             fars: Sequence[float] = (1e-2, 1e-3), *, ties: str = "split") -> dict[str, Any]:
    """Rank-1 and VR@FAR from features: cosine scores, then the module's definitions. Returns fractions in [0, 1]:
    {"rank1", "vr_far_1e-2", "vr_far_1e-3", ..., "threshold_far_1e-2", ..., "probes", "gallery", "genuine_pairs",
    "impostor_pairs", "probes_without_gallery_identity", "tie_convention", "rank1_ties"}."""
    s, mask = _scores_and_mask(cosine_scores(probe_feats, gallery_feats), probe_ids, gallery_ids)
    genuine, impostor = s[mask], s[~mask]
    thresholds = _thresholds(impostor, list(fars))
    result: dict[str, Any] = {"rank1": _rank1(s, mask, ties)}
    for far, t in zip(fars, thresholds):
        result[far_key(far)] = _vr(genuine, t)
    for far, t in zip(fars, thresholds):
        result[far_key(far).replace("vr_", "threshold_")] = t
    result.update({"probes": int(s.shape[0]), "gallery": int(s.shape[1]), "genuine_pairs": int(genuine.size),
                   "impostor_pairs": int(impostor.size),
                   "probes_without_gallery_identity": int(np.count_nonzero(~mask.any(axis=1))),
                   "tie_convention": TIE_CONVENTION, "rank1_ties": ties})
    return result


def _thin(fpr: np.ndarray, tpr: np.ndarray, points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """The ROC step function sampled at log-spaced FPRs (plus its ends): what a plot can show of millions of points."""
    fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
    if fpr.size <= points:
        return fpr, tpr
    positive = fpr[fpr > 0]
    grid = np.unique(np.r_[np.geomspace(positive.min(), 1.0, points), positive.min(), 1.0])
    index = np.searchsorted(fpr, grid, side="right") - 1  # last point with fpr <= grid: the best TPR at that FAR
    return grid, tpr[index]


def plot_roc(curves: Mapping[str, tuple[ArrayLike, ArrayLike] | tuple[ArrayLike, ArrayLike, ArrayLike]],
             path: str | Path, *, fars: Sequence[float] = (1e-2, 1e-3), title: str = "ROC (NIR-VIS verification)"
             ) -> Path:
    """Writes a PNG of the ROC curves {name: (fpr, tpr[, thresholds])}: TPR (VR) against FPR (FAR) on a log axis,
    with dotted lines at `fars`. FPR = 0 points are not drawable on the log axis and start the curve at the smallest
    positive FPR. Needs matplotlib (uses no pyplot global state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("plot_roc needs matplotlib: pip install matplotlib") from error
    if not curves:
        raise ValueError("plot_roc needs at least one curve")
    figure = Figure(figsize=(5.5, 4.2), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    smallest = 1.0
    for name, curve in curves.items():
        fpr, tpr = (np.asarray(_host(c), dtype=np.float64) for c in curve[:2])
        if fpr.shape != tpr.shape or fpr.ndim != 1 or fpr.size == 0:
            raise ValueError(f"curve {name!r}: fpr and tpr must be 1-D arrays of one length, "
                             f"got {fpr.shape} and {tpr.shape}")
        fpr, tpr = _thin(fpr, tpr)
        keep = fpr > 0
        if keep.any():
            smallest = min(smallest, float(fpr[keep].min()))
            axes.plot(fpr[keep], tpr[keep], drawstyle="steps-post", label=str(name), linewidth=1.4)
    for far in fars:
        axes.axvline(far, color="0.6", linestyle=":", linewidth=1)
    axes.set_xscale("log")
    axes.set_xlim(min(smallest, min(fars, default=1.0)) * 0.8, 1.0)
    axes.set_ylim(0.0, 1.01)
    axes.set_xlabel("false accept rate (FAR)")
    axes.set_ylabel("verification rate (VR = TPR)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    path = Path(path)
    atomic_write(path, lambda f: figure.savefig(f, format="png"))
    return path
