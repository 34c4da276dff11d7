"""Proxy FID features (`--backbone proxy`): a small CNN trained to classify the domains of the data set's own training
images, whose pooled features stand in for Inception's when the Inception weights are unavailable.

Numbers computed with it are comparable only between runs scored with the same proxy file, never with papers: every
trained proxy backbone has `name == "proxy"` and `calibrated == False`, and the metric tables mark its cells. The trained
network is cached on disk, keyed by a hash of the training file list (or image tensor), labels and settings, so all
runs evaluated on one data set share one proxy.

    proxy = train_proxy(train_paths, train_labels, cache_dir="runs/.proxy")   # ~1 min on 2 CPU cores at 64 px
    fake_features = extract_features(proxy, fakes)
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import nn
from tqdm import tqdm

from evaluators.fid import FeatureBackbone, seeded
from i2i.fileio import atomic_torch_save
from i2i.weights import safe_torch_load

FORMAT = "i2i-proxy"
VERSION = 1


@dataclass(frozen=True)
class ProxyConfig:
    """Training settings; part of the cache key (a change retrains)."""

    num_classes: int
    image_size: int = 64
    width: int = 32
    steps: int = 400
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0


class ProxyNet(nn.Module):
    """4 x [conv3x3 -> BN -> ReLU -> maxpool 2] with widths w, 2w, 4w, 8w; global average pool; linear classifier."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        widths = [3, width, 2 * width, 4 * width, 8 * width]
        self.trunk = nn.Sequential(*(
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                          nn.MaxPool2d(2))
            for c_in, c_out in zip(widths[:-1], widths[1:])
        ))
        self.classifier = nn.Linear(widths[-1], num_classes)
        self.feature_dim = widths[-1]

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) in [-1, 1] -> (N, 8 * width)."""
        return self.trunk(images).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooled(images))


class ProxyBackbone(FeatureBackbone):
    """Pooled ProxyNet features of images resized to the training size (bilinear, antialiased).

    `name` is "proxy" for a trained network and "proxy-random" for the untrained one of unit tests.
    """

    def __init__(self, net: ProxyNet, config: ProxyConfig, trained: bool, source: Path | None = None) -> None:
        super().__init__(calibrated=False)
        self.name = "proxy" if trained else "proxy-random"
        self.net = net.eval().requires_grad_(False)
        self.config = config
        self.dim = net.feature_dim
        self.trained = trained
        self.source = source

    def _features(self, images01: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if images01.shape[-2:] != (size, size):
            images01 = F.interpolate(images01, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return self.net.pooled(images01 * 2 - 1)

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Domain logits (N, num_classes) of images (N, 3, H, W) in [-1, 1] (target-domain accuracy, † metric)."""
        images01 = (images.clamp(-1, 1) + 1) / 2
        size = self.config.image_size
        if images01.shape[-2:] != (size, size):
            images01 = F.interpolate(images01, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return self.net(images01 * 2 - 1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", trained={self.trained}, source={str(self.source) if self.source else None!r}"


# ----------------------------------------------------------------------------------------------------------------------
# Data


def _load_image(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image = image.convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"proxy training image not found: '{path}'") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read proxy training image '{path}': {error}") from error


def _images_uint8(images: torch.Tensor | Sequence[str | Path], size: int, progress: bool) -> torch.Tensor:
    """Training images as (N, 3, size, size) uint8 (4x less memory than float for a few thousand images)."""
    if torch.is_tensor(images):
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"expected float training images (N, 3, H, W) in [-1, 1], got {images.dtype} "
                             f"{tuple(images.shape)}")
        images = F.interpolate(images.float().clamp(-1, 1), size=(size, size), mode="bilinear", align_corners=False,
                               antialias=True)
        return ((images + 1) * 127.5).round().to(torch.uint8).cpu()
    arrays = [_load_image(Path(p), size) for p in tqdm(images, desc="proxy images", disable=not progress, leave=False)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def dataset_key(images: torch.Tensor | Sequence[str | Path], labels: Sequence[int] | torch.Tensor) -> str:
    """sha256 of the training set's identity: the file list with labels (order-independent), or the tensor's bytes."""
    labels = [int(y) for y in labels]
    digest = hashlib.sha256()
    if torch.is_tensor(images):
        digest.update(str(tuple(images.shape)).encode())
        digest.update(images.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        digest.update(json.dumps(labels).encode())
    else:
        for path, label in sorted(zip((str(p) for p in images), labels)):
            digest.update(f"{path}\t{label}\n".encode())
    return digest.hexdigest()


def _check_labels(images, labels) -> torch.Tensor:
    labels = torch.as_tensor([int(y) for y in labels], dtype=torch.long)
    if len(labels) != len(images):
        raise ValueError(f"got {len(images)} training images but {len(labels)} labels")
    if len(labels) < 2 or labels.min() < 0 or len(labels.unique()) < 2:
        raise ValueError(f"the proxy needs >= 2 images of >= 2 domains with labels >= 0, got labels {labels.unique().tolist()}")
    return labels


# ----------------------------------------------------------------------------------------------------------------------
# Training, caching, loading


def _to_unit_range(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    return pixels.to(device).float() / 127.5 - 1


def _train(net: ProxyNet, images: torch.Tensor, labels: torch.Tensor, config: ProxyConfig, progress: bool) -> float:
    """Adam on cross-entropy with random horizontal flips, on the net's device; returns the final training accuracy.

    `images` (N, 3, S, S) uint8 and `labels` stay on the CPU; the sampling RNG is a seeded CPU generator."""
    device = next(net.parameters()).device
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    net.train()
    for _ in tqdm(range(config.steps), desc="proxy training", disable=not progress, leave=False):
        index = torch.randint(len(images), (config.batch_size,), generator=generator)
        flip = torch.rand(config.batch_size, generator=generator) < 0.5
        batch = images[index]
        batch[flip] = batch[flip].flip(-1)
        loss = F.cross_entropy(net(_to_unit_range(batch, device)), labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        predictions = torch.cat([net(_to_unit_range(chunk, device)).argmax(1).cpu() for chunk in images.split(256)])
    return float((predictions == labels).float().mean())


def _save(path: Path, net: ProxyNet, config: ProxyConfig, key: str, accuracy: float) -> None:
    state = {k: v.cpu() for k, v in net.state_dict().items()}
    atomic_torch_save({"format": FORMAT, "version": VERSION, "config": asdict(config), "dataset_key": key,
                       "train_accuracy": accuracy, "state_dict": state}, path)


def load_proxy(path: str | Path, device: str | torch.device = "cpu") -> ProxyBackbone:
    """A trained proxy from its cache file (written by `train_proxy`)."""
    path = Path(path)
    payload = safe_torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"'{path}' is not a proxy backbone file (expected format '{FORMAT}')")
    config = ProxyConfig(**payload["config"])
    net = ProxyNet(config.num_classes, config.width)
    net.load_state_dict(payload["state_dict"], strict=True)
    return ProxyBackbone(net, config, trained=True, source=path).to(device)


def train_proxy(images: torch.Tensor | Sequence[str | Path], labels: Sequence[int] | torch.Tensor, *,
                cache_dir: str | Path, image_size: int = 64, width: int = 32, steps: int = 400, batch_size: int = 32,
                lr: float = 1e-3, seed: int = 0, key: str | None = None, progress: bool = True,
                device: str | torch.device = "cpu") -> ProxyBackbone:
    """Trains (or loads from `cache_dir`) a domain classifier on the training images and returns its backbone.

    `images`: image file paths, or a float tensor (N, 3, H, W) in [-1, 1]; `labels`: domain index per image.
    `key` identifies the data set (e.g. the sha256 of the run's data manifest); by default `dataset_key(images, labels)`.
    The cache file is `<cache_dir>/proxy-<hash of key and settings>.pt`. Training is seeded (deterministic on one
    machine); the default (64 px, 400 steps of 32) takes about a minute on 2 CPU cores. `device` is where it trains;
    the returned backbone stays there.
    """
    labels = _check_labels(images, labels)
    config = ProxyConfig(num_classes=int(labels.max()) + 1, image_size=image_size, width=width, steps=steps,
                         batch_size=batch_size, lr=lr, seed=seed)
    key = key or dataset_key(images, labels)
    digest = hashlib.sha256(json.dumps({"dataset": key, "config": asdict(config), "version": VERSION},
                                       sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"proxy-{digest}.pt"
    if path.is_file():
        return load_proxy(path, device)
    pixels = _images_uint8(images, image_size, progress)
    with seeded(seed):
        net = ProxyNet(config.num_classes, width).to(device)
    start = time.perf_counter()
    accuracy = _train(net, pixels, labels, config, progress)
    if progress:
        print(f"proxy backbone: {steps} steps in {time.perf_counter() - start:.0f} s, train accuracy {accuracy:.3f}, "
              f"saved to {path}")
    _save(path, net, config, key, accuracy)
    return ProxyBackbone(net, config, trained=True, source=path)


def random_proxy(num_classes: int, image_size: int = 64, width: int = 32, seed: int = 0) -> ProxyBackbone:
    """An untrained proxy with seeded random weights, for unit tests only (`trained=False`, never calibrated)."""
    with seeded(seed):
        net = ProxyNet(num_classes, width)
    return ProxyBackbone(net, ProxyConfig(num_classes=num_classes, image_size=image_size, width=width, seed=seed),
                         trained=False)
