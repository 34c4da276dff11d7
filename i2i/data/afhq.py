"""AFHQ-layout datasets: scanning `ROOT/{train,val}/<domain>/*`, the official StarGAN v2 transforms, and a stateless,
resumable stream of training batches.

Reproducibility contract: every random choice (which images, crop boxes, flips) comes from an explicit
`numpy.random.Generator`, never from torch's or Python's global RNG, so the batch of training step `s` is a pure
function of (index, seed, s), whatever the number of workers and wherever the run was resumed.
"""
from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, TypeVar

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import InterpolationMode

from i2i.data.images import IMG_EXTENSIONS, DatasetError, is_image_file, load_rgb
from i2i.engine.distributed import shard_slice

LAYOUT_HINT = "expected ROOT/{train,val}/<domain>/<image files>, one sub-folder per domain (e.g. cat, dog, wild)"

RRC_SCALE = (0.8, 1.0)
RRC_RATIO = (0.9, 1.1)

T = TypeVar("T")


@dataclass(frozen=True)
class ImageIndex:
    """The image files of one dataset split, grouped by domain.

    root: the dataset root (the folder holding `train/` and `val/`), absolute.
    domains: domain names, sorted; label `k` is `domains[k]`.
    files: absolute paths `root/<split>/<domain>/<name>`, sorted by domain then name.
    labels: the domain label of each file, aligned with `files`.
    """

    root: Path
    domains: list[str]
    files: list[Path]
    labels: list[int]

    def __post_init__(self) -> None:
        if len(self.files) != len(self.labels):
            raise ValueError(f"ImageIndex has {len(self.files)} files but {len(self.labels)} labels")
        bad = [label for label in self.labels if not 0 <= label < len(self.domains)]
        if bad:
            raise ValueError(f"ImageIndex labels must be in [0, {len(self.domains)}), got {bad[:5]}")

    def __len__(self) -> int:
        return len(self.files)

    def per_domain(self) -> dict[str, list[Path]]:
        """Domain name -> its files, in index order (every domain present, possibly empty)."""
        grouped: dict[str, list[Path]] = {name: [] for name in self.domains}
        for path, label in zip(self.files, self.labels):
            grouped[self.domains[label]].append(path)
        return grouped

    @classmethod
    def from_groups(cls, root: Path, groups: dict[str, list[Path]]) -> "ImageIndex":
        """Build an index from domain name -> files; domains are sorted, files are kept in the given order."""
        domains = sorted(groups)
        files = [path for name in domains for path in groups[name]]
        labels = [label for label, name in enumerate(domains) for _ in groups[name]]
        return cls(root=root, domains=domains, files=files, labels=labels)

    def without(self, bad: set[Path]) -> "ImageIndex":
        """The index minus the files in `bad` (--skip-bad-images); DatasetError when a domain would be left empty."""
        groups = {name: [path for path in files if path not in bad] for name, files in self.per_domain().items()}
        emptied = [name for name, files in groups.items() if not files]
        if emptied:
            raise DatasetError(f"'{self.root}': no good training image left in domain(s) {emptied}")
        return ImageIndex.from_groups(self.root, groups)


def scan_split(root: str | Path, split: str) -> ImageIndex:
    """Index `root/<split>/<domain>/*`: domains are the sorted non-hidden sub-folders (at least two), files the sorted
    images directly inside each (extensions IMG_EXTENSIONS, any case; hidden files skipped).

    Raises DatasetError naming the path when the root is missing or a file, the split folder is missing, there are
    fewer than two domains, or a domain folder holds no images.
    """
    root = Path(root).expanduser().absolute()
    if not root.exists():
        raise DatasetError(f"AFHQ root '{root}' does not exist; {LAYOUT_HINT}")
    if not root.is_dir():
        raise DatasetError(f"AFHQ root '{root}' is a file, not a folder; {LAYOUT_HINT}")
    split_dir = root / split
    if not split_dir.is_dir():
        raise DatasetError(f"AFHQ root '{root}' has no '{split}' folder; {LAYOUT_HINT}")
    domains = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(domains) < 2:
        raise DatasetError(
            f"'{split_dir}' has {len(domains)} domain folder(s) {domains}; expected at least two; {LAYOUT_HINT}"
        )
    groups = {}
    for name in domains:
        files = sorted(p for p in (split_dir / name).iterdir() if p.is_file() and is_image_file(p))
        if not files:
            raise DatasetError(
                f"domain folder '{split_dir / name}' holds no images (extensions {', '.join(IMG_EXTENSIONS)}, "
                "directly inside the folder)"
            )
        groups[name] = files
    return ImageIndex.from_groups(root, groups)


def seeded_choice(items: Sequence[T], k: int, seed: int, key: str) -> list[T]:
    """`k` items chosen without replacement by a permutation seeded with (seed, key) only, returned in their original
    order. Taking the first k of one permutation makes smaller picks subsets of larger ones for the same seed."""
    key_hash = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    order = np.random.default_rng([seed, key_hash]).permutation(len(items))[:k]
    return [items[i] for i in sorted(order.tolist())]


