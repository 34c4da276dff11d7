"""Cityscapes as SPADE reads it: scanning `leftImg8bit/` + `gtFine/`, label and instance maps, the 36-channel
semantics (35 labelId one-hots + instance edges), `--data-frac` by image with its manifest, a stateless, resumable
stream of training batches and the evaluation loader.

Layout (the official download, cities as sub-folders; `test` works too when it has labels):

    ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png      8-bit labelIds 0..34
    ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png   16/32-bit ids: things labelId*1000+k

Transforms (SPADE's `--dataset_mode cityscapes`): resize without crop to (width, height), 512 x 256 officially,
photo BICUBIC and maps NEAREST; a random horizontal flip in training, the same for photo, labels and instances;
photo ToTensor + Normalize(0.5, 0.5) -> [-1, 1]. Cityscapes has no don't-care channel (contain_dontcare_label is
False), so a label id outside 0..34 — 255 included — is an error naming the file, never a silent scatter crash.

Reproducibility: every random choice (images, flips) comes from `numpy.random.default_rng([seed, step])`, so the
batch of training step s is a pure function of (index, seed, s), whatever the number of workers and wherever the
run was resumed (the same contract as `i2i.data.afhq.AFHQTrainStream`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from i2i.data.afhq import _CountFrom, _check_int, seeded_choice, to_normalized_tensor
from i2i.data.images import IMG_EXTENSIONS, DatasetError, load_rgb
from i2i.data.subset import fraction_count
from i2i.data.cityscapes_labels import (CITYSCAPES_LABELS, CITYSCAPES_PALETTE, NUM_LABEL_IDS, colorize_labels,
                                        labels_from_colors)
from i2i.engine.distributed import shard_slice
from i2i.fileio import atomic_write_text

__all__ = [  # the label table and palette helpers come from i2i.data.cityscapes_labels
    "CITYSCAPES_LABELS", "CITYSCAPES_PALETTE", "MANIFEST_NAME", "NUM_LABEL_IDS", "SEMANTIC_CHANNELS",
    "CityscapesEvalDataset", "CityscapesIndex", "CityscapesSample", "CityscapesStepBatches", "CityscapesTrainStream",
    "colorize_labels", "eval_loader", "instance_edges", "labels_from_colors", "load_instance_ids", "load_label_ids",
    "load_sample", "make_semantics", "read_manifest", "resize_nearest", "scan_cityscapes", "select_fraction",
    "train_index_for_run", "write_manifest",
]

SEMANTIC_CHANNELS = NUM_LABEL_IDS + 1  # one-hot labelIds 0..34, then the instance edge map
PHOTO_SUFFIX, LABEL_SUFFIX, INSTANCE_SUFFIX = "_leftImg8bit", "_gtFine_labelIds.png", "_gtFine_instanceIds.png"
MANIFEST_NAME = "data_manifest.json"
MANIFEST_FORMAT, MANIFEST_VERSION = "i2i-cityscapes-manifest", 1
LAYOUT_HINT = (
    "expected the Cityscapes layout ROOT/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png with "
    "ROOT/gtFine/<split>/<city>/<name>_gtFine_labelIds.png and <name>_gtFine_instanceIds.png beside each other"
)


# ------------------------------------------------------------------------------------------------------------ scanning
@dataclass(frozen=True)
class CityscapesSample:
    """One annotated frame: its photo, labelIds and instanceIds files (absolute paths)."""

    image: Path
    label: Path
    instance: Path

    @property
    def name(self) -> str:
        """The frame's name `<city>_<seq>_<frame>` (the photo's stem without `_leftImg8bit`)."""
        return self.image.stem[: -len(PHOTO_SUFFIX)]


@dataclass(frozen=True)
class CityscapesIndex:
    """The annotated frames of one split, sorted by city then name.

    root: the dataset root (holding `leftImg8bit/` and `gtFine/`), absolute. split: e.g. "train" or "val".
    """

    root: Path
    split: str
    samples: tuple[CityscapesSample, ...]

    def __len__(self) -> int:
        return len(self.samples)

    def without(self, bad: set[Path]) -> "CityscapesIndex":
        """The index minus every frame one of whose three files is in `bad` (--skip-bad-images); DatasetError when
        no frame is left."""
        kept = tuple(s for s in self.samples if not {s.image, s.label, s.instance} & bad)
        if not kept:
            raise DatasetError(f"'{self.root}': no good {self.split} frame left")
        return CityscapesIndex(self.root, self.split, kept)


def _sample_for(root: Path, split: str, city: str, photo: Path) -> CityscapesSample:
    """The sample of a photo `leftImg8bit/<split>/<city>/<name>_leftImg8bit.<ext>` (label paths derived, unchecked)."""
    name = photo.stem[: -len(PHOTO_SUFFIX)]
    labels = root / "gtFine" / split / city
    return CityscapesSample(photo, labels / f"{name}{LABEL_SUFFIX}", labels / f"{name}{INSTANCE_SUFFIX}")


def _is_photo(path: Path) -> bool:
    return (path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMG_EXTENSIONS
            and path.stem.endswith(PHOTO_SUFFIX))


def scan_cityscapes(root: str | Path, split: str) -> CityscapesIndex:
    """Index `root/leftImg8bit/<split>/<city>/*_leftImg8bit.*` and pair every photo with its labelIds and
    instanceIds files under `root/gtFine/<split>/<city>/`.

    Raises DatasetError naming the path when the root, `leftImg8bit/<split>` or `gtFine/<split>` is missing, there
    are no city folders or a city holds no photos, a photo lacks its labelIds or instanceIds file, or a labelIds or
    instanceIds file has no photo.
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DatasetError(f"Cityscapes root '{root}' does not exist or is not a folder; {LAYOUT_HINT}")
    photos_dir, labels_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    for folder in (photos_dir, labels_dir):
        if not folder.is_dir():
            raise DatasetError(f"Cityscapes root '{root}' has no '{folder.relative_to(root)}' folder; {LAYOUT_HINT}")
    cities = sorted(d.name for d in photos_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not cities:
        raise DatasetError(f"'{photos_dir}' holds no city folders; {LAYOUT_HINT}")
    samples = []
    for city in cities:
        photos = sorted(p for p in (photos_dir / city).iterdir() if _is_photo(p))
        if not photos:
            raise DatasetError(f"city folder '{photos_dir / city}' holds no *_leftImg8bit photos; {LAYOUT_HINT}")
        city_samples = [_sample_for(root, split, city, photo) for photo in photos]
        for sample in city_samples:
            for path in (sample.label, sample.instance):
                if not path.is_file():
                    raise DatasetError(f"photo '{sample.image}' has no label file: '{path}' is missing; {LAYOUT_HINT}")
        samples += city_samples
    paired = {path for sample in samples for path in (sample.label, sample.instance)}
    for suffix in (LABEL_SUFFIX, INSTANCE_SUFFIX):  # a map without its photo means a broken download or copy
        for path in sorted(labels_dir.glob(f"*/*{suffix}")):
            if path not in paired and not path.name.startswith("."):
                photo = photos_dir / path.parent.name / f"{path.name[: -len(suffix)]}{PHOTO_SUFFIX}.png"
                raise DatasetError(f"label file '{path}' has no photo: '{photo}' is missing; {LAYOUT_HINT}")
    return CityscapesIndex(root, split, tuple(samples))


# ------------------------------------------------------------------------------------------------------------ loading
_MAP_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N")


def _load_map(path: Path, what: str) -> np.ndarray:
    """A single-channel integer map as stored (uint8, uint16 or int32), fully read; DatasetError names the file."""
    if not path.is_file():
        raise DatasetError(f"{what} file '{path}' does not exist; {LAYOUT_HINT}")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            pixels = np.array(image)
    except Exception as error:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
        raise DatasetError(f"cannot read {what} file '{path}': {type(error).__name__}: {error}") from error
    if mode not in _MAP_MODES:
        hint = " (a colour-coded map? convert it with labels_from_colors)" if mode in ("RGB", "RGBA") else ""
        raise DatasetError(f"{what} file '{path}' has image mode {mode}; expected a single-channel integer map{hint}")
    return pixels


def load_label_ids(path: str | Path) -> np.ndarray:
    """Read a `*_gtFine_labelIds.png`: (H, W) uint8 labelIds, every one in 0..34.

    Raises DatasetError naming the file when it is missing, unreadable, not single-channel, or holds ids outside
    0..34 (listing them; 255 is not allowed either: Cityscapes has no don't-care channel).
    """
    path = Path(path)
    label = _load_map(path, "labelIds")
    if label.size and (label.min() < 0 or label.max() >= NUM_LABEL_IDS):
        bad = np.unique(label[(label < 0) | (label >= NUM_LABEL_IDS)])
        raise DatasetError(
            f"labelIds file '{path}' holds ids {bad[:10].tolist()} outside the Cityscapes labelIds "
            f"0..{NUM_LABEL_IDS - 1} (label_nc 35, no don't-care label); expected *_gtFine_labelIds.png, not trainIds "
            "or colour maps"
        )
    return label.astype(np.uint8)


def load_instance_ids(path: str | Path) -> np.ndarray:
    """Read a `*_gtFine_instanceIds.png`: (H, W) int32 ids (things labelId * 1000 + k, stuff labelId)."""
    return _load_map(Path(path), "instanceIds").astype(np.int32)


def resize_nearest(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) map of any dtype to (height, width), sampling source pixel
    floor((i + 0.5) * H / height) like PIL's NEAREST (what SPADE applies to label and instance maps)."""
    rows = np.minimum(((np.arange(height) + 0.5) * (array.shape[0] / height)).astype(np.int64), array.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (array.shape[1] / width)).astype(np.int64), array.shape[1] - 1)
    return array[rows[:, None], cols[None, :]]


