"""Shared image IO for every dataset: which files count as images, and decoding any of them to 8-bit RGB.

Every dataset problem (missing folder, empty class, unreadable file) raises `DatasetError`, whose message names the
offending path and what was expected, so a user never has to read a deep traceback to find the broken file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Modes that carry an alpha channel; converted to RGBA first, then composited on black.
_ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")
# Single-channel modes deeper than 8 bits; PIL's own convert("RGB") clips them at 255 instead of rescaling.
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class DatasetError(ValueError):
    """A dataset on disk is missing, malformed or holds an unreadable image; the message names the path."""


def is_image_file(path: str | Path) -> bool:
    """True when `path` has one of IMG_EXTENSIONS (case-insensitive) and is not a hidden file (e.g. macOS `._x.jpg`)."""
    path = Path(path)
    return not path.name.startswith(".") and path.suffix.lower() in IMG_EXTENSIONS


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to an 8-bit RGB PIL image, fully loaded (the file is closed on return).

    Grayscale and palette images are expanded to three channels; images with alpha (RGBA, LA, palette with
    transparency) are composited on black; 16-bit and 32-bit grayscale images are rescaled to 0-255 rather than
    clipped. A missing, truncated or undecodable file raises DatasetError naming the path.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image file '{path}' does not exist (or is not a file)")
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except Exception as error:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
        raise DatasetError(
            f"cannot read image '{path}': {type(error).__name__}: {error}. Expected a valid image file "
            f"({', '.join(IMG_EXTENSIONS)}); the file may be corrupt or truncated."
        ) from error


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: grey and palette expanded, alpha composited on black, 16/32-bit grey rescaled."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(_high_depth_to_uint8(np.asarray(image), image.mode)).convert("RGB")
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        return _composite_on_black(image.convert("RGBA"))
    return image.convert("RGB")


def _high_depth_to_uint8(pixels: np.ndarray, mode: str) -> np.ndarray:
    """Map a 16/32-bit or float grayscale array to uint8.

    "I;16*" is rescaled from 0-65535. "I" (32-bit int, which older Pillow versions also use for 16-bit PNGs) and "F"
    are taken as 0-255 when their values fit, otherwise as 0-65535.
    """
    values = pixels.astype(np.float64)
    full_scale = 65535.0 if mode.startswith("I;16") or values.max(initial=0.0) > 255.0 else 255.0
    return np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)


def _composite_on_black(rgba: Image.Image) -> Image.Image:
    pixels = np.asarray(rgba, dtype=np.uint16)
    alpha = pixels[..., 3:4]
    # Integer premultiplication with rounding: rgb * alpha / 255.
    rgb = (pixels[..., :3] * alpha + 127) // 255
    return Image.fromarray(rgb.astype(np.uint8))
