"""Proxy metrics (†) that tell translators apart on the procedural data: does a translation look like the target
domain, and does it keep the source's layout?

- Target-domain accuracy: the share of translations that the data set's own domain classifier (the proxy FID network
  of `evaluators.proxy`, trained on the real training images) assigns to the target domain. The identity map scores
  0 on the protocol's pairs (source != target); the classifier's own training images score near 1.
- Content preservation: the procedural AFHQ-like set records every image's pose (`poses.json`: centre, scale,
  angle). A small CNN f is trained to regress the standardised pose from the real training images of all domains.
  For translations G(x) of sources x:
      error  = mean over samples and pose parameters of |f(G(x)) - f(x)|
      chance = the same between the sources and a derangement of them (unrelated images of the source domain)
      content preservation = 1 - error / chance
  1: the translation has its source's pose (the identity map scores exactly 1); 0: no closer than an unrelated image.
  Comparing f(G(x)) with f(x) rather than with the true pose removes f's own error from the score.

Both networks are trained on the data set and cached like the proxy backbone; their numbers compare only between runs
scored with the same files, never with papers.
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
from torch import Tensor
from tqdm import tqdm

from evaluators.fid import seeded
from evaluators.proxy import ProxyNet, _images_uint8, _to_unit_range
from i2i.data.synthetic.animals import POSE_PARAMETERS, POSES_FILE
from i2i.fileio import atomic_torch_save
from i2i.weights import safe_torch_load

FORMAT = "i2i-pose-regressor"
VERSION = 1


def read_poses(root: str | Path, files: Sequence[Path]) -> np.ndarray | None:
    """(N, P) float64 poses of `files` from `root/poses.json`; None when the data set records none (real data)."""
    path = Path(root) / POSES_FILE
    if not path.is_file():
        return None
    poses = json.loads(path.read_text(encoding="utf-8"))["poses"]
    rows = []
    for file in files:
        key = Path(file).relative_to(Path(root).absolute()).as_posix() if Path(file).is_absolute() else str(file)
        if key not in poses:
            raise ValueError(f"'{path}' has no pose for '{key}'")
        rows.append(poses[key])
    return np.asarray(rows, dtype=np.float64)


@dataclass(frozen=True)
class PoseConfig:
    """Training settings; part of the cache key (a change retrains)."""

    image_size: int
    width: int = 32
    steps: int = 800
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0


class PoseRegressor:
    """f: images (N, 3, H, W) in [-1, 1] -> standardised poses (N, P); `mean`/`std` undo the standardisation."""

    def __init__(self, net: ProxyNet, config: PoseConfig, mean: np.ndarray, std: np.ndarray, val_r2: float,
                 source: Path | None = None):
        self.net = net.eval().requires_grad_(False)
        self.config, self.mean, self.std, self.val_r2, self.source = config, mean, std, val_r2, source

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device) -> "PoseRegressor":
        self.net.to(device)
        return self

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        size = self.config.image_size
        images = images.to(self.device, torch.float32).clamp(-1, 1)
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return self.net(images)


def _fit(net: ProxyNet, pixels: Tensor, targets: Tensor, config: PoseConfig, progress: bool) -> None:
    device = next(net.parameters()).device
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps)
    net.train()
    for _ in tqdm(range(config.steps), desc="pose regressor", disable=not progress, leave=False):
        index = torch.randint(len(pixels), (config.batch_size,), generator=generator)
        loss = F.smooth_l1_loss(net(_to_unit_range(pixels[index], device)), targets[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    net.eval()


def _predict_all(net: ProxyNet, pixels: Tensor) -> Tensor:
    device = next(net.parameters()).device
    with torch.no_grad():
        return torch.cat([net(_to_unit_range(chunk, device)).cpu() for chunk in pixels.split(256)])


def _r2(predicted: Tensor, targets: Tensor) -> float:
    """Mean over parameters of the coefficient of determination (targets standardised)."""
    residual = ((predicted - targets) ** 2).mean(0)
    return float((1 - residual / targets.var(0, unbiased=False).clamp_min(1e-12)).mean())


def train_pose_regressor(files: Sequence[Path], poses: np.ndarray, *, cache_dir: str | Path, image_size: int,
                         width: int = 32, steps: int = 800, seed: int = 0, progress: bool = True,
                         device: str | torch.device = "cpu") -> PoseRegressor:
    """Trains (or loads from `cache_dir`) f on `files` with targets `poses` (N, P), a seeded tenth held out to
    report f's own R² (`val_r2`)."""
    if len(files) != len(poses) or len(files) < 10:
        raise ValueError(f"need >= 10 images with one pose each, got {len(files)} images and {len(poses)} poses")
    config = PoseConfig(image_size=image_size, width=width, steps=steps, seed=seed)
    key = hashlib.sha256()
    for file, pose in sorted(zip(map(str, files), map(tuple, np.round(poses, 6).tolist()))):
        key.update(f"{file}\t{pose}\n".encode())
    digest = hashlib.sha256(json.dumps({"data": key.hexdigest(), "config": asdict(config), "version": VERSION},
                                       sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"pose-{digest}.pt"
    if path.is_file():
        return load_pose_regressor(path, device)
    start = time.perf_counter()
    pixels = _images_uint8(list(files), image_size, progress)
    mean, std = poses.mean(0), poses.std(0) + 1e-8
    targets = torch.as_tensor((poses - mean) / std, dtype=torch.float32)
    held_out = torch.from_numpy(np.random.default_rng(seed).permutation(len(files))[: max(1, len(files) // 10)])
    keep = torch.ones(len(files), dtype=torch.bool)
    keep[held_out] = False
    with seeded(seed):
        net = ProxyNet(len(POSE_PARAMETERS), width).to(device)
    _fit(net, pixels[keep], targets[keep], config, progress)
    val_r2 = _r2(_predict_all(net, pixels[held_out]), targets[held_out])
    if progress:
        print(f"pose regressor: held-out R² {val_r2:.3f}, {time.perf_counter() - start:.0f} s, saved to {path}")
    atomic_torch_save({"format": FORMAT, "version": VERSION, "config": asdict(config), "mean": mean.tolist(),
                       "std": std.tolist(), "val_r2": val_r2,
                       "state_dict": {k: v.cpu() for k, v in net.state_dict().items()}}, path)
    return PoseRegressor(net, config, mean, std, val_r2, path)


def load_pose_regressor(path: str | Path, device: str | torch.device = "cpu") -> PoseRegressor:
    path = Path(path)
    payload = safe_torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"'{path}' is not a pose regressor file (expected format '{FORMAT}')")
    config = PoseConfig(**payload["config"])
    net = ProxyNet(len(POSE_PARAMETERS), config.width)
    net.load_state_dict(payload["state_dict"], strict=True)
    return PoseRegressor(net.to(device), config, np.asarray(payload["mean"]), np.asarray(payload["std"]),
                         float(payload["val_r2"]), path)


def pose_distance(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample mean absolute difference of standardised poses: (N, P) x (N, P) -> (N,)."""
    return (a - b).abs().mean(1)


def chance_distance(predictions: Tensor, seed: int) -> float:
    """Mean pose distance between images and a derangement of them (unrelated pairs)."""
    from i2i.mixing.remix import derangement

    perm = torch.from_numpy(derangement(len(predictions), np.random.default_rng(seed)))
    return float(pose_distance(predictions, predictions[perm]).mean())


def content_preservation(error: float, chance: float) -> float:
    """1 - error / chance (see the module docstring)."""
    return 1.0 - error / chance if chance > 0 else float("nan")