def instance_edges(instance: torch.Tensor) -> torch.Tensor:
    """SPADE's instance edge map: (..., H, W) integer ids -> (..., 1, H, W) float32, 1 where a pixel's id differs
    from any of its 4-neighbours, else 0."""
    edge = torch.zeros(instance.shape, dtype=torch.bool, device=instance.device)
    horizontal = instance[..., :, 1:] != instance[..., :, :-1]
    vertical = instance[..., 1:, :] != instance[..., :-1, :]
    edge[..., :, 1:] |= horizontal
    edge[..., :, :-1] |= horizontal
    edge[..., 1:, :] |= vertical
    edge[..., :-1, :] |= vertical
    return edge.unsqueeze(-3).float()


def make_semantics(label: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """SPADE's generator input: labelIds (..., H, W) int64 in 0..34 and edges (..., 1, H, W) -> (..., 36, H, W)
    float32: channels 0..34 the one-hot labelIds (summing to 1 per pixel), channel 35 the edge map. Works on any
    device, so a task may also build it on the GPU from `label` and `instance_edges`."""
    one_hot = F.one_hot(label.long(), NUM_LABEL_IDS).movedim(-1, -3).float()
    return torch.cat([one_hot, edges.float()], dim=-3)


def load_sample(sample: CityscapesSample, width: int, height: int, flip: bool) -> dict[str, torch.Tensor]:
    """One frame, SPADE-transformed: {"label": (H, W) int64 labelIds, "instance_edges": (1, H, W) float32 in {0, 1},
    "semantics": (36, H, W) float32, "image": (3, H, W) float32 in [-1, 1]} at H, W = height, width, flipped left-
    right when `flip` (photo, labels and instances together). Raises DatasetError naming the file for an unreadable
    file, bad label ids, or photo and maps of different sizes."""
    label = load_label_ids(sample.label)
    instance = load_instance_ids(sample.instance)
    photo = load_rgb(sample.image)
    if label.shape != instance.shape or label.shape != (photo.height, photo.width):
        raise DatasetError(
            f"frame '{sample.name}': photo {photo.width}x{photo.height} ('{sample.image}'), labelIds "
            f"{label.shape[1]}x{label.shape[0]} and instanceIds {instance.shape[1]}x{instance.shape[0]} "
            "differ in size; expected the three files of one Cityscapes frame"
        )
    image = to_normalized_tensor(photo.resize((width, height), Image.Resampling.BICUBIC))
    label_t = torch.from_numpy(resize_nearest(label, width, height).astype(np.int64))
    instance_t = torch.from_numpy(resize_nearest(instance, width, height))
    if flip:
        image, label_t, instance_t = image.flip(-1), label_t.flip(-1), instance_t.flip(-1)
    edges = instance_edges(instance_t)
    return {"label": label_t, "instance_edges": edges, "semantics": make_semantics(label_t, edges), "image": image}


# ---------------------------------------------------------------------------------------------- --data-frac, manifest
def select_fraction(index: CityscapesIndex, frac: float, seed: int) -> CityscapesIndex:
    """Keep fraction_count(frac, n) = max(1, round(frac * n)) frames, chosen by a permutation seeded with (seed,
    split) only; for a fixed seed a smaller fraction picks a subset of a larger one. Frames stay in index order.
    frac must be in (0, 1]; frac == 1 returns `index`."""
    if isinstance(frac, bool) or not isinstance(frac, Real) or not 0.0 < frac <= 1.0:
        raise ValueError(f"data fraction must be a number in (0, 1], got {frac!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"data fraction seed must be an integer >= 0, got {seed!r}")
    if frac == 1:
        return index
    kept = seeded_choice(index.samples, fraction_count(frac, len(index)), seed, f"cityscapes/{index.split}")
    return CityscapesIndex(index.root, index.split, tuple(kept))


def write_manifest(path: str | Path, index: CityscapesIndex, *, frac: float, seed: int,
                   source_root: str | Path) -> Path:
    """Write the JSON manifest of `index` atomically; returns its path. Keys: format "i2i-cityscapes-manifest",
    version 1, root (source_root as given), split, frac, seed, count and images (photo paths relative to the root,
    POSIX separators; the label files follow from the layout)."""
    path = Path(path)
    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "root": str(source_root), "split": index.split,
        "frac": frac, "seed": seed, "count": len(index),
        "images": [sample.image.relative_to(index.root).as_posix() for sample in index.samples],
    }
    atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")
    return path


def read_manifest(path: str | Path, root: str | Path | None = None) -> CityscapesIndex:
    """Rebuild the CityscapesIndex a manifest records; `root` overrides the manifest's root (the dataset moved).

    Raises DatasetError naming the manifest when it is missing or malformed, and listing the first missing files and
    how many are missing when the recorded frames are not all under the root.
    """
    path = Path(path)
    manifest = _load_manifest(path)
    root = Path(manifest["root"] if root is None else root).expanduser().absolute()
    split = manifest["split"]
    samples = []
    for relative in manifest["images"]:
        photo = root / relative
        parts = Path(relative).parts
        if len(parts) != 4 or parts[:2] != ("leftImg8bit", split) or not photo.stem.endswith(PHOTO_SUFFIX):
            raise DatasetError(f"data manifest '{path}': '{relative}' is not leftImg8bit/{split}/<city>/"
                               f"<name>_leftImg8bit.png")
        samples.append(_sample_for(root, split, parts[2], photo))
    missing = [p for sample in samples for p in (sample.image, sample.label, sample.instance) if not p.is_file()]
    if missing:
        shown = ", ".join(f"'{p}'" for p in missing[:5])
        raise DatasetError(
            f"{len(missing)} of {3 * len(samples)} files of the frames in manifest '{path}' are missing under root "
            f"'{root}' (first: {shown}); pass the dataset's current location as root if it moved"
        )
    return CityscapesIndex(root, split, tuple(samples))


def _load_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"data manifest '{path}' does not exist")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"data manifest '{path}' is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DatasetError(f"'{path}' is not an i2i Cityscapes manifest (expected \"format\": \"{MANIFEST_FORMAT}\")")
    if manifest.get("version") != MANIFEST_VERSION:
        raise DatasetError(f"data manifest '{path}' has version {manifest.get('version')!r}; this i2i reads version "
                           f"{MANIFEST_VERSION}")
    absent = [key for key in ("root", "split", "frac", "seed", "count", "images") if key not in manifest]
    if absent:
        raise DatasetError(f"data manifest '{path}' lacks the key(s) {absent}")
    images = manifest["images"]
    if not isinstance(images, list) or not all(isinstance(item, str) for item in images) \
            or manifest["count"] != len(images):
        raise DatasetError(f"data manifest '{path}': 'images' must be a list of 'count' ({manifest['count']!r}) paths")
    return manifest


