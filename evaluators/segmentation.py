"""Segmentation scores of generated street scenes (SPADE on Cityscapes): labelId -> trainId, confusion matrix, IoU/mIoU,
pixel accuracy in both conventions, the two resolution conventions (the proxy segmenter trained on the data set:
`evaluators.proxy_segmenter`).

A segmenter (`Segmenter`) segments the generated images; its predictions are compared with the ground-truth label maps
of the inputs. Every result names the segmenter (`SEGMENTERS`): the official DRN-D-105 Cityscapes network
("drn_d_105", comparable with papers), a proxy DRN trained on the data set's own photos ("proxy", marked †, comparable
only between runs scored with the same proxy), or random weights ("random", tests only, marked ‡).

    segmenter = build_segmenter("drn_d_105")                      # evaluators.nets.drn + registry file
    result = evaluate_segmentation(segmenter, fakes, label_maps, resolution="full")
    result["miou"], result["accuracy_all_pixels"], result["accuracy_labelled_pixels"], result["segmenter"]

    proxy = train_segmenter(train_photos, train_label_maps, cache_dir="runs/.proxy")   # CPU minutes at 64x128

Metric definitions (specs/spade.md): confusion over the 19 trainId classes on pixels whose ground truth is not 255;
IoU_c = C[c,c] / (row_c + col_c - C[c,c]); mIoU = mean over classes whose IoU is defined (present in the ground truth
or the predictions). Pixel accuracy has two conventions in use, both reported:
- `accuracy_all_pixels`: correct / ALL pixels, ignored ground truth counting as errors (SPADE's convention: 81.9);
- `accuracy_labelled_pixels`: correct / pixels with a valid ground truth (~93.5 for the same model).
Resolution conventions (`RESOLUTIONS`): "full" (a) segments the generated images upsampled to the label maps'
resolution (2048x1024 for Cityscapes) and scores against full-resolution labels; "output" (b) segments the images at
their own resolution (512x256) and downsamples the labels to it (nearest, PIL-style centre sampling as SPADE's loader).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from evaluators.fid import seeded
from evaluators.nets.drn import (CITYSCAPES_MEAN, CITYSCAPES_STD, NUM_CLASSES, WEIGHTS_ENTRY, DRNSeg,
                                 load_drn_d_105_cityscapes, normalize)
from i2i.weights import MissingWeightsError, find_weights

__all__ = [
    "TRAIN_CLASSES", "IGNORE_INDEX", "LABEL_ID_TO_TRAIN_ID", "NUM_LABEL_IDS", "label_to_train_id", "confusion_matrix",
    "scores", "SegmenterInfo", "SEGMENTERS", "Segmenter", "build_segmenter", "RESOLUTIONS", "segment",
    "evaluate_segmentation",
]

IGNORE_INDEX = 255
NUM_LABEL_IDS = 34  # Cityscapes labelIds 0..33 (license plate, -1, is not written to labelIds maps)
# labelId -> trainId (road 7 -> 0, ..., bicycle 33 -> 18; every other id -> 255 = ignored).
LABEL_ID_TO_TRAIN_ID = (255,) * 7 + (0, 1, 255, 255, 2, 3, 4, 255, 255, 255, 5, 255, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                                     255, 255, 16, 17, 18)
TRAIN_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
                 "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
_LUT[:NUM_LABEL_IDS] = LABEL_ID_TO_TRAIN_ID
assert len(LABEL_ID_TO_TRAIN_ID) == NUM_LABEL_IDS and len(TRAIN_CLASSES) == NUM_CLASSES


# ----------------------------------------------------------------------------------------------------------------------
# Labels and metrics


def label_to_train_id(label_ids: np.ndarray | torch.Tensor, *, strict: bool = False) -> np.ndarray | torch.Tensor:
    """Cityscapes labelIds (any integer shape) -> trainIds 0..18, 255 for ignored classes; numpy uint8 / torch uint8.

    Ids outside 0..33 (negative, 34+, 255) map to 255 (ignored); with `strict=True` they raise ValueError instead.
    """
    is_tensor = torch.is_tensor(label_ids)
    values = label_ids.detach().cpu().numpy() if is_tensor else np.asarray(label_ids)
    if values.dtype.kind not in "iu":
        raise ValueError(f"label ids must be integers, got dtype {values.dtype}")
    outside = (values < 0) | (values >= NUM_LABEL_IDS)
    if strict and outside.any():
        raise ValueError(f"label ids outside the Cityscapes labelIds 0..{NUM_LABEL_IDS - 1}: "
                         f"{np.unique(values[outside])[:10].tolist()}")
    train = _LUT[np.where(outside, IGNORE_INDEX, values).astype(np.int64)]
    return torch.from_numpy(train).to(label_ids.device) if is_tensor else train


def _as_long_tensor(x: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    t = x if torch.is_tensor(x) else torch.from_numpy(np.asarray(x))
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{what} must hold integer class ids, got dtype {t.dtype}")
    return t.long()


def confusion_matrix(pred: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor, num_classes: int = NUM_CLASSES,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Counts of (ground truth, prediction) pairs: (num_classes + 1, num_classes) int64, summable over images.

    `pred` and `label`: trainId maps of the same shape (any number of dims), numpy or torch (on any device; counted
    there with one bincount). Rows 0..num_classes-1 are ground-truth classes; the extra last row counts the pixels whose
    ground truth is `ignore_index`, by predicted class (they enter only `accuracy_all_pixels`). Predictions must lie in
    [0, num_classes); labels in [0, num_classes) or equal `ignore_index`.
    """
    pred_t = _as_long_tensor(pred, "pred")
    label_t = _as_long_tensor(label, "label").to(pred_t.device)
    if pred_t.shape != label_t.shape:
        raise ValueError(f"pred and label shapes differ: {tuple(pred_t.shape)} vs {tuple(label_t.shape)}")
    pred_t, label_t = pred_t.reshape(-1), label_t.reshape(-1)
    if pred_t.numel() and (pred_t.min() < 0 or pred_t.max() >= num_classes):
        bad = pred_t[(pred_t < 0) | (pred_t >= num_classes)].unique()[:10].tolist()
        raise ValueError(f"predictions must be class ids 0..{num_classes - 1}, found {bad}")
    ignored = label_t == ignore_index
    invalid = ~ignored & ((label_t < 0) | (label_t >= num_classes))
    if invalid.any():
        raise ValueError(f"label ids must be 0..{num_classes - 1} or {ignore_index} (ignored), found "
                         f"{label_t[invalid].unique()[:10].tolist()}; convert Cityscapes labelIds with label_to_train_id")
    rows = torch.where(ignored, torch.full_like(label_t, num_classes), label_t)
    counts = torch.bincount(rows * num_classes + pred_t, minlength=(num_classes + 1) * num_classes)
    return counts.reshape(num_classes + 1, num_classes).cpu().numpy().astype(np.int64)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise numerator / denominator, NaN where the denominator is 0 (no warning)."""
    out = np.full(np.shape(numerator), np.nan, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=np.asarray(denominator) > 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else float("nan")


def scores(confusion: np.ndarray, ignored_pixels: int | None = None,
           class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Segmentation scores from a confusion matrix (as returned by `confusion_matrix`, summed over images).

    `confusion`: (C + 1, C) with the ignored-pixel row last, or a square (C, C) matrix of valid pixels together with
    `ignored_pixels` (needed for the all-pixels accuracy). Returns plain floats (fractions in [0, 1]):
    - `iou`: {class name: IoU}, NaN for a class absent from both ground truth and predictions;
    - `miou`: mean of the defined IoUs (NaN when none is defined, e.g. every pixel ignored);
    - `accuracy_all_pixels`: correct / all pixels including ignored ones (SPADE's convention); 0 when every pixel is
      ignored, NaN for an empty matrix;
    - `accuracy_labelled_pixels`: correct / non-ignored pixels (NaN when there are none);
    - `accuracy`: = accuracy_all_pixels (the convention of the papers' tables), `accuracy_convention` says so;
    - `mean_class_accuracy`: mean over classes present in the ground truth of per-class recall;
    - `classes_present`, `pixels`, `labelled_pixels`, `ignored_pixels`.
    """
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] not in (confusion.shape[1], confusion.shape[1] + 1):
        raise ValueError(f"expected a (C + 1, C) or (C, C) confusion matrix, got shape {confusion.shape}")
    num_classes = confusion.shape[1]
    if confusion.shape[0] == num_classes + 1:
        if ignored_pixels is not None:
            raise ValueError("the (C + 1, C) confusion matrix already counts the ignored pixels: "
                             "do not pass ignored_pixels")
        ignored = int(confusion[num_classes].sum())
        valid = confusion[:num_classes].astype(np.int64)
    else:
        if ignored_pixels is None:
            raise ValueError("a square confusion matrix does not count the ignored pixels: "
                             "pass ignored_pixels (0 if none)")
        ignored, valid = int(ignored_pixels), confusion.astype(np.int64)
    if (valid < 0).any() or ignored < 0:
        raise ValueError("confusion counts must be >= 0")
    names = list(class_names) if class_names is not None else (
        list(TRAIN_CLASSES) if num_classes == NUM_CLASSES else [str(c) for c in range(num_classes)])
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    diag = np.diag(valid).astype(np.float64)
    rows, cols = valid.sum(1).astype(np.float64), valid.sum(0).astype(np.float64)
    iou = _divide(diag, rows + cols - diag)
    labelled = int(valid.sum())
    correct = float(diag.sum())
    total = labelled + ignored
    return {
        "miou": _nanmean(iou),
        "iou": dict(zip(names, iou.tolist())),
        "accuracy_all_pixels": correct / total if total else float("nan"),
        "accuracy_labelled_pixels": correct / labelled if labelled else float("nan"),
        "accuracy": correct / total if total else float("nan"),
        "accuracy_convention": "all pixels: ignored ground-truth pixels count as errors (SPADE's convention)",
        "mean_class_accuracy": _nanmean(_divide(diag, rows)),
        "classes_present": int(np.count_nonzero(~np.isnan(iou))),
        "pixels": total,
        "labelled_pixels": labelled,
        "ignored_pixels": ignored,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Segmenters


@dataclass(frozen=True)
class SegmenterInfo:
    """What a result says about the network behind its numbers (`name` goes into the result's "segmenter" field)."""

    name: str
    description: str
    calibrated: bool
    mark: str


SEGMENTERS: dict[str, SegmenterInfo] = {
    "drn_d_105": SegmenterInfo("drn_d_105", "DRN-D-105 trained on Cityscapes (fyu/drn drn-d-105_ms_cityscapes.pth)",
                               calibrated=True, mark=""),
    "proxy": SegmenterInfo("proxy", "proxy segmenter: a small DRN trained on this data set's own photos; comparable only "
                                    "between runs scored with the same proxy, not with published numbers",
                           calibrated=False, mark="†"),
    "random": SegmenterInfo("random", "DRN with random weights (tests/demo only): meaningless numbers",
                            calibrated=False, mark="‡"),
}


class Segmenter(nn.Module):
    """A frozen DRNSeg with its input convention and provenance.

    `predict(images (N, 3, H, W) in [-1, 1], out_size=None) -> (N, h, w) int64 trainIds`: images are mapped to [0, 1],
    resized to `input_size` (H, W) when the segmenter has one (a proxy works at its training resolution), normalised
    with `mean`/`std`, segmented; the log-probabilities are resized bilinearly to `out_size` (default: the input size)
    before the argmax. `name` is a key of SEGMENTERS; `val_miou` is a proxy's mIoU on its held-out photos.
    """

    def __init__(self, net: DRNSeg, name: str, *, input_size: tuple[int, int] | None = None,
                 mean: Sequence[float] = CITYSCAPES_MEAN, std: Sequence[float] = CITYSCAPES_STD,
                 source: str | Path | None = None, val_miou: float | None = None,
                 config: dict[str, Any] | None = None) -> None:
        super().__init__()
        if name not in SEGMENTERS:
            raise ValueError(f"unknown segmenter name {name!r}; expected one of {sorted(SEGMENTERS)}")
        self.net = net.eval().requires_grad_(False)
        self.training = False
        self.name = name
        self.input_size = tuple(input_size) if input_size is not None else None
        self.mean, self.std = tuple(mean), tuple(std)
        self.source = str(source) if source is not None else None
        self.val_miou = val_miou
        self.config = config or {}

    @property
    def info(self) -> SegmenterInfo:
        return SEGMENTERS[self.name]

    @property
    def calibrated(self) -> bool:
        return self.info.calibrated

    def train(self, mode: bool = True) -> "Segmenter":
        """Always eval: batch statistics must never leak into a metric."""
        return super().train(False)

    def metadata(self) -> dict[str, Any]:
        """The result fields naming this segmenter (for every result computed with it)."""
        return {"segmenter": self.name, "segmenter_calibrated": self.calibrated, "segmenter_mark": self.info.mark,
                "segmenter_description": self.info.description, "segmenter_arch": self.net.arch,
                "segmenter_width": self.net.width,
                "segmenter_input_size": list(self.input_size) if self.input_size else None,
                "segmenter_source": self.source, "segmenter_val_miou": self.val_miou}

    def log_probs(self, images: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, classes, *out_size) log-probabilities (out_size defaults to (H, W))."""
        _check_images(images)
        device = next(self.net.parameters()).device
        x = (images.to(device, torch.float32).clamp(-1, 1) + 1) / 2
        out_size = tuple(out_size) if out_size is not None else tuple(x.shape[-2:])
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = _resize_images(x, self.input_size)
        size = tuple(x.shape[-2:])
        log_probs, _ = self.net(normalize(x, self.mean, self.std))
        log_probs = log_probs[..., :size[0], :size[1]]  # `up` yields 8 * ceil(size / 8)
        if size != out_size:
            log_probs = F.interpolate(log_probs, size=out_size, mode="bilinear", align_corners=False)
        return log_probs

    @torch.no_grad()
    def predict(self, images: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.log_probs(images, out_size).argmax(1)

    def forward(self, images: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.predict(images, out_size)


def _check_images(images: Any) -> None:
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        what = f"{images.dtype} {tuple(images.shape)}" if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"expected float images (N, 3, H, W) in [-1, 1], got {what}")


def _resize_images(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Bilinear (antialiased when shrinking) or bicubic resize of (N, 3, H, W) images in [0, 1]."""
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=shrinking).clamp(0, 1)


