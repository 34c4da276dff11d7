"""Pre- and post-processing of user images for serving: decode any upload, fit it to the model, back to pixels.

numpy + PIL only (no torch): the Gradio app's process and `python -m i2i.translate` share this module, so an image
gives the same model input in both. Model-side arrays are (N, C, S, S) float32 in [-1, 1]; display-side arrays are
(H, W, 3) uint8.

Uploads are met as users make them: any PIL mode (RGBA, LA, P, I;16, CMYK JPEG) is converted to 8-bit RGB (alpha
composited on black, as the datasets are read), EXIF orientation is applied, any size and aspect is resized (shorter
side to S, bilinear with antialiasing, as training resizes) and centre-cropped to S x S. What cannot be used — an
empty file, a non-image, a truncated file, a decompression bomb, an oversized file, a tiny image — raises
`ImageInputError` with a one-line message meant for the user.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from i2i.data.images import to_rgb
from i2i.fileio import atomic_write

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000  # ~ 8000 x 5000; PIL's own bomb guard warns at 89M and refuses at 179M
MIN_SIDE = 8


class ImageInputError(ValueError):
    """An image a user supplied cannot be used; the message says why, in one line."""


def _describe(name: str | None) -> str:
    return f"'{name}'" if name else "the image"


def read_bytes(path: str | os.PathLike, *, max_bytes: int = MAX_UPLOAD_BYTES) -> bytes:
    """The bytes of an image file, refusing a missing, empty or oversized file before reading it."""
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"image file '{path}' does not exist")
    size = path.stat().st_size
    if size > max_bytes:
        raise ImageInputError(f"'{path.name}' is {size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB")
    return path.read_bytes()


def decode_image(data: bytes | str | os.PathLike, *, name: str | None = None, max_bytes: int = MAX_UPLOAD_BYTES,
                 max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> Image.Image:
    """Decode an upload (bytes or a file path) to an upright, fully loaded 8-bit RGB PIL image.

    Raises ImageInputError for an empty, oversized, unreadable or truncated file, more than `max_pixels` pixels
    (checked from the header, before decoding), or a side shorter than `min_side`.
    """
    if isinstance(data, (str, os.PathLike)):
        name = name or Path(data).name
        data = read_bytes(data, max_bytes=max_bytes)
    what = _describe(name)
    if not isinstance(data, (bytes, bytearray)):
        raise ImageInputError(f"{what}: expected the bytes or the path of an image file, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageInputError(f"{what} is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageInputError(f"{what} is {len(data) / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageInputError(f"{what} is {width}x{height} pixels; the limit is {max_pixels:,} pixels")
            image.load()
    except ImageInputError:
        raise
    except UnidentifiedImageError:
        raise ImageInputError(f"{what} is not an image file (expected PNG, JPEG, BMP, WebP, TIFF or GIF)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageInputError(f"{what} declares too many pixels (a decompression bomb?); refused") from None
    except Exception as error:  # truncated or corrupt data: OSError, SyntaxError, ValueError, ... depending on format
        raise ImageInputError(f"{what} could not be decoded ({type(error).__name__}: {error}); the file may be "
                              "truncated or corrupt") from None
    image = ImageOps.exif_transpose(image)
    if min(image.size) < min_side:
        raise ImageInputError(f"{what} is {image.width}x{image.height} pixels; at least {min_side}x{min_side} is "
                              "needed")
    return to_rgb(image)


LABEL_MODES = ("L", "I", "I;16", "I;16B", "I;16L", "I;16N")
MAX_FAR_FRACTION = 0.02  # share of pixels a colour-coded map may have far from every palette colour (anti-aliasing)
FAR_COLOUR = 40.0


def _read_image_raw(data: bytes | str | os.PathLike, name: str | None, max_bytes: int, max_pixels: int) -> Image.Image:
    """Like decode_image but keeping the mode (label maps must not be converted to RGB)."""
    if isinstance(data, (str, os.PathLike)):
        name = name or Path(data).name
        data = read_bytes(data, max_bytes=max_bytes)
    decode_image(data, name=name, max_bytes=max_bytes, max_pixels=max_pixels)  # every check, one message style
    image = Image.open(io.BytesIO(data))
    image.load()
    return ImageOps.exif_transpose(image)


def decode_label_map(data: bytes | str | os.PathLike, palette: Sequence[Sequence[int]], height: int, width: int, *,
                     name: str | None = None, max_bytes: int = MAX_UPLOAD_BYTES,
                     max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A label-map upload -> (1, height, width) int64 label ids in [0, len(palette)).

    A single-channel image (8/16-bit grey, e.g. Cityscapes' *_labelIds.png) holds the ids themselves; a colour image
    is colour-coded with `palette` (each pixel takes its nearest colour; where colours repeat, the smallest id). The
    map is centre-cropped to width:height and resized with nearest neighbours. ImageInputError for ids outside the
    palette or a colour image that is not colour-coded.
    """
    image = _read_image_raw(data, name, max_bytes, max_pixels)
    what = _describe(name)
    palette_rgb = np.asarray(palette, dtype=np.float32)
    if image.mode in LABEL_MODES:
        ids = np.asarray(image).astype(np.int64)
        bad = np.unique(ids[(ids < 0) | (ids >= len(palette_rgb))])
        if bad.size:
            raise ImageInputError(f"{what} holds label ids {bad[:8].tolist()} outside 0..{len(palette_rgb) - 1}")
    else:
        rgb = np.asarray(to_rgb(image), dtype=np.float32)
        distances = ((rgb[:, :, None, :] - palette_rgb[None, None]) ** 2).sum(-1)
        ids = distances.argmin(-1).astype(np.int64)
        far = np.sqrt(distances.min(-1)) > FAR_COLOUR
        if far.mean() > MAX_FAR_FRACTION:
            raise ImageInputError(f"{what} is not a label map: {far.mean():.0%} of its pixels are far from every "
                                  "palette colour (expected a labelIds PNG or a map in the official colours)")
    return _nearest_fit(ids, height, width)[None]