# ----------------------------------------------------------------------------------------------------------- transforms
def random_resized_crop_box(
    width: int, height: int, rng: np.random.Generator, scale: tuple[float, float] = RRC_SCALE,
    ratio: tuple[float, float] = RRC_RATIO,
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop covering `scale` of the area with aspect ratio in `ratio` (log-
    uniform); ten tries, then a central crop with the closest valid aspect ratio. Same distribution as torchvision's
    RandomResizedCrop, but drawn from `rng`."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return top, left, crop_h, crop_w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_w, crop_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        crop_w, crop_h = int(round(height * ratio[1])), height
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def to_normalized_tensor(image: Image.Image) -> torch.Tensor:
    """ToTensor + Normalize(0.5, 0.5): RGB PIL image (H, W) -> (3, H, W) float32 in [-1, 1]."""
    return TF.normalize(TF.to_tensor(image), [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])


def resize_square(image: Image.Image, img_size: int) -> Image.Image:
    """Resize to (S, S), bilinear with antialiasing (torchvision's Resize on PIL images)."""
    return TF.resize(image, [img_size, img_size], interpolation=InterpolationMode.BILINEAR, antialias=True)


def eval_transform(image: Image.Image, img_size: int) -> torch.Tensor:
    """Resize((S, S)) + Normalize: RGB PIL image -> (3, S, S) float32 in [-1, 1]."""
    return to_normalized_tensor(resize_square(image, img_size))


def augment_params(width: int, height: int, rng: np.random.Generator, rrc_prob: float = 0.5
                   ) -> tuple[tuple[int, int, int, int] | None, bool]:
    """The draws of `train_transform` for an image of this size, in its order: (crop box or None, flip)."""
    crop = random_resized_crop_box(width, height, rng) if rng.random() < rrc_prob else None
    return crop, bool(rng.random() < 0.5)


def apply_augment(image: Image.Image, img_size: int, crop: tuple[int, int, int, int] | None, flip: bool) -> torch.Tensor:
    if crop is not None:
        image = TF.resized_crop(image, *crop, [img_size, img_size], interpolation=InterpolationMode.BILINEAR,
                                antialias=True)
    image = resize_square(image, img_size)
    return to_normalized_tensor(TF.hflip(image) if flip else image)


def train_transform(image: Image.Image, img_size: int, rng: np.random.Generator, rrc_prob: float = 0.5) -> torch.Tensor:
    """Official StarGAN v2 training augmentation with all draws from `rng`: with probability `rrc_prob` a
    RandomResizedCrop(S, scale 0.8-1, ratio 0.9-1.1), then Resize((S, S)), a horizontal flip with probability 0.5,
    ToTensor, Normalize(0.5, 0.5). RGB PIL image -> (3, S, S) float32 in [-1, 1]."""
    return apply_augment(image, img_size, *augment_params(image.width, image.height, rng, rrc_prob))


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as error:  # reported like load_rgb does
        raise DatasetError(f"cannot read image '{path}': {type(error).__name__}: {error}") from error


# ----------------------------------------------------------------------------------------------------- training stream
class StepBatches(Dataset):
    """Map-style dataset whose item `s` is the whole training batch of step `s` (a pure function of index, seed, s).

    All draws come from `numpy.random.default_rng([seed, s])`, in this order: source domains y (uniform) and one image
    uniformly within each; target domains y_trg (uniform) and two distinct images within each (the same image twice
    only when the domain has one image); then the augmentations of x, x_ref, x_ref2, sample by sample.
    With `third_reference`, x_ref3 is a third image of y_trg (distinct from the pair when the domain has three or
    more), drawn with its augmentation from `default_rng([seed, s, 3])`: the other tensors are the same with or
    without it. With `shard` (rank, world size), `batch_size` is the global batch: every draw is made for all of it
    and only the rank's contiguous part is loaded, so the ranks' parts make up exactly the one-process batch.
    """

    def __init__(self, index: ImageIndex, img_size: int, batch_size: int, seed: int, rrc_prob: float = 0.5,
                 third_reference: bool = False, shard: tuple[int, int] = (0, 1)):
        empty = [name for name, files in index.per_domain().items() if not files]
        if empty or not index.domains:
            raise DatasetError(f"training index under '{index.root}' has no images for domain(s) {empty or 'any'}")
        self.files_by_label = list(index.per_domain().values())
        self.img_size, self.batch_size, self.seed, self.rrc_prob = img_size, batch_size, seed, rrc_prob
        self.third_reference = third_reference
        self.part = shard_slice(batch_size, shard)

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        num_domains = len(self.files_by_label)
        y = rng.integers(num_domains, size=self.batch_size)
        sources = [self._pick(rng, label, 1)[0] for label in y]
        y_trg = rng.integers(num_domains, size=self.batch_size)
        pairs = [self._pick(rng, label, 2) for label in y_trg]
        part = self.part
        batch = {
            "x": self._load(sources, rng),
            "y": torch.from_numpy(y[part]).long(),
            "x_ref": self._load([first for first, _ in pairs], rng),
            "x_ref2": self._load([second for _, second in pairs], rng),
            "y_trg": torch.from_numpy(y_trg[part]).long(),
        }
        if self.third_reference:
            rng3 = np.random.default_rng([self.seed, step, 3])
            batch["x_ref3"] = self._load([self._pick_other(rng3, label, pair) for label, pair in zip(y_trg, pairs)],
                                         rng3)
        return batch

    def _pick_other(self, rng: np.random.Generator, label: int, taken: list[Path]) -> Path:
        files = self.files_by_label[label]
        others = [f for f in files if f not in taken] or files
        return others[rng.integers(len(others))]

    def _pick(self, rng: np.random.Generator, label: int, count: int) -> list[Path]:
        files = self.files_by_label[label]
        if len(files) < count:
            return [files[0]] * count
        return [files[i] for i in rng.choice(len(files), size=count, replace=False)]

    def _load(self, paths: list[Path], rng: np.random.Generator) -> torch.Tensor:
        """The shard's images of `paths`, augmented with draws made for every path in order."""
        params = [augment_params(*_image_size(p), rng, self.rrc_prob) for p in paths]
        return torch.stack([apply_augment(load_rgb(p), self.img_size, *a)
                            for p, a in zip(paths[self.part], params[self.part])])


class _CountFrom(Sampler[int]):
    """Steps start, start+1, ... forever; every new iteration restarts at `start`."""

    def __init__(self, start: int):
        super().__init__()
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


class AFHQTrainStream:
    """Endless, stateless stream of StarGAN v2 training batches; iterating yields, for steps start_step,
    start_step + 1, ..., dicts of CPU tensors:

    x (B, 3, S, S) in [-1, 1] and y (B,) int64: domain-balanced source images (a domain uniformly, then an image
        uniformly within it: the official WeightedRandomSampler with weights 1/count(domain));
    x_ref, x_ref2 (B, 3, S, S) in [-1, 1] and y_trg (B,) int64: two distinct images of domain y_trg per sample;
    x_ref3 (with `third_reference`): a third one, for feature mixing.

    The batch of step s depends only on (index, seed, s) (see StepBatches), so resuming at step k is constructing with
    start_step=k. Workers (num_workers > 0, persistent) build whole batches in parallel. Each `iter()` restarts at
    start_step; use one iterator at a time. Under DDP each rank passes its `shard` and gets its part of the global
    batch (which does not depend on the number of ranks).
    """

    def __init__(
        self, index: ImageIndex, img_size: int, batch_size: int, seed: int, start_step: int = 0,
        num_workers: int = 0, rrc_prob: float = 0.5, third_reference: bool = False, shard: tuple[int, int] = (0, 1),
    ):
        _check_int("img_size", img_size, minimum=1)
        _check_int("batch_size", batch_size, minimum=1)
        _check_int("seed", seed, minimum=0)
        _check_int("start_step", start_step, minimum=0)
        _check_int("num_workers", num_workers, minimum=0)
        if not 0.0 <= rrc_prob <= 1.0:
            raise ValueError(f"rrc_prob must be in [0, 1], got {rrc_prob!r}")
        self.batches = StepBatches(index, img_size, batch_size, seed, rrc_prob, third_reference, shard)
        self.start_step = start_step
        self.loader = DataLoader(
            self.batches, batch_size=None, sampler=_CountFrom(start_step), num_workers=num_workers,
            persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available(),
            # its own generator: creating an iterator draws a base seed, which must not move the global RNG that
            # training checkpoints and restores (resume would stop being exact)
            generator=torch.Generator().manual_seed(seed),
        )

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """The batch of `step`, built in this process (what iteration yields at that step)."""
        return self.batches[step]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return iter(self.loader)


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


# ---------------------------------------------------------------------------------------------------------- evaluation
class AFHQEvalDataset(Dataset):
    """Every image of an index with the evaluation transform; item i -> (x (3, S, S) in [-1, 1], label, path str)."""

    def __init__(self, index: ImageIndex, img_size: int):
        _check_int("img_size", img_size, minimum=1)
        self.index, self.img_size = index, img_size

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        path = self.index.files[i]
        return eval_transform(load_rgb(path), self.img_size), self.index.labels[i], str(path)


def load_eval_images(
    index: ImageIndex, img_size: int, per_domain: int | None = None, seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic evaluation images for sample grids: x (M, 3, S, S) in [-1, 1], y (M,) int64, grouped by domain.

    per_domain=None takes every image; otherwise min(per_domain, count) images of each domain, picked by a
    permutation seeded with (seed, domain name), kept in file order.
    """
    _check_int("img_size", img_size, minimum=1)
    if per_domain is not None:
        _check_int("per_domain", per_domain, minimum=1)
    images, labels = [], []
    for label, (name, files) in enumerate(index.per_domain().items()):
        chosen = files if per_domain is None else seeded_choice(files, min(per_domain, len(files)), seed, name)
        images += [eval_transform(load_rgb(p), img_size) for p in chosen]
        labels += [label] * len(chosen)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)
