"""The proxy segmenter: a small DRN trained on a data set's own photos and label maps, for data without the official
DRN-D-105 Cityscapes weights (the procedural street scenes). Its scores are marked † and compare only runs scored with
the same proxy; trained networks are cached by data set and settings.

    segmenter = train_segmenter(photo_files, label_files, cache_dir="runs/.eval-cache")
    evaluate_segmentation(segmenter, fakes, label_maps)          # evaluators.segmentation
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
from tqdm import tqdm

from evaluators.fid import seeded
from evaluators.nets.drn import NUM_CLASSES, DRNSeg, normalize
from evaluators.segmentation import (IGNORE_INDEX, Segmenter, _check_images, _resize_images, _resize_labels,
                                     confusion_matrix, label_to_train_id, scores)
from i2i.fileio import atomic_torch_save
from i2i.weights import safe_torch_load

__all__ = ["SegmenterConfig", "train_segmenter", "load_segmenter", "segmenter_dataset_key"]


FORMAT = "i2i-proxy-segmenter"
VERSION = 1


@dataclass(frozen=True)
class SegmenterConfig:
    """Training settings; part of the cache key (a change retrains). `image_size` is (H, W)."""

    image_size: tuple[int, int] = (64, 128)
    arch: str = "drn_d_22"
    width: float = 0.5
    steps: int = 500
    batch_size: int = 8
    lr: float = 2e-3
    val_fraction: float = 0.1
    augment: bool = True
    seed: int = 0


def _load_photo(path: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize((size[1], size[0]), Image.BICUBIC), dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"segmenter training photo not found: '{path}'") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read segmenter training photo '{path}': {error}") from error


def _load_label_map(path: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"label map '{path}' has mode {image.mode}; expected a single-channel id map")
            return np.asarray(image.resize((size[1], size[0]), Image.NEAREST)).astype(np.int64)
    except FileNotFoundError:
        raise FileNotFoundError(f"segmenter training label map not found: '{path}'") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read segmenter training label map '{path}': {error}") from error


def _training_data(images, label_maps, size: tuple[int, int], label_kind: str,
                   progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) uint8 photos and (N, H, W) uint8 trainId maps at `size`, on the CPU."""
    if torch.is_tensor(images):
        _check_images(images)
        photos = _resize_images((images.detach().float().cpu().clamp(-1, 1) + 1) / 2, size)
        photos = (photos * 255).round().to(torch.uint8)
    else:
        photos = torch.from_numpy(np.stack([_load_photo(Path(p), size) for p in tqdm(
            images, desc="segmenter photos", disable=not progress, leave=False)])).permute(0, 3, 1, 2).contiguous()
    if torch.is_tensor(label_maps) or isinstance(label_maps, np.ndarray):
        maps = torch.as_tensor(label_maps)
        if maps.ndim != 3:
            raise ValueError(f"expected label maps (N, H, W), got shape {tuple(maps.shape)}")
        maps = _resize_labels(maps.long().cpu(), size)
    else:
        maps = torch.from_numpy(np.stack([_load_label_map(Path(p), size) for p in label_maps]))
    if len(maps) != len(photos):
        raise ValueError(f"got {len(photos)} training photos but {len(maps)} label maps")
    if label_kind == "labelIds":
        maps = label_to_train_id(maps)
    else:
        bad = maps[(maps != IGNORE_INDEX) & ((maps < 0) | (maps >= NUM_CLASSES))]
        if bad.numel():
            raise ValueError(f"trainId label maps must hold 0..{NUM_CLASSES - 1} or {IGNORE_INDEX}, found "
                             f"{bad.unique()[:10].tolist()}")
        maps = maps.to(torch.uint8)
    if len(photos) < 2:
        raise ValueError(f"the proxy segmenter needs >= 2 photos (some are held out for validation), got {len(photos)}")
    if not bool((maps != IGNORE_INDEX).any()):
        raise ValueError("every training pixel is ignored (no trainId class): check label_kind and the label maps")
    return photos, maps