def _resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest resize of (N, H, W) integer maps with centre sampling (src = floor((dst + 0.5) * scale): PIL's NEAREST)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")[:, 0].to(labels.dtype)


def build_segmenter(name: str = "drn_d_105", *, weights_path: str | Path | None = None, allow_random: bool = False,
                    trust: bool = False, device: str | torch.device | None = None) -> Segmenter:
    """A segmenter by name: "drn_d_105" (the official Cityscapes file from the registry; `weights_path` overrides the
    search), "proxy" (a file written by `train_segmenter`, passed as `weights_path`), or "random" (seeded random
    DRN-D-105, tests only). `allow_random=True` falls back to "random" when the official file is missing."""
    if name == "drn_d_105":
        try:
            file = find_weights(WEIGHTS_ENTRY, weights_path)
            segmenter = Segmenter(load_drn_d_105_cityscapes(file, trust=trust), "drn_d_105", source=file)
        except MissingWeightsError:
            if not allow_random or weights_path is not None:
                raise
            return build_segmenter("random", device=device)
    elif name == "proxy":
        if weights_path is None:
            raise ValueError("the proxy segmenter is trained on the data set: call train_segmenter(...) (or pass the file "
                             "it wrote as weights_path)")
        from evaluators.proxy_segmenter import load_segmenter  # it builds on this module

        segmenter = load_segmenter(weights_path)
    elif name == "random":
        with seeded(0):
            segmenter = Segmenter(DRNSeg("drn_d_105", NUM_CLASSES), "random")
    else:
        raise ValueError(f"unknown segmenter {name!r}; expected one of {sorted(SEGMENTERS)}")
    return segmenter.to(device) if device is not None else segmenter


# ----------------------------------------------------------------------------------------------------------------------
# Segmenting and scoring generated images

RESOLUTIONS = {
    "full": "(a) generated images upsampled (bilinear) to the label maps' resolution (2048x1024 for Cityscapes) before "
            "segmentation; scored against full-resolution labels",
    "output": "(b) images segmented at their own resolution (512x256); labels downsampled to it with nearest "
              "(centre sampling, as PIL NEAREST)",
}


def _check_resolution(resolution: str) -> None:
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unknown resolution convention {resolution!r}; expected one of {sorted(RESOLUTIONS)}")


def _predict_at(segmenter: Segmenter, images: torch.Tensor, size: tuple[int, int], image_upsample: str) -> torch.Tensor:
    """trainId predictions (N, *size) for images in [-1, 1]: images go to the network at `size` (unless the segmenter
    has its own input size, which it applies), predictions come out at `size`."""
    if segmenter.input_size is None and tuple(images.shape[-2:]) != tuple(size):
        images = _resize_images((images.float().clamp(-1, 1) + 1) / 2, size, image_upsample) * 2 - 1
    return segmenter.predict(images, out_size=size)


def segment(segmenter: Segmenter, images: torch.Tensor | Iterable[torch.Tensor], resolution: str = "full", *,
            label_size: tuple[int, int] = (1024, 2048), batch_size: int = 2, image_upsample: str = "bilinear",
            progress: bool = False) -> torch.Tensor:
    """trainId predictions (N, h, w) uint8 on the CPU for images (N, 3, H, W) in [-1, 1] (a tensor, or an iterable of
    batch tensors). `resolution` "full": predictions at `label_size` (H, W) from images upsampled to it (convention a);
    "output": predictions at the images' own size (convention b). `image_upsample`: "bilinear" or "bicubic"."""
    _check_resolution(resolution)
    out = []
    for batch in tqdm(_image_batches(images, batch_size), desc="segment", disable=not progress, leave=False):
        size = tuple(label_size) if resolution == "full" else tuple(batch.shape[-2:])
        out.append(_predict_at(segmenter, batch, size, image_upsample).to("cpu", torch.uint8))
    if not out:
        raise ValueError("no images to segment")
    return torch.cat(out)


def _image_batches(images: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    if torch.is_tensor(images):
        _check_images(images)
        yield from images.split(batch_size)
    else:
        for batch in images:
            yield from _image_batches(batch, batch_size)


def _label_batches(labels: Any, batch_size: int) -> Iterator[torch.Tensor]:
    if torch.is_tensor(labels) or isinstance(labels, np.ndarray):
        tensor = torch.as_tensor(labels)
        if tensor.ndim == 2:
            tensor = tensor[None]
        if tensor.ndim != 3:
            raise ValueError(f"expected label maps (N, H, W), got shape {tuple(tensor.shape)}")
        yield from tensor.split(batch_size)
    else:
        for batch in labels:
            yield from _label_batches(batch, batch_size)


def evaluate_segmentation(segmenter: Segmenter, images: torch.Tensor | Iterable[torch.Tensor],
                          label_maps: np.ndarray | torch.Tensor | Iterable, resolution: str = "full", *,
                          label_kind: str = "labelIds", batch_size: int = 2, image_upsample: str = "bilinear",
                          progress: bool = False) -> dict[str, Any]:
    """Segments `images` (N, 3, H, W) in [-1, 1] and scores the predictions against `label_maps` (N, H_l, W_l).

    Both may be one array/tensor or an iterable of aligned batches (to stream a validation set). `label_kind`:
    "labelIds" (Cityscapes ids 0..33, converted with `label_to_train_id`) or "trainIds" (0..18 and 255).
    `resolution`: "full" (convention a: images upsampled to each label map's resolution) or "output" (convention b:
    labels nearest-downsampled to the images' resolution), see RESOLUTIONS. Returns `scores(...)` plus the
    convention (`resolution`, `resolution_convention`), `images`, the summed `confusion` ((C + 1) x C nested list)
    and the segmenter's `metadata()`.
    """
    _check_resolution(resolution)
    if label_kind not in ("labelIds", "trainIds"):
        raise ValueError(f"label_kind must be 'labelIds' or 'trainIds', got {label_kind!r}")
    sized = [torch.is_tensor(x) or isinstance(x, np.ndarray) for x in (images, label_maps)]
    if all(sized) and len(images) != len(label_maps):
        raise ValueError(f"got {len(images)} images but {len(label_maps)} label maps")
    confusion = np.zeros((NUM_CLASSES + 1, NUM_CLASSES), dtype=np.int64)
    count = 0
    image_iter = _image_batches(images, batch_size)
    label_iter = _label_batches(label_maps, batch_size)
    for batch in tqdm(image_iter, desc="segmentation", disable=not progress, leave=False):
        labels = next(label_iter, None)
        if labels is None:
            raise ValueError(f"fewer label maps than images ({count} label maps)")
        if len(labels) != len(batch):
            raise ValueError(f"a batch of {len(batch)} images but {len(labels)} label maps (after {count} images): "
                             "pass batches of equal lengths")
        labels = label_to_train_id(labels) if label_kind == "labelIds" else labels
        labels = labels.long()
        size = tuple(labels.shape[-2:]) if resolution == "full" else tuple(batch.shape[-2:])
        labels = _resize_labels(labels, size)
        pred = _predict_at(segmenter, batch, size, image_upsample)
        confusion += confusion_matrix(pred, labels.to(pred.device))
        count += len(batch)
    if next(label_iter, None) is not None:
        raise ValueError(f"more label maps than images ({count} images)")
    if count == 0:
        raise ValueError("no images to evaluate")
    result = scores(confusion)
    result.update({"resolution": resolution, "resolution_convention": RESOLUTIONS[resolution], "images": count,
                   "confusion": confusion.tolist(), **segmenter.metadata()})
    return result
