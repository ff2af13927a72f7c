"""Reading image files from untrusted datasets as RGB arrays.

Every failure (missing file, unknown format, truncated or garbage bytes, a
decompression bomb) becomes a :class:`DatasetError` that names the file, so a
bad image among thousands is found by its name, not by a stack trace.

Pixels are returned as stored: EXIF orientation is *not* applied, because
annotation tools and the annotations' ``<size>`` refer to the stored raster.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from model.data.records import DatasetError

# Modes whose samples are wider than 8 bits; PIL's convert("RGB") clips them
# at 255 instead of rescaling, which would turn most 16-bit images white.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def not_regular_file(path: Path) -> str | None:
    """What ``path`` is when it exists but is not a regular file (``"a FIFO"``, ...), else None.

    A FIFO would block a reader forever and a device file never ends, so they are
    refused by type before anything opens them; symbolic links are followed.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # missing (or unreadable): the caller's open says which
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _open_checked(path: Path) -> Image.Image:
    """Open ``path`` lazily (header only), turning every failure into a DatasetError."""
    path = Path(path)
    kind = not_regular_file(path)
    if kind is not None:
        raise DatasetError(f"{path}: not a regular file ({kind}); an image must be one")
    if not path.is_file():
        raise DatasetError(f"{path}: image file not found")
    try:
        image = Image.open(path)
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot open image ({exc})") from exc
    # PIL only warns between its pixel limit and twice that; we refuse, without
    # touching the global warning filters (not thread-safe).
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and image.size[0] * image.size[1] > limit:
        image.close()
        raise DatasetError(f"{path}: image of {image.size[0]}x{image.size[1]} pixels exceeds the {limit}-pixel limit")
    return image


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image, read from its header only (cheap)."""
    with _open_checked(path) as image:
        width, height = image.size
    if width <= 0 or height <= 0:
        raise DatasetError(f"{path}: image has empty size {width}x{height}")
    return int(width), int(height)


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> ``[H, W, 3]`` uint8 RGB."""
    mode = image.mode
    if mode in _WIDE_MODES or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        # 16-bit and float data: map the type's full range onto 0..255.
        top = 1.0 if mode == "F" else 65535.0
        gray = np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        # Palette images with a transparent index must go through RGBA (PIL warns otherwise).
        image = image.convert("RGBA")
    # RGBA/LA: alpha is dropped (the colour channels are the picture); CMYK, L,
    # 1, P, YCbCr, LAB, HSV all have exact conversions in PIL.
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_image_rgb(path: Path) -> np.ndarray:
    """Decode an image file completely into an RGB ``[H, W, 3]`` uint8 array.

    Grayscale, palette, CMYK, RGBA, 16-bit and PNG/JPEG/BMP/... images all come
    back as 3-channel RGB. Raises :class:`DatasetError` naming ``path`` when the
    file is missing, not an image, or truncated/corrupt.
    """
    path = Path(path)
    image = _open_checked(path)
    try:
        with image:
            # load() decodes every byte: truncated data raises here, not later.
            image.load()
            array = _to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # SyntaxError/ValueError: some PIL plugins report broken headers this way.
        raise DatasetError(f"{path}: corrupt or truncated image ({exc})") from exc
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise DatasetError(f"{path}: decoded to an unusable array of shape {array.shape}")
    return np.ascontiguousarray(array)