def train_index_for_run(root: str | Path, run_dir: str | Path, *, frac: float, seed: int, resume: bool,
                        split: str = "train") -> CityscapesIndex:
    """The training frames of a run: on resume, those of the run's manifest (`run_dir/data_manifest.json`) when it
    exists; otherwise select_fraction(scan_cityscapes(root, split), frac, seed), recorded in a new manifest."""
    manifest = Path(run_dir) / MANIFEST_NAME
    if resume and manifest.exists():
        return read_manifest(manifest, root)
    index = select_fraction(scan_cityscapes(root, split), frac, seed)
    write_manifest(manifest, index, frac=frac, seed=seed, source_root=root)
    return index


# ----------------------------------------------------------------------------------------------------- training stream
def _check_size(width: int, height: int) -> None:
    _check_int("width", width, minimum=1)
    _check_int("height", height, minimum=1)


class CityscapesStepBatches(Dataset):
    """Map-style dataset whose item `s` is the whole training batch of step `s` (a pure function of index, seed, s).

    Draws from `numpy.random.default_rng([seed, s])`, in this order: B frames uniformly (with replacement) and B
    flips (probability 0.5) for the main batch, then the same for the second batch; the second batch's draws come
    after the main batch's, so the main batch does not depend on `second_batch`. With `shard` (rank, world size),
    `batch_size` is the global batch and the rank's contiguous part of it is loaded.
    """

    def __init__(self, index: CityscapesIndex, width: int, height: int, batch_size: int, seed: int,
                 flip: bool = True, second_batch: bool = True, shard: tuple[int, int] = (0, 1)):
        if not len(index):
            raise DatasetError(f"training index under '{index.root}' holds no frames")
        self.index, self.width, self.height = index, width, height
        self.batch_size, self.seed, self.flip, self.second_batch = batch_size, seed, flip, second_batch
        self.part = shard_slice(batch_size, shard)

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        draws = [(rng.integers(len(self.index), size=self.batch_size)[self.part],
                  (rng.random(self.batch_size) < 0.5)[self.part]) for _ in range(2)]
        batch = self._load(*draws[0], suffix="")
        if self.second_batch:
            batch.update(self._load(*draws[1], suffix="2"))
        return batch

    def _load(self, picks: np.ndarray, flips: np.ndarray, suffix: str) -> dict[str, torch.Tensor]:
        items = [load_sample(self.index.samples[i], self.width, self.height, bool(f and self.flip))
                 for i, f in zip(picks, flips)]
        return {f"{key}{suffix}": torch.stack([item[key] for item in items]) for key in items[0]}


