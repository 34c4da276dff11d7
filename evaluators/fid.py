"""Fréchet Inception Distance: feature backbones, batched feature extraction, statistics, and the distance itself.

Two Inception feature extractors are in use and give different numbers (see specs/evaluators.md):
- `pytorch-fid`: the TF-Inception port (`FIDInceptionV3`, weights `pt_inception-2015-12-05-6726825d.pth`), the common FID;
- `torchvision`: torchvision's inception_v3 ImageNet weights with StarGAN v2's preprocessing, what the ReMix paper's
  AFHQ table uses.
A third, `proxy`, is a small CNN trained on the dataset itself (evaluators.proxy): never comparable to papers.

    backbone = build_backbone("torchvision", image_size=256)
    fake = extract_features(backbone, fake_images)             # (N, 2048), images in [-1, 1]
    mu, sigma = statistics(fake)
    value = frechet_distance(mu, sigma, *load_statistics("real_cat.npz"))

Every backbone says whether its numbers are `calibrated` (official pretrained weights) or not (random/proxy weights).
"""
from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from tqdm import tqdm

from evaluators.nets.inception import FEATURE_DIM, INPUT_SIZE, FIDInceptionV3
from i2i.fileio import atomic_write
from i2i.weights import MissingWeightsError, load_weights