def _nearest_fit(ids: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop (H, W) to the aspect width:height, then nearest-neighbour resize to (height, width)."""
    h, w = ids.shape
    if w * height > h * width:  # too wide
        crop = round(h * width / height)
        ids = ids[:, (w - crop) // 2:(w - crop) // 2 + crop]
    elif w * height < h * width:
        crop = round(w * height / width)
        ids = ids[(h - crop) // 2:(h - crop) // 2 + crop]
    h, w = ids.shape
    rows = np.minimum(((np.arange(height) + 0.5) * (h / height)).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (w / width)).astype(np.int64), w - 1)
    return ids[rows[:, None], cols[None, :]]


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` (bilinear, antialiased) and centre-crop to size x size."""
    return ImageOps.fit(image, (size, size), method=Image.Resampling.BILINEAR, centering=(0.5, 0.5))


def to_model_input(image: Image.Image, size: int, channels: int = 3) -> np.ndarray:
    """An RGB PIL image -> (1, channels, size, size) float32 in [-1, 1] (channels 1: ITU-R 601 grey, PIL's 'L')."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    fitted = fit_square(image, size)
    if channels == 1:
        fitted = fitted.convert("L")
    pixels = np.asarray(fitted, dtype=np.float32).reshape(size, size, channels)
    return (pixels.transpose(2, 0, 1)[None] / 127.5 - 1.0).astype(np.float32)


def to_pixels(array: np.ndarray) -> np.ndarray:
    """(C, H, W) or (N, C, H, W) float in [-1, 1] (clipped) -> (H, W, 3) or (N, H, W, 3) uint8; grey is repeated."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim not in (3, 4) or array.shape[-3] not in (1, 3):
        raise ValueError(f"expected images (C, H, W) or (N, C, H, W) with C in (1, 3), got shape {array.shape}")
    pixels = np.rint((np.clip(array, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    pixels = np.moveaxis(pixels, -3, -1)
    return np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels


def side_by_side(images: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """A row of (H, W, 3) uint8 images of one height, separated by white gaps."""
    height = images[0].shape[0]
    spacer = np.full((height, gap, 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for i, image in enumerate(images):
        parts += [spacer, image] if i else [image]
    return np.concatenate(parts, axis=1)


def save_png(pixels: np.ndarray, path: str | os.PathLike) -> Path:
    """Write (H, W, 3) uint8 as PNG atomically (temp file + rename): a reader never sees a partial file."""
    path = Path(path)
    atomic_write(path, lambda f: Image.fromarray(pixels).save(f, format="PNG"))
    return path