class CityscapesTrainStream:
    """Endless, stateless stream of SPADE training batches; iterating yields, for steps start_step, start_step + 1,
    ..., dicts of CPU tensors (B = batch_size, H, W = height, width):

    label (B, H, W) int64 labelIds in 0..34; instance_edges (B, 1, H, W) float32 in {0, 1};
    semantics (B, 36, H, W) float32 (one-hot labelIds 0..34, then the edges); image (B, 3, H, W) float32 in [-1, 1];
    and, with second_batch (default), label2, instance_edges2, semantics2, image2: an independently drawn batch of
    the same shapes, the second input ReMix interpolates with.

    Frames are drawn uniformly with replacement, each flipped left-right with probability 0.5 when `flip`. The batch
    of step s depends only on (index, seed, s) (see CityscapesStepBatches), so resuming at step k is constructing
    with start_step=k. Workers (num_workers > 0, persistent) build whole batches in parallel. Each `iter()` restarts
    at start_step; use one iterator at a time. Under DDP give each rank its own seed.
    """

    def __init__(self, index: CityscapesIndex, width: int, height: int, batch_size: int, seed: int,
                 start_step: int = 0, num_workers: int = 0, flip: bool = True, second_batch: bool = True,
                 shard: tuple[int, int] = (0, 1)):
        _check_size(width, height)
        _check_int("batch_size", batch_size, minimum=1)
        _check_int("seed", seed, minimum=0)
        _check_int("start_step", start_step, minimum=0)
        _check_int("num_workers", num_workers, minimum=0)
        self.batches = CityscapesStepBatches(index, width, height, batch_size, seed, flip, second_batch, shard)
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


