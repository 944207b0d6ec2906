"""Decoding image files: the extensions read, masks binarised, unreadable, truncated and oversized files
refused with one line, every mode and bit depth turned into 8-bit RGB, EXIF rotation applied, large
JPEGs decoded at a reduced scale only where that keeps twice the target size."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from fapm_lib.data.images import IMAGE_EXTENSIONS, load_image, load_mask
from fapm_lib.data.transform import Transform
from tests.helpers import box_jpeg, data_error, truncated_copy


def test_image_extensions() -> None:
    assert set(IMAGE_EXTENSIONS) == {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


# --------------------------------------------------------------------------- masks
@pytest.mark.parametrize("mode", ["L", "1", "RGB", "P"])
def test_mask_modes_binarise_above_127(tmp_path: Path, mode: str) -> None:
    gray = np.zeros((8, 8), dtype=np.uint8)
    gray[:, :4] = 200
    gray[:, 4:6] = 100
    path = tmp_path / "m_mask.png"
    Image.fromarray(gray).convert(mode, dither=Image.Dither.NONE).save(path)
    mask = load_mask(path, (8, 8))
    assert mask.mode == "L"
    expected = np.zeros((8, 8), dtype=np.uint8)
    expected[:, :4] = 255
    np.testing.assert_array_equal(np.asarray(mask), expected)


# --------------------------------------------------------------------------- robust reading
def _png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height (valid CRC), as a decompression bomb would."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    raw = bytearray(buffer.getvalue())
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    path.write_bytes(bytes(raw))
    return path


@pytest.fixture
def bad_files(tmp_path: Path, image_writer) -> dict[str, Path]:
    """One broken file of each kind, by name."""
    empty = tmp_path / "empty.png"
    empty.touch()
    text = tmp_path / "text.png"
    text.write_text("this is not a PNG\n")
    return {
        "cut_png": truncated_copy(image_writer(tmp_path / "noise.png", (64, 64)), tmp_path / "cut.png"),
        "cut_jpg": truncated_copy(image_writer(tmp_path / "noise.jpg", (64, 64)), tmp_path / "cut.jpg"),
        "empty": empty,
        "text": text,
        "missing": tmp_path / "missing.png",
    }


def test_truncated_images_are_not_loaded() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("cut_png", "cannot read image (image file is truncated"),
        ("cut_jpg", "cannot read image (image file is truncated"),
        ("empty", "cannot read image (empty file"),
        ("text", "cannot read image (not an image"),
        ("missing", "file not found"),
    ],
)
def test_unreadable_file_is_one_line_data_error(bad_files: dict[str, Path], name: str, problem: str) -> None:
    path = bad_files[name]
    assert data_error(load_image, path).startswith(f"{path}: {problem}")


def test_decompression_bombs_are_refused(tmp_path: Path) -> None:
    assert Image.MAX_IMAGE_PIXELS >= 16384 * 16384
    above_limit = _png_claiming_size(tmp_path / "big.png", 20000, 20000)  # Pillow would only warn
    far_above = _png_claiming_size(tmp_path / "huge.png", 60000, 60000)  # Pillow raises itself
    for path in (above_limit, far_above):
        message = data_error(load_image, path)
        assert message.startswith(f"{path}: image too large")


def _stored_mode(path: Path) -> str:
    with Image.open(path) as image:
        return image.mode


def test_sixteen_bit_png_scaled_by_full_range(tmp_path: Path) -> None:
    values = np.array([[0, 25700, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert _stored_mode(path) == "I;16"
    rgb = np.asarray(load_image(path))
    np.testing.assert_array_equal(rgb[..., 0], [[0, 100, 128, 255]])
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_32_bit_integer_tiff_holding_16_bit_values(tmp_path: Path) -> None:
    path = tmp_path / "deep.tif"
    Image.fromarray(np.array([[0, 25700, 65535]], dtype=np.int32)).save(path)
    assert _stored_mode(path) == "I"
    np.testing.assert_array_equal(np.asarray(load_image(path))[..., 1], [[0, 100, 255]])


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("RGBA", (10, 20, 30, 0), (10, 20, 30)),  # alpha dropped, not composited
        ("LA", (100, 7), (100, 100, 100)),
        ("L", 77, (77, 77, 77)),
        ("1", 1, (255, 255, 255)),
    ],
)
def test_modes_become_rgb(tmp_path: Path, mode: str, colour, expected: tuple[int, int, int]) -> None:
    path = tmp_path / "x.png"
    Image.new(mode, (5, 4), colour).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (5, 4) and image.getpixel((2, 2)) == expected


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_image_becomes_rgb(tmp_path: Path, transparency: bool) -> None:
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    path = tmp_path / "p.png"
    palette.save(path, **({"transparency": 1} if transparency else {}))
    image = load_image(path)
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (200, 100, 50)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)
    assert _stored_mode(path) == "CMYK"
    red, green, blue = load_image(path).getpixel((8, 8))
    assert red > 240 and green < 15 and blue < 15


def test_exif_rotated_jpeg_is_upright(tmp_path: Path) -> None:
    stored = np.zeros((32, 64, 3), dtype=np.uint8)  # wide as stored: red left, blue right
    stored[:, :32] = (255, 0, 0)
    stored[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    image = load_image(path)
    assert image.size == (32, 64)  # tall once upright: red on top, blue below
    assert image.getpixel((16, 8))[0] > 200 and image.getpixel((16, 56))[2] > 200
    assert Transform().image(image).shape == (3, 224, 224)


@pytest.mark.parametrize("size", [(32, 32), (300, 100), (100, 300), (33, 90)])
def test_small_and_non_square_images(tmp_path: Path, image_writer, size: tuple[int, int]) -> None:
    image = load_image(image_writer(tmp_path / "x.png", size))
    assert image.size == size
    x = Transform().image(image)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32


def test_very_large_png_reads_correctly(tmp_path: Path) -> None:
    pixels = np.full((6000, 8000, 3), (30, 60, 90), dtype=np.uint8)
    pixels[1000:2000, 1000:3000] = (250, 10, 10)
    pixels[5000:, 7000:] = (0, 255, 0)
    path = tmp_path / "huge.png"
    Image.fromarray(pixels).save(path, compress_level=1)
    del pixels
    image = load_image(path)
    assert image.size == (8000, 6000)
    assert image.getpixel((0, 0)) == (30, 60, 90)
    assert image.getpixel((1500, 1500)) == (250, 10, 10)
    assert image.getpixel((7999, 5999)) == (0, 255, 0)
    assert Transform().image(image).shape == (3, 224, 224)


def test_large_jpeg_decoded_at_reduced_scale_only_when_it_keeps_twice_the_target(tmp_path: Path) -> None:
    large = box_jpeg(tmp_path / "large.jpg", (2400, 1800), (0, 0, 10, 10))
    medium = box_jpeg(tmp_path / "medium.jpg", (1000, 800), (0, 0, 10, 10))
    assert load_image(large).size == (2400, 1800)
    assert load_image(large, min_side=256).size == (1200, 900)  # 1/4 would give 450 < 512
    assert load_image(large, min_side=100).size == (300, 225)  # 1/8 keeps >= 200
    assert load_image(medium, min_side=256).size == (1000, 800)
