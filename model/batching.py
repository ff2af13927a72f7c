"""Several images as one padded batch for the trunk.

Shapes: B images ``[3, h_i, w_i]`` (RGB float 0..255, each already resized) -> one batch
``[B, 3, H, W]`` with ``H = max h_i``, ``W = max w_i``; image i in the top-left corner.

Each image is normalised first and the batch padded with zeros after, so the padding is the
network's "mean pixel", as the original's blob (zeros, then mean-subtracted images copied in).
One image gives exactly ``normalize(image[None])``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def pad_images(
    images: Sequence[Tensor], normalize: Callable[[Tensor], Tensor]
) -> tuple[Tensor, list[tuple[int, int]]]:
    """The normalised padded batch ``[B, 3, H, W]`` and each image's ``(h_i, w_i)``."""
    if len(images) == 0:
        raise ValueError("a batch needs at least one image")
    for image in images:
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected images [3, h, w], got {tuple(image.shape)}")
    sizes = [(int(image.shape[1]), int(image.shape[2])) for image in images]
    if len(images) == 1:
        return normalize(images[0][None]), sizes
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    first = images[0]
    batch = first.new_zeros((len(images), 3, height, width))
    for i, (image, (h, w)) in enumerate(zip(images, sizes)):
        batch[i, :, :h, :w] = normalize(image[None])[0]
    return batch, sizes


def chunks(items: Sequence, size: int) -> list[Sequence]:
    """``items`` in consecutive slices of ``size`` (the last one shorter)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]
