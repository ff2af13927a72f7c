"""Anchors: the reference boxes at one feature-map position, shifted over the whole map.

Shapes: A reference anchors per position (k in the paper, 9 by default), a feature map of
Hf x Wf positions, N = Hf * Wf * A anchors in all. Boxes are ``(x1, y1, x2, y2)`` in
0-based inclusive pixels of the network input (see ``model``).

The anchor layout fixed here, index ``(y * Wf + x) * A + a`` (position-major, anchor-minor),
is the layout ``model.rpn.head.RPNHead`` produces its outputs in.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def generate_anchors(
    base_size: int = 16,
    ratios: Sequence[float] = (0.5, 1.0, 2.0),
    scales: Sequence[float] = (8, 16, 32),
) -> Tensor:
    """Reference anchors ``[len(ratios) * len(scales), 4]`` float32, ratio-major.

    Reproduces py-faster-rcnn's ``generate_anchors`` box for box: the reference window is
    ``(0, 0, base_size - 1, base_size - 1)``; for each ratio (h / w) the window of the same
    area gets width ``round(sqrt(w * h / ratio))`` and height ``round(width * ratio)``, with
    numpy's round-half-to-even (``torch.round`` rounds the same way); each of those is then
    scaled by every scale about the same centre. The defaults give the paper's nine boxes,
    ``[-84, -40, 99, 55]`` first and ``[-168, -344, 183, 359]`` last.
    """
    if base_size <= 0:
        raise ValueError(f"anchor base_size must be positive, got {base_size}")
    if len(ratios) == 0 or len(scales) == 0:
        raise ValueError("anchor ratios and scales must not be empty")
    # float64 so that sqrt and the half-way roundings match numpy's double arithmetic.
    ratios_t = torch.as_tensor(list(ratios), dtype=torch.float64)
    scales_t = torch.as_tensor(list(scales), dtype=torch.float64)
    if (ratios_t <= 0).any() or (scales_t <= 0).any():
        raise ValueError(f"anchor ratios and scales must be positive, got {ratios} / {scales}")

    side = float(base_size)  # width = height of the reference window, +1 convention
    centre = 0.5 * (side - 1.0)  # (base_size - 1) / 2, e.g. 7.5 for 16
    widths = torch.round(torch.sqrt(side * side / ratios_t))  # [R]
    heights = torch.round(widths * ratios_t)  # [R]
    # Scale enumeration inside each ratio: ratio-major order, as the original's vstack.
    widths = (widths[:, None] * scales_t[None, :]).reshape(-1)  # [R*S]
    heights = (heights[:, None] * scales_t[None, :]).reshape(-1)
    anchors = torch.stack(
        (
            centre - 0.5 * (widths - 1.0),
            centre - 0.5 * (heights - 1.0),
            centre + 0.5 * (widths - 1.0),
            centre + 0.5 * (heights - 1.0),
        ),
        dim=1,
    )
    return anchors.to(torch.float32)


def shift_anchors(
    reference: Tensor, feature_height: int, feature_width: int, stride: int = 16
) -> Tensor:
    """All anchors ``[Hf * Wf * A, 4]`` of a ``feature_height`` x ``feature_width`` map.

    Position ``(y, x)`` shifts the ``[A, 4]`` ``reference`` anchors by ``(x, y) * stride``;
    anchor ``a`` there has index ``(y * Wf + x) * A + a``. Returned on ``reference``'s
    device and dtype.
    """
    if reference.dim() != 2 or reference.shape[1] != 4:
        raise ValueError(f"reference anchors must be [A, 4], got {tuple(reference.shape)}")
    if feature_height < 0 or feature_width < 0:
        raise ValueError(f"feature size must be >= 0, got {feature_height} x {feature_width}")
    shift_x = torch.arange(feature_width, device=reference.device, dtype=reference.dtype) * stride
    shift_y = torch.arange(feature_height, device=reference.device, dtype=reference.dtype) * stride
    grid_y, grid_x = torch.meshgrid(shift_y, shift_x, indexing="ij")  # [Hf, Wf], row = y
    grid_x = grid_x.reshape(-1)
    grid_y = grid_y.reshape(-1)
    shifts = torch.stack((grid_x, grid_y, grid_x, grid_y), dim=1)  # [Hf*Wf, 4]
    return (shifts[:, None, :] + reference[None, :, :]).reshape(-1, 4)


def anchors_inside(
    anchors: Tensor, image_height: int, image_width: int, allowed_border: int = 0
) -> Tensor:
    """Bool mask ``[N]`` of anchors inside the image, up to ``allowed_border`` pixels outside.

    The original's test: ``x1 >= -b``, ``y1 >= -b``, ``x2 < W + b``, ``y2 < H + b``.
    """
    border = float(allowed_border)
    return (
        (anchors[:, 0] >= -border)
        & (anchors[:, 1] >= -border)
        & (anchors[:, 2] < image_width + border)
        & (anchors[:, 3] < image_height + border)
    )
