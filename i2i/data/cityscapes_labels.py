"""The official Cityscapes label set (cityscapesScripts' `labels.py` facts): labelIds, names, trainIds, colours, and
the colour-coded map <-> labelId conversions. numpy only, so the data reader, the procedural generator and the
serving app share one table.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from i2i.data.images import DatasetError

class CityscapesLabel(NamedTuple):
    """One row of the official Cityscapes label table (cityscapesscripts `labels.py`)."""

    id: int  # the labelId stored in *_gtFine_labelIds.png
    name: str
    train_id: int  # the 19-class evaluation id; 255 = ignored in evaluation
    color: tuple[int, int, int]  # the official RGB colour of *_gtFine_color.png
    has_instances: bool  # thing class: instanceIds carry id * 1000 + k


CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel(0, "unlabeled", 255, (0, 0, 0), False),
    CityscapesLabel(1, "ego vehicle", 255, (0, 0, 0), False),
    CityscapesLabel(2, "rectification border", 255, (0, 0, 0), False),
    CityscapesLabel(3, "out of roi", 255, (0, 0, 0), False),
    CityscapesLabel(4, "static", 255, (0, 0, 0), False),
    CityscapesLabel(5, "dynamic", 255, (111, 74, 0), False),
    CityscapesLabel(6, "ground", 255, (81, 0, 81), False),
    CityscapesLabel(7, "road", 0, (128, 64, 128), False),
    CityscapesLabel(8, "sidewalk", 1, (244, 35, 232), False),
    CityscapesLabel(9, "parking", 255, (250, 170, 160), False),
    CityscapesLabel(10, "rail track", 255, (230, 150, 140), False),
    CityscapesLabel(11, "building", 2, (70, 70, 70), False),
    CityscapesLabel(12, "wall", 3, (102, 102, 156), False),
    CityscapesLabel(13, "fence", 4, (190, 153, 153), False),
    CityscapesLabel(14, "guard rail", 255, (180, 165, 180), False),
    CityscapesLabel(15, "bridge", 255, (150, 100, 100), False),
    CityscapesLabel(16, "tunnel", 255, (150, 120, 90), False),
    CityscapesLabel(17, "pole", 5, (153, 153, 153), False),
    CityscapesLabel(18, "polegroup", 255, (153, 153, 153), False),
    CityscapesLabel(19, "traffic light", 6, (250, 170, 30), False),
    CityscapesLabel(20, "traffic sign", 7, (220, 220, 0), False),
    CityscapesLabel(21, "vegetation", 8, (107, 142, 35), False),
    CityscapesLabel(22, "terrain", 9, (152, 251, 152), False),
    CityscapesLabel(23, "sky", 10, (70, 130, 180), False),
    CityscapesLabel(24, "person", 11, (220, 20, 60), True),
    CityscapesLabel(25, "rider", 12, (255, 0, 0), True),
    CityscapesLabel(26, "car", 13, (0, 0, 142), True),
    CityscapesLabel(27, "truck", 14, (0, 0, 70), True),
    CityscapesLabel(28, "bus", 15, (0, 60, 100), True),
    CityscapesLabel(29, "caravan", 255, (0, 0, 90), True),
    CityscapesLabel(30, "trailer", 255, (0, 0, 110), True),
    CityscapesLabel(31, "train", 16, (0, 80, 100), True),
    CityscapesLabel(32, "motorcycle", 17, (0, 0, 230), True),
    CityscapesLabel(33, "bicycle", 18, (119, 11, 32), True),
)
NUM_LABEL_IDS = 35  # SPADE's label_nc for Cityscapes: one-hot channels 0..34
# labelId -> RGB for ids 0..34, (35, 3) uint8. Id 34 is not a Cityscapes class (label_nc 35 only pads the id range);
# it gets the 35th colour of the pix2pixHD/SPADE Cityscapes colour map, the license plate's (0, 0, 142).
CITYSCAPES_PALETTE = np.array([label.color for label in CITYSCAPES_LABELS] + [(0, 0, 142)], dtype=np.uint8)
LABEL_IDS = {label.name: label.id for label in CITYSCAPES_LABELS}

def _canonical_palette() -> tuple[np.ndarray, np.ndarray]:
    """The distinct palette colours (K, 3) and, for each, the labelId a colour-coded map is read back as: the
    smallest id with that colour (black -> 0 unlabeled, grey 153 -> 17 pole, (0, 0, 142) -> 26 car)."""
    colours, first = np.unique(CITYSCAPES_PALETTE, axis=0, return_index=True)
    return colours, first.astype(np.uint8)


_PALETTE_COLOURS, _PALETTE_IDS = _canonical_palette()


def colorize_labels(label_ids: np.ndarray) -> np.ndarray:
    """labelId map (H, W) of integers in 0..34 -> the colour-coded map (H, W, 3) uint8 in the official palette.

    Raises ValueError naming the ids outside 0..34.
    """
    label_ids = np.asarray(label_ids)
    if label_ids.ndim != 2 or not np.issubdtype(label_ids.dtype, np.integer):
        raise ValueError(f"expected an (H, W) integer labelId map, got shape {label_ids.shape} dtype {label_ids.dtype}")
    if label_ids.size and (label_ids.min() < 0 or label_ids.max() >= NUM_LABEL_IDS):
        bad = np.unique(label_ids[(label_ids < 0) | (label_ids >= NUM_LABEL_IDS)])
        raise ValueError(f"labelIds {bad[:10].tolist()} are outside the Cityscapes ids 0..{NUM_LABEL_IDS - 1}")
    return CITYSCAPES_PALETTE[label_ids]


def labels_from_colors(
    rgb: np.ndarray, *, max_distance: float = 40.0, max_far_fraction: float = 0.02, source: str | None = None,
) -> np.ndarray:
    """Colour-coded label map (H, W, 3) uint8 -> labelIds (H, W) uint8, each pixel taking its nearest palette colour.

    Colours shared by several ids read back as the smallest of them: black as 0 (ids 0-4 are all black), grey 153 as
    17 (pole, not polegroup), (0, 0, 142) as 26 (car, not 34), so only maps using one id per colour round-trip
    exactly. Antialiased or JPEG-compressed maps have blended colours along edges: up to `max_far_fraction` of the
    pixels may lie farther than `max_distance` (Euclidean, 0-255 RGB) from every palette colour; more than that
    raises DatasetError naming `source` (a file name, for the message) and the worst colours.
    """
    rgb = np.asarray(rgb)
    where = f"'{source}'" if source else "the colour-coded label map"
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DatasetError(f"{where} has shape {rgb.shape}; expected (H, W, 3) RGB in the Cityscapes palette")
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2].astype(np.int32)
    values, inverse = np.unique(packed.ravel(), return_inverse=True)
    colours = np.stack([(values >> 16) & 255, (values >> 8) & 255, values & 255], axis=1).astype(np.float32)
    distances = np.linalg.norm(colours[:, None, :] - _PALETTE_COLOURS[None, :, :].astype(np.float32), axis=2)
    nearest, gap = distances.argmin(axis=1), distances.min(axis=1)
    far = gap > max_distance
    far_pixels = int(np.bincount(inverse, minlength=len(values))[far].sum())
    if far_pixels > max_far_fraction * packed.size:
        worst = colours[np.argsort(-gap)[:3]].astype(int).tolist()
        raise DatasetError(
            f"{where}: {far_pixels} of {packed.size} pixels are farther than {max_distance:g} from every Cityscapes "
            f"palette colour (e.g. RGB {worst}); expected a label map coloured with the official palette"
        )
    return _PALETTE_IDS[nearest][inverse].reshape(packed.shape)
