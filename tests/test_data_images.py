"""load_image_rgb: every common mode comes back as RGB uint8; bad files raise DatasetError naming the file."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model.data.images import image_size, load_image_rgb
from model.data.records import DatasetError


def _rgb_pattern(height: int = 6, width: int = 8) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs * 30, ys * 40, (xs + ys) * 10], axis=2).astype(np.uint8)


def test_rgb_png_round_trip_is_exact(tmp_path):
    pixels = _rgb_pattern()
    path = tmp_path / "rgb.png"
    Image.fromarray(pixels).save(path)
    loaded = load_image_rgb(path)
    assert loaded.dtype == np.uint8 and loaded.shape == (6, 8, 3)
    np.testing.assert_array_equal(loaded, pixels)


def test_rgb_jpeg_loads_close_to_source(tmp_path):
    pixels = np.full((16, 24, 3), (200, 30, 90), dtype=np.uint8)
    path = tmp_path / "rgb.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    loaded = load_image_rgb(path)
    assert loaded.shape == (16, 24, 3)
    assert np.abs(loaded.astype(int) - pixels.astype(int)).max() <= 4


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)
    loaded = load_image_rgb(path)
    assert loaded.shape == (6, 8, 3)
    for channel in range(3):
        np.testing.assert_array_equal(loaded[:, :, channel], gray)


def test_palette_image_uses_palette_colours(tmp_path):
    image = Image.new("P", (4, 2))
    image.putpalette([10, 20, 30, 200, 100, 0] + [0] * (256 * 3 - 6))
    image.putdata([0, 1, 1, 0, 1, 1, 1, 0])
    path = tmp_path / "palette.png"
    image.save(path)
    loaded = load_image_rgb(path)
    assert loaded.shape == (2, 4, 3)
    assert loaded[0, 0].tolist() == [10, 20, 30]
    assert loaded[0, 1].tolist() == [200, 100, 0]
    assert loaded[1, 3].tolist() == [10, 20, 30]


def test_palette_image_with_transparency(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    image.putdata([0, 1])
    image.info["transparency"] = 0
    path = tmp_path / "palette_t.png"
    image.save(path, transparency=0)
    loaded = load_image_rgb(path)
    assert loaded.shape == (1, 2, 3)
    assert loaded[0, 1].tolist() == [0, 0, 255]


def test_rgba_drops_alpha_keeps_colour(tmp_path):
    rgba = np.zeros((3, 5, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 12, 34, 56
    rgba[..., 3] = 0  # fully transparent: the colour is still the picture's
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    loaded = load_image_rgb(path)
    assert loaded.shape == (3, 5, 3)
    assert (loaded.reshape(-1, 3) == [12, 34, 56]).all()


def test_gray_alpha_png(tmp_path):
    path = tmp_path / "la.png"
    Image.new("LA", (3, 2), (77, 10)).save(path)
    loaded = load_image_rgb(path)
    assert loaded.shape == (2, 3, 3) and (loaded == 77).all()


def test_cmyk_jpeg_loads_as_rgb(tmp_path):
    # Pure cyan + magenta ink (no yellow, no black) is blue.
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (255, 255, 0, 0)).save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    loaded = load_image_rgb(path)
    assert loaded.shape == (16, 16, 3)
    red, green, blue = loaded[8, 8].astype(int)
    assert red < 20 and green < 20 and blue > 235


def test_sixteen_bit_png_is_rescaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    loaded = load_image_rgb(path)
    assert loaded.shape == (1, 3, 3)
    assert loaded[0, :, 0].tolist() == [0, 128, 255]


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nowhere.jpg"
    with pytest.raises(DatasetError, match="nowhere.jpg.*not found"):
        load_image_rgb(path)


def test_garbage_bytes_name_the_file(tmp_path):
    path = tmp_path / "garbage.jpg"
    path.write_bytes(b"this is not an image at all" * 20)
    with pytest.raises(DatasetError, match="garbage.jpg"):
        load_image_rgb(path)


def test_empty_file_names_the_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match="empty.png"):
        load_image_rgb(path)


@pytest.mark.parametrize("suffix, fmt", [(".jpg", "JPEG"), (".png", "PNG")])
def test_truncated_image_names_the_file(tmp_path, suffix, fmt):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    path = tmp_path / f"cut{suffix}"
    Image.fromarray(noise).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    # The header still reads: only a full decode can find the damage.
    assert image_size(path) == (64, 64)
    with pytest.raises(DatasetError, match=f"cut{suffix}.*(corrupt|truncated)"):
        load_image_rgb(path)


def test_image_size_reads_header(tmp_path):
    path = tmp_path / "size.png"
    Image.new("RGB", (37, 11)).save(path)
    assert image_size(path) == (37, 11)
    with pytest.raises(DatasetError, match="missing.png"):
        image_size(tmp_path / "missing.png")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_images_over_the_pixel_limit_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("RGB", (40, 30)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1200 pixels: PIL itself would only warn
    with pytest.raises(DatasetError, match="huge.png.*pixel limit"):
        load_image_rgb(path)