__all__ = [
    "FIDInceptionV3", "FeatureBackbone", "PytorchFIDBackbone", "TorchvisionInceptionBackbone", "build_backbone",
    "extract_features", "statistics", "frechet_distance", "fid_to_statistics", "fid_from_features", "save_statistics",
    "load_statistics", "dataset_statistics",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONES = ("torchvision", "pytorch-fid", "proxy")


# ----------------------------------------------------------------------------------------------------------------------
# Backbones


class FeatureBackbone(nn.Module, abc.ABC):
    """A frozen feature extractor for Fréchet distances.

    `features(images (N, 3, H, W) in [-1, 1], float) -> (N, dim)`. Inputs are clamped to [-1, 1] first, as the official
    evaluations save images to 8-bit files before scoring them. `name` is written into every result; `calibrated` is
    True only when the official pretrained weights are loaded (numbers comparable with papers).
    """

    name: str = ""
    dim: int = 0

    def __init__(self, calibrated: bool) -> None:
        super().__init__()
        self.calibrated = calibrated
        self.training = False

    def train(self, mode: bool = True) -> "FeatureBackbone":
        """Always eval: batch-norm batch statistics must never leak into the features."""
        return super().train(False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self._features(_unit_range(images))

    @abc.abstractmethod
    def _features(self, images01: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, dim)."""

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}, calibrated={self.calibrated}"


def _unit_range(images: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"expected images of shape (N, 3, H, W), got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [-1, 1], got dtype {images.dtype} (convert uint8 with x / 127.5 - 1)")
    return (images.clamp(-1, 1) + 1) / 2


class PytorchFIDBackbone(FeatureBackbone):
    """pytorch-fid's FID: `FIDInceptionV3` pool3 features (2048-d), bilinear resize to 299 without antialias."""

    name = "pytorch-fid"
    dim = FEATURE_DIM

    def __init__(self, net: FIDInceptionV3, calibrated: bool) -> None:
        super().__init__(calibrated)
        self.net = net.eval().requires_grad_(False)

    def _features(self, images01: torch.Tensor) -> torch.Tensor:
        return self.net(images01)


class TorchvisionInceptionBackbone(FeatureBackbone):
    """StarGAN v2's FID features: torchvision inception_v3, Conv2d_1a..Mixed_7c + global average pool (2048-d).

    Images are resized to `image_size` (the model's S, when given) and then to 299, bilinearly with antialiasing (the
    official code resizes PIL images, which antialias when shrinking), and normalised with ImageNet mean/std. torchvision's
    `transform_input` is not applied: the official code calls the blocks directly.
    """

    name = "torchvision"
    dim = FEATURE_DIM

    def __init__(self, net: torchvision.models.Inception3, calibrated: bool, image_size: int | None = None) -> None:
        super().__init__(calibrated)
        net.fc = nn.Identity()  # the classifier is unused; the network then returns the pooled features
        net.transform_input = False
        self.net = net.eval().requires_grad_(False)
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _features(self, images01: torch.Tensor) -> torch.Tensor:
        for size in (self.image_size, INPUT_SIZE):
            if size is not None and images01.shape[-2:] != (size, size):
                images01 = F.interpolate(images01, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return self.net((images01 - self.mean) / self.std)


@contextlib.contextmanager
def seeded(seed: int):
    """Random weights for tests/demos must be reproducible without touching the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _official_or_random(entry: str, weights_path: str | Path | None, allow_random: bool, trust: bool):
    """The registry state dict, or None when it is missing and random weights are allowed (the caller labels them)."""
    try:
        return load_weights(entry, weights_path, trust=trust)
    except MissingWeightsError:
        if not allow_random or weights_path is not None:
            raise
        return None


def _pytorch_fid(weights_path, allow_random: bool, trust: bool) -> PytorchFIDBackbone:
    state = _official_or_random("fid_inception", weights_path, allow_random, trust)
    with seeded(0):
        net = FIDInceptionV3()
    if state is not None:
        net.load_official_state_dict(state)
    return PytorchFIDBackbone(net, calibrated=state is not None)


def _torchvision(weights_path, allow_random: bool, trust: bool, image_size: int | None) -> TorchvisionInceptionBackbone:
    state = _official_or_random("inception_v3_torchvision", weights_path, allow_random, trust)
    with seeded(0):
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=state is None)
    if state is not None:
        # The ImageNet file also holds the auxiliary classifier, which this trunk does not build.
        net.load_state_dict({k: v for k, v in state.items() if not k.startswith("AuxLogits.")}, strict=True)
    return TorchvisionInceptionBackbone(net, calibrated=state is not None, image_size=image_size)


def build_backbone(name: str, *, weights_path: str | Path | None = None, image_size: int | None = None,
                   allow_random: bool = False, trust: bool = False,
                   device: str | torch.device | None = None) -> FeatureBackbone:
    """A frozen, eval-mode feature backbone by name: "torchvision" | "pytorch-fid" | "proxy".

    Weights come from the registry (`weights_path` overrides the search; for "proxy" it is the trained proxy file from
    `evaluators.proxy.train_proxy`). `allow_random=True` falls back to seeded random weights when the official file
    is missing (tests/demo only); the backbone is then `calibrated=False`. `image_size` is the model's resolution S for
    StarGAN v2's resize-to-S-then-299 ("torchvision" only).
    """
    if name == "torchvision":
        backbone = _torchvision(weights_path, allow_random, trust, image_size)
    elif name == "pytorch-fid":
        backbone = _pytorch_fid(weights_path, allow_random, trust)
    elif name == "proxy":
        from evaluators.proxy import load_proxy, random_proxy  # proxy.py builds on this module

        if weights_path is not None:
            backbone = load_proxy(weights_path)
        elif allow_random:
            backbone = random_proxy(num_classes=2)
        else:
            raise ValueError("the proxy backbone is trained on the dataset: call evaluators.proxy.train_proxy(...) and "
                             "pass the returned file as weights_path")
    else:
        raise ValueError(f"unknown FID backbone '{name}'; expected one of {BACKBONES}")
    return backbone.to(device) if device is not None else backbone


# ----------------------------------------------------------------------------------------------------------------------
# Feature extraction


def _batches(data: torch.Tensor | Iterable, batch_size: int) -> Iterable[torch.Tensor]:
    if torch.is_tensor(data):
        for start in range(0, len(data), batch_size):
            yield data[start:start + batch_size]
        return
    for batch in data:
        if isinstance(batch, (tuple, list)):  # (images, labels) from an image-folder style loader
            batch = batch[0]
        if not torch.is_tensor(batch):
            raise ValueError(f"a data loader for feature extraction must yield image tensors or (images, ...) tuples, "
                             f"got {type(batch).__name__}")
        yield batch


@torch.no_grad()
def extract_features(backbone: FeatureBackbone, data: torch.Tensor | Iterable, *, batch_size: int = 50,
                     progress: bool = True, description: str = "features") -> torch.Tensor:
    """Features of all images: `data` is a tensor (N, 3, H, W) in [-1, 1] or an iterable (e.g. a DataLoader) of such
    batches. Batches run on the backbone's device; returns (N, backbone.dim) float32 on the CPU."""
    device = next(backbone.parameters()).device
    total = len(data) if torch.is_tensor(data) else None
    outputs = []
    with tqdm(total=total, desc=description, unit="img", disable=not progress, leave=False) as bar:
        for batch in _batches(data, batch_size):
            outputs.append(backbone.features(batch.to(device)).float().cpu())
            bar.update(len(batch))
    if not outputs:
        raise ValueError("no images to extract features from (empty tensor or data loader)")
    return torch.cat(outputs)


# ----------------------------------------------------------------------------------------------------------------------
# Statistics and the distance


def _as_float64(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if torch.is_tensor(array):
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=np.float64)


def _features_matrix(features: np.ndarray | torch.Tensor) -> np.ndarray:
    features = _as_float64(features)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"expected features of shape (N >= 2, D), got {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or Inf")
    return features


def statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> (mu (D,), sigma (D, D)) in float64; sigma is the unbiased covariance (np.cov, as pytorch-fid)."""
    features = _features_matrix(features)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _check_gaussians(mu1, sigma1, mu2, sigma2) -> tuple[np.ndarray, ...]:
    mu1, mu2, sigma1, sigma2 = (_as_float64(a) for a in (mu1, mu2, sigma1, sigma2))
    if mu1.ndim != 1:
        raise ValueError(f"mu1 must be a mean vector (D,), got shape {mu1.shape}")
    d = mu1.shape[0]
    for label, array, shape in (("mu1", mu1, (d,)), ("mu2", mu2, (d,)), ("sigma1", sigma1, (d, d)),
                                ("sigma2", sigma2, (d, d))):
        if array.shape != shape:
            raise ValueError(f"{label} has shape {array.shape}, expected {shape} (mu1 has shape {mu1.shape})")
        if not np.isfinite(array).all():
            raise ValueError(f"{label} contains NaN or Inf")
    return mu1, sigma1, mu2, sigma2


def _sqrt_eigenvalue_sum(symmetric: np.ndarray) -> float:
    # Round-off makes a PSD matrix's smallest eigenvalues slightly negative; they are zero.
    eigenvalues = np.linalg.eigvalsh((symmetric + symmetric.T) / 2)
    return float(np.sqrt(np.clip(eigenvalues, 0, None)).sum())


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr(sqrt(S1 S2)) without sqrtm: for any factor S1 = F Fᵀ, S1 S2 has the eigenvalues of the symmetric PSD Fᵀ S2 F.

    F is the Cholesky factor (cheapest), or V sqrt(W) from `eigh` when S1 is singular (fewer samples than dimensions).
    """
    try:
        factor = np.linalg.cholesky(sigma1)
    except np.linalg.LinAlgError:
        eigenvalues, vectors = np.linalg.eigh(sigma1)
        factor = vectors * np.sqrt(np.clip(eigenvalues, 0, None))
    return _sqrt_eigenvalue_sum(factor.T @ sigma2 @ factor)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """d² = |mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)) for two Gaussians (mu (D,), sigma (D, D)), in float64.

    Equals pytorch-fid's scipy.linalg.sqrtm value to ~1e-10 relative on full-rank covariances and is several times
    faster at D=2048 (benchmarks/fid_bench.py).
    """
    mu1, sigma1, mu2, sigma2 = _check_gaussians(mu1, sigma1, mu2, sigma2)
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * _trace_sqrt_product(sigma1, sigma2)
    return max(float(value), 0.0)


def fid_to_statistics(features: np.ndarray | torch.Tensor, mu: np.ndarray, sigma: np.ndarray) -> float:
    """Fréchet distance between a feature set (N, D) and a Gaussian (mu (D,), sigma (D, D)), e.g. fakes vs cached real
    statistics; same value as `frechet_distance(*statistics(features), mu, sigma)`.

    With fewer samples than dimensions (N - 1 < D), S1 = AᵀA with A the centred features scaled by 1/sqrt(N - 1), and
    the non-zero eigenvalues of S1 S2 are those of the small (N, N) matrix A S2 Aᵀ: no D x D eigendecomposition.
    """
    features = _features_matrix(features)
    n, d = features.shape
    mu1, sigma1 = statistics(features)
    if n - 1 >= d:
        return frechet_distance(mu1, sigma1, mu, sigma)
    mu1, sigma1, mu2, sigma2 = _check_gaussians(mu1, sigma1, mu, sigma)
    centred = (features - mu1) / np.sqrt(n - 1)
    diff = mu1 - mu2
    value = (diff @ diff + np.trace(sigma1) + np.trace(sigma2)
             - 2 * _sqrt_eigenvalue_sum(centred @ sigma2 @ centred.T))
    return max(float(value), 0.0)


def fid_from_features(features1: np.ndarray | torch.Tensor, features2: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between two feature sets (N1, D), (N2, D); same value as `frechet_distance(*statistics(...))`.

    The smaller set goes through `fid_to_statistics`, which avoids D x D eigendecompositions when it has fewer samples
    than dimensions.
    """
    features1, features2 = _features_matrix(features1), _features_matrix(features2)
    if features1.shape[1] != features2.shape[1]:
        raise ValueError(f"feature sets differ in dimension: {features1.shape} vs {features2.shape}")
    if len(features2) < len(features1):
        features1, features2 = features2, features1
    return fid_to_statistics(features1, *statistics(features2))


# ----------------------------------------------------------------------------------------------------------------------
# Statistics files (pytorch-fid's .npz format: `mu`, `sigma`; we add the backbone name)


def save_statistics(path: str | Path, mu: np.ndarray, sigma: np.ndarray, backbone: str | None = None) -> Path:
    """Writes `mu`, `sigma` (and the backbone name) to an .npz that pytorch-fid can read too."""
    path = Path(path)
    extra = {"backbone": np.array(backbone)} if backbone is not None else {}
    atomic_write(path, lambda f: np.savez(f, mu=_as_float64(mu), sigma=_as_float64(sigma), **extra))
    return path


def load_statistics(path: str | Path, backbone: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reads (mu, sigma) from an .npz (ours or pytorch-fid's). If `backbone` is given and the file names another
    backbone, raises ValueError: statistics from different feature extractors are not comparable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"statistics file not found: '{path}'")
    with np.load(path) as data:
        missing = [k for k in ("mu", "sigma") if k not in data.files]
        if missing:
            raise ValueError(f"'{path}' is not a statistics file: missing {missing} (has {data.files})")
        stored = str(data["backbone"]) if "backbone" in data.files else None
        mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    if backbone is not None and stored is not None and stored != backbone:
        raise ValueError(f"'{path}' holds statistics of backbone '{stored}', but '{backbone}' was requested")
    return mu, sigma


def dataset_statistics(backbone: FeatureBackbone, data: torch.Tensor | Iterable, *, cache_path: str | Path | None = None,
                       batch_size: int = 50, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a data set's features, read from `cache_path` when it exists and written there otherwise.

    The cache path must identify the data set and its preprocessing (e.g. `<run>/eval/stats_<backbone>_<domain>.npz`);
    the backbone name is stored and checked on reading.
    """
    if cache_path is not None and Path(cache_path).is_file():
        return load_statistics(cache_path, backbone=backbone.name)
    mu, sigma = statistics(extract_features(backbone, data, batch_size=batch_size, progress=progress))
    if cache_path is not None:
        save_statistics(cache_path, mu, sigma, backbone=backbone.name)
    return mu, sigma
