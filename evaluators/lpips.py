"""LPIPS (AlexNet trunk, v0.1 linear heads) and StarGAN v2's LPIPS diversity.

The `lpips` package ships the v0.1 linear heads; its AlexNet trunk normally downloads torchvision's weights. Here the
trunk is built empty (`pnet_rand=True`) and filled from the registry file `alexnet-owt-7be5be79.pth`, so nothing is
downloaded. Per layer: ScalingLayer on [-1, 1] inputs -> AlexNet ReLU outputs -> unit-normalised channels -> squared
difference -> 1x1 linear head -> spatial mean; the distance is the sum over the 5 layers.

    model = build_lpips()                                   # MissingWeightsError names the file and where to get it
    d = lpips_distance(a, b, model)                         # (N,) for images (N, 3, H, W) in [-1, 1]
    div = lpips_diversity(outputs, model)                   # outputs (K, N, 3, H, W): mean over K(K-1)/2 pairs
"""
from __future__ import annotations

import functools
import itertools
import warnings
from pathlib import Path

import lpips as lpips_package
import torch
from torch import nn

from evaluators.fid import seeded
from i2i.weights import MissingWeightsError, load_weights


class LPIPS(nn.Module):
    """LPIPS-alex v0.1 as a frozen, eval-mode module; `calibrated` is False when the AlexNet trunk has random weights."""

    def __init__(self, trunk_state: dict[str, torch.Tensor] | None) -> None:
        super().__init__()
        with warnings.catch_warnings():  # the package passes torchvision's deprecated `pretrained=` argument
            warnings.simplefilter("ignore", UserWarning)
            self.model = lpips_package.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
        if trunk_state is not None:
            self._load_trunk(trunk_state)
        self.calibrated = trunk_state is not None
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        """Always eval: the heads' dropout must never make a metric random."""
        return super().train(False)

    def _load_trunk(self, state: dict[str, torch.Tensor]) -> None:
        """torchvision AlexNet `features.{i}.*` -> the package's `slice{k}.{i}.*` (the slices keep torchvision's indices)."""
        trunk = self.model.net
        own = trunk.state_dict()
        mapped = {name: state.get("features." + name.split(".", 1)[1]) for name in own}
        missing = [f"features.{n.split('.', 1)[1]}" for n, v in mapped.items() if v is None]
        if missing:
            raise ValueError(f"AlexNet weights lack {missing}: not a torchvision AlexNet state dict")
        trunk.load_state_dict(mapped, strict=True)

    def layer_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) in [-1, 1] -> 5 unit-normalised AlexNet feature maps."""
        _check_images(images, "images")
        outputs = self.model.net(self.model.scaling_layer(images))
        return [lpips_package.normalize_tensor(output) for output in outputs]

    def distance_between(self, features_a: list[torch.Tensor], features_b: list[torch.Tensor]) -> torch.Tensor:
        """LPIPS from precomputed `layer_features` -> (N,)."""
        per_layer = [head((a - b) ** 2).mean(dim=(2, 3)) for head, a, b in zip(self.model.lins, features_a, features_b)]
        return torch.stack(per_layer).sum(dim=0).flatten()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS distance per pair: a, b (N, 3, H, W) in [-1, 1] -> (N,)."""
        if a.shape != b.shape:
            raise ValueError(f"LPIPS needs images of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        return self.distance_between(self.layer_features(a), self.layer_features(b))


def _check_images(images: torch.Tensor, label: str) -> None:
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        shape = (tuple(images.shape), images.dtype) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"{label}: expected float images (N, 3, H, W) in [-1, 1], got {shape}")


def build_lpips(weights_path: str | Path | None = None, *, allow_random: bool = False, trust: bool = False,
                device: str | torch.device | None = None) -> LPIPS:
    """LPIPS-alex with the registry's AlexNet weights (`weights_path` overrides the search).

    `allow_random=True` (tests/demo only) falls back to seeded random AlexNet weights when the file is missing; the
    model is then `calibrated=False` and its numbers must be labelled uncalibrated.
    """
    try:
        state = load_weights("alexnet", weights_path, trust=trust)
    except MissingWeightsError:
        if not allow_random or weights_path is not None:
            raise
        state = None
    with seeded(0):
        model = LPIPS(state)
    return model.to(device) if device is not None else model


@functools.lru_cache(maxsize=4)
def _default_model(device: str) -> LPIPS:
    return build_lpips(device=device)


def _model_for(images: torch.Tensor, model: LPIPS | None) -> LPIPS:
    return model if model is not None else _default_model(str(images.device))


@torch.no_grad()
def lpips_distance(a: torch.Tensor, b: torch.Tensor, model: LPIPS | None = None) -> torch.Tensor:
    """LPIPS per image pair: a, b (N, 3, H, W) in [-1, 1] -> (N,). Without `model`, the calibrated default is built
    once per device (and raises MissingWeightsError if the AlexNet file is missing)."""
    return _model_for(a, model)(a, b)


@torch.no_grad()
def lpips_diversity(outputs: torch.Tensor, model: LPIPS | None = None, batch_size: int = 8) -> float:
    """StarGAN v2's diversity score of one source batch: outputs (K, N, 3, H, W) in [-1, 1], K outputs per source image.

    Mean LPIPS over the K(K-1)/2 pairs of outputs (45 for K=10) and the N source images. Each output's AlexNet features
    are computed once; `batch_size` source images are processed at a time to bound memory.
    """
    if not torch.is_tensor(outputs) or outputs.ndim != 5 or outputs.shape[0] < 2:
        shape = tuple(outputs.shape) if torch.is_tensor(outputs) else type(outputs).__name__
        raise ValueError(f"outputs: expected (K >= 2, N, 3, H, W) images in [-1, 1], got {shape}")
    model = _model_for(outputs, model)
    num_outputs, num_sources = outputs.shape[:2]
    total = 0.0
    for start in range(0, num_sources, batch_size):
        features = [model.layer_features(output[start:start + batch_size]) for output in outputs]
        for i, j in itertools.combinations(range(num_outputs), 2):
            total += model.distance_between(features[i], features[j]).sum().item()
    pairs = num_outputs * (num_outputs - 1) // 2
    return total / (pairs * num_sources)