def segmenter_dataset_key(images, label_maps) -> str:
    """sha256 of the training set's identity: the (photo, label map) path pairs (order-independent), or tensor bytes."""
    if len(images) != len(label_maps):
        raise ValueError(f"got {len(images)} training photos but {len(label_maps)} label maps")
    digest = hashlib.sha256()
    arrays = [torch.is_tensor(x) or isinstance(x, np.ndarray) for x in (images, label_maps)]
    if not any(arrays):
        for photo, label in sorted(zip((str(p) for p in images), (str(p) for p in label_maps))):
            digest.update(f"{photo}\t{label}\n".encode())
        return digest.hexdigest()
    for side, is_array in zip((images, label_maps), arrays):
        if is_array:
            t = torch.as_tensor(side).detach().cpu()
            t = t.to(torch.float32) if t.is_floating_point() else t.to(torch.int64)
            digest.update(f"{tuple(t.shape)} {t.dtype}".encode())
            digest.update(t.contiguous().numpy().tobytes())
        else:
            digest.update("\n".join(str(p) for p in side).encode())
    return digest.hexdigest()


def _to_input(photos: torch.Tensor, device: torch.device) -> torch.Tensor:
    return normalize(photos.to(device).float() / 255)


def _augment(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flips and translations by up to 1/8 of each side (photos reflect-padded, maps padded with
    255 = ignored): without them a DRN memorises the layouts of a small training set instead of learning appearance."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x, y = torch.where(flip[:, None, None, None], x.flip(-1), x), torch.where(flip[:, None, None], y.flip(-1), y)
    ph, pw = h // 8, w // 8
    if ph == 0 or pw == 0:
        return x, y
    x = F.pad(x.float(), (pw, pw, ph, ph), mode="reflect").to(x.dtype)
    y = F.pad(y, (pw, pw, ph, ph), value=IGNORE_INDEX)
    top = torch.randint(0, 2 * ph + 1, (n,), generator=generator).tolist()
    left = torch.randint(0, 2 * pw + 1, (n,), generator=generator).tolist()
    x = torch.stack([x[i, :, t:t + h, l:l + w] for i, (t, l) in enumerate(zip(top, left))])
    y = torch.stack([y[i, t:t + h, l:l + w] for i, (t, l) in enumerate(zip(top, left))])
    return x, y


def _fit(net: DRNSeg, photos: torch.Tensor, maps: torch.Tensor, config: SegmenterConfig, progress: bool) -> None:
    """Adam (linearly decayed lr) on pixel-wise NLL (ignore 255) with `_augment`; seeded CPU sampling generator."""
    device = next(net.parameters()).device
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(net.trainable_parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / max(config.steps, 1))
    net.train()
    h, w = config.image_size
    for _ in tqdm(range(config.steps), desc="segmenter training", disable=not progress, leave=False):
        index = torch.randint(len(photos), (config.batch_size,), generator=generator)
        x, y = photos[index], maps[index].long()
        if config.augment:
            x, y = _augment(x, y, generator)
        log_probs, _ = net(_to_input(x, device))
        loss = F.nll_loss(log_probs[..., :h, :w], y.to(device), ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    net.eval()


@torch.no_grad()
def _miou_on(net: DRNSeg, photos: torch.Tensor, maps: torch.Tensor, size: tuple[int, int]) -> float:
    device = next(net.parameters()).device
    confusion = np.zeros((NUM_CLASSES + 1, NUM_CLASSES), dtype=np.int64)
    for x, y in zip(photos.split(64), maps.split(64)):
        pred = net(_to_input(x, device))[0][..., :size[0], :size[1]].argmax(1)
        confusion += confusion_matrix(pred, y.to(device))
    return scores(confusion)["miou"]


def _cache_path(cache_dir: str | Path, key: str, config: SegmenterConfig, label_kind: str) -> Path:
    payload = {"dataset": key, "config": asdict(config), "label_kind": label_kind, "version": VERSION}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"segmenter-{digest}.pt"


def load_segmenter(path: str | Path, device: str | torch.device = "cpu") -> Segmenter:
    """A trained proxy segmenter from its cache file (written by `train_segmenter`)."""
    path = Path(path)
    payload = safe_torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"'{path}' is not a proxy segmenter file (expected format '{FORMAT}')")
    config = SegmenterConfig(**{**payload["config"], "image_size": tuple(payload["config"]["image_size"])})
    net = DRNSeg(config.arch, NUM_CLASSES, width=config.width)
    net.load_state_dict(payload["state_dict"], strict=True)
    return Segmenter(net, "proxy", input_size=config.image_size, source=path, val_miou=payload["val_miou"],
                     config={**asdict(config), "dataset_key": payload["dataset_key"],
                             "train_miou": payload["train_miou"], "train_seconds": payload["train_seconds"]}).to(device)


def train_segmenter(images: torch.Tensor | Sequence[str | Path],
                    label_maps: np.ndarray | torch.Tensor | Sequence[str | Path], *, cache_dir: str | Path,
                    image_size: int | tuple[int, int] = (64, 128), arch: str = "drn_d_22", width: float = 0.5,
                    steps: int = 500, batch_size: int = 8, lr: float = 2e-3, val_fraction: float = 0.1,
                    augment: bool = True, seed: int = 0, label_kind: str = "labelIds", key: str | None = None,
                    progress: bool = True, device: str | torch.device = "cpu") -> Segmenter:
    """Trains (or loads from `cache_dir`) a proxy segmenter on a data set's real photos and their label maps.

    `images`: photo paths, or a float tensor (N, 3, H, W) in [-1, 1]; `label_maps`: label-map PNG paths, or an integer
    array/tensor (N, H, W); `label_kind` "labelIds" (Cityscapes ids, mapped to trainIds) or "trainIds". Everything is
    resized to `image_size` (H, W; an int means square): photos bicubic (files) / antialiased bilinear (tensors), maps
    nearest. A seeded `val_fraction` of the photos (>= 1) is held out; the network (`arch` with channels scaled by
    `width`) trains on the rest (Adam, random flips and translations when `augment`), and its mIoU on the held-out
    photos is `val_miou` of the returned segmenter (also printed). The file is
    `<cache_dir>/segmenter-<hash of key and settings>.pt`, `key` by default
    `segmenter_dataset_key(images, label_maps)`; a second call with the same data and settings loads it. The defaults
    (64x128, drn_d_22 at width 0.5, 500 steps of 8) take about 7 minutes on one CPU thread (0.85 s a step).
    Results computed with it are labelled "proxy" (†, uncalibrated).
    """
    if label_kind not in ("labelIds", "trainIds"):
        raise ValueError(f"label_kind must be 'labelIds' or 'trainIds', got {label_kind!r}")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"image_size must be (H, W) with sides >= 8, got {image_size}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    config = SegmenterConfig(image_size=size, arch=arch, width=width, steps=steps, batch_size=batch_size, lr=lr,
                             val_fraction=val_fraction, augment=augment, seed=seed)
    key = key or segmenter_dataset_key(images, label_maps)
    path = _cache_path(cache_dir, key, config, label_kind)
    if path.is_file():
        return load_segmenter(path, device)
    photos, maps = _training_data(images, label_maps, size, label_kind, progress)
    order = torch.randperm(len(photos), generator=torch.Generator().manual_seed(seed))
    n_val = min(len(photos) - 1, max(1, int(round(val_fraction * len(photos)))))
    val, train = order[:n_val], order[n_val:]
    with seeded(seed):
        net = DRNSeg(arch, NUM_CLASSES, width=width).to(device)
    start = time.perf_counter()
    _fit(net, photos[train], maps[train], config, progress)
    seconds = time.perf_counter() - start
    val_miou = _miou_on(net, photos[val], maps[val], size)
    train_miou = _miou_on(net, photos[train], maps[train], size)
    if progress:
        print(f"proxy segmenter ({arch}, width {width}, {size[1]}x{size[0]}): {steps} steps in {seconds:.0f} s, "
              f"mIoU {val_miou:.3f} on {n_val} held-out photos ({train_miou:.3f} on the {len(train)} training photos), "
              f"saved to {path}")
    state = {k: v.cpu() for k, v in net.state_dict().items()}
    atomic_torch_save({"format": FORMAT, "version": VERSION, "config": asdict(config), "dataset_key": key,
                       "label_kind": label_kind, "val_miou": val_miou, "train_miou": train_miou,
                       "val_photos": n_val, "train_seconds": round(seconds, 1), "state_dict": state}, path)
    return Segmenter(net, "proxy", input_size=size, source=path, val_miou=val_miou,
                     config={**asdict(config), "dataset_key": key, "train_miou": train_miou,
                             "train_seconds": round(seconds, 1)})
