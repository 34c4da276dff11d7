"""Serving-side image handling: uploads as users make them decode to the model's input, bad ones get a message."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from i2i.imaging import (ImageInputError, decode_image, fit_square, save_png, side_by_side, to_model_input,
                         to_pixels)


def encoded(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient(width: int = 40, height: int = 30) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    return np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                           np.full((height, width, 1), 128, np.float32)], axis=2).astype(np.uint8)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "L", "P", "I;16", "CMYK", "1"])
def test_every_pil_mode_decodes_to_8bit_rgb(mode):
    rgb = Image.fromarray(gradient())
    if mode == "I;16":
        image = Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257).astype(np.uint16))
    else:
        image = rgb.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    decoded = decode_image(encoded(image, fmt), name=f"x.{fmt.lower()}")
    assert decoded.mode == "RGB" and decoded.size == (40, 30)
    if mode == "I;16":  # rescaled from 16 bits, not clipped at 255
        assert abs(np.asarray(decoded)[..., 0].astype(int) - np.asarray(rgb.convert("L")).astype(int)).max() <= 1


def test_alpha_is_composited_on_black():
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:10, :, 3] = 255  # top half opaque, bottom transparent
    decoded = np.asarray(decode_image(encoded(Image.fromarray(rgba, "RGBA"))))
    assert (decoded[:10] == 200).all() and (decoded[10:] == 0).all()


def test_exif_orientation_is_applied():
    pixels = gradient(40, 20)  # landscape; orientation 6 = rotate 90 degrees clockwise for display
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(encoded(Image.fromarray(pixels), "JPEG", exif=exif, quality=95))
    assert decoded.size == (20, 40)


@pytest.mark.parametrize("data, message", [
    (b"", "is empty"),
    (b"this is not an image at all", "not an image file"),
    (encoded(Image.new("RGB", (1, 1))), "at least 8x8"),
])
def test_bad_uploads_raise_a_one_line_message(data, message):
    with pytest.raises(ImageInputError, match=message) as error:
        decode_image(data, name="upload.png")
    assert "\n" not in str(error.value) and "upload.png" in str(error.value)


def test_truncated_file_is_refused():
    data = encoded(Image.fromarray(gradient(64, 64)), "PNG")
    with pytest.raises(ImageInputError, match="could not be decoded|not an image"):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_is_refused_from_the_header():
    big = encoded(Image.new("L", (6000, 6000)), "PNG")  # 36M pixels: tiny file, huge image
    with pytest.raises(ImageInputError, match="pixels"):
        decode_image(big, max_pixels=10_000_000)


def test_oversized_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(encoded(Image.fromarray(gradient())) + b"\0" * 4096)
    with pytest.raises(ImageInputError, match="limit"):
        decode_image(path, max_bytes=1024)


def test_any_aspect_is_resized_and_centre_cropped():
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, 20:40] = 255  # a white centre third
    fitted = np.asarray(fit_square(Image.fromarray(wide), 20))
    assert fitted.shape == (20, 20, 3) and fitted.mean() > 250  # only the centre survives the crop
    x = to_model_input(Image.fromarray(wide), 16)
    assert x.shape == (1, 3, 16, 16) and x.dtype == np.float32 and -1 <= x.min() and x.max() <= 1
    assert to_model_input(Image.fromarray(wide), 16, channels=1).shape == (1, 1, 16, 16)


def test_pixels_round_trip_and_clip():
    image = Image.fromarray(gradient(16, 16))
    x = to_model_input(image, 16)[0]
    assert (to_pixels(x) == np.asarray(image)).all()
    clipped = to_pixels(np.full((1, 4, 4), 3.0))
    assert clipped.shape == (4, 4, 3) and (clipped == 255).all()
    assert side_by_side([clipped, clipped]).shape == (4, 10, 3)


def test_png_is_written_atomically(tmp_path):
    path = save_png(gradient(8, 8), tmp_path / "out.png")
    assert np.asarray(Image.open(path)).shape == (8, 8, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