# ---------------------------------------------------------------------------------------------------------- evaluation
class CityscapesEvalDataset(Dataset):
    """Every frame of an index, SPADE-transformed without flip; item i -> load_sample(...) plus "name" (the frame
    name `<city>_<seq>_<frame>`, for saving outputs under the frame's name)."""

    def __init__(self, index: CityscapesIndex, width: int, height: int):
        _check_size(width, height)
        self.index, self.width, self.height = index, width, height

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.index.samples[i]
        return {**load_sample(sample, self.width, self.height, flip=False), "name": sample.name}


def eval_loader(index: CityscapesIndex, width: int, height: int, batch_size: int,
                num_workers: int = 0) -> DataLoader:
    """Batches of every frame in index order, no flip, last batch possibly smaller: dicts with label (B, H, W),
    instance_edges (B, 1, H, W), semantics (B, 36, H, W), image (B, 3, H, W) as in the train stream, and name
    (list of B frame names)."""
    _check_int("batch_size", batch_size, minimum=1)
    _check_int("num_workers", num_workers, minimum=0)
    # its own generator: iterating a DataLoader draws a base seed, which must not move the global RNG (a run that
    # loads sample images after resuming would diverge from an uninterrupted one)
    return DataLoader(CityscapesEvalDataset(index, width, height), batch_size=batch_size, shuffle=False,
                      generator=torch.Generator().manual_seed(0),
                      num_workers=num_workers, pin_memory=torch.cuda.is_available())
