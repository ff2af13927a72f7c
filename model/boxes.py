"""Box arithmetic shared by the RPN, the detector head and the evaluation.

Shapes: N, M box counts. Boxes are ``[N, 4]`` tensors ``(x1, y1, x2, y2)`` in
0-based inclusive pixel coordinates; width = x2 - x1 + 1 (see ``model``).
Deltas are ``[N, 4]`` ``(dx, dy, dw, dh)`` as in the paper, eq. (2).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

# exp() of larger log-scale deltas overflows float32; the original clamps
# nothing, we clamp at log(1000 / 16) as torchvision does, which only ever
# bites on a diverging model.
_MAX_LOG_SCALE = math.log(1000.0 / 16)


def box_widths_heights(boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Widths and heights ``[N]`` under the +1 convention."""
    return boxes[:, 2] - boxes[:, 0] + 1.0, boxes[:, 3] - boxes[:, 1] + 1.0


def box_areas(boxes: Tensor) -> Tensor:
    """Areas ``[N]`` under the +1 convention."""
    w, h = box_widths_heights(boxes)
    return w * h


def box_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """Intersection over union ``[N, M]`` of ``[N, 4]`` and ``[M, 4]`` boxes, +1 convention."""
    if boxes_a.numel() == 0 or boxes_b.numel() == 0:
        return boxes_a.new_zeros((boxes_a.shape[0], boxes_b.shape[0]))
    top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    wh = (bottom_right - top_left + 1.0).clamp(min=0)
    intersection = wh[..., 0] * wh[..., 1]
    union = box_areas(boxes_a)[:, None] + box_areas(boxes_b)[None, :] - intersection
    return intersection / union


def encode_boxes(reference: Tensor, target: Tensor) -> Tensor:
    """Regression targets ``[N, 4]`` that move ``reference`` boxes onto ``target`` boxes."""
    ref_w, ref_h = box_widths_heights(reference)
    ref_cx = reference[:, 0] + 0.5 * ref_w
    ref_cy = reference[:, 1] + 0.5 * ref_h
    tgt_w, tgt_h = box_widths_heights(target)
    tgt_cx = target[:, 0] + 0.5 * tgt_w
    tgt_cy = target[:, 1] + 0.5 * tgt_h
    return torch.stack(
        (
            (tgt_cx - ref_cx) / ref_w,
            (tgt_cy - ref_cy) / ref_h,
            torch.log(tgt_w / ref_w),
            torch.log(tgt_h / ref_h),
        ),
        dim=1,
    )


def decode_boxes(reference: Tensor, deltas: Tensor) -> Tensor:
    """Apply ``deltas`` ``[N, 4*C]`` to ``reference`` boxes ``[N, 4]``; returns ``[N, 4*C]``.

    ``C`` > 1 decodes class-specific regressions in one call.
    """
    if reference.shape[0] == 0:
        return deltas.new_zeros((0, deltas.shape[1]))
    ref_w, ref_h = box_widths_heights(reference)
    ref_cx = reference[:, 0] + 0.5 * ref_w
    ref_cy = reference[:, 1] + 0.5 * ref_h
    dx, dy = deltas[:, 0::4], deltas[:, 1::4]
    dw = deltas[:, 2::4].clamp(max=_MAX_LOG_SCALE)
    dh = deltas[:, 3::4].clamp(max=_MAX_LOG_SCALE)
    cx = dx * ref_w[:, None] + ref_cx[:, None]
    cy = dy * ref_h[:, None] + ref_cy[:, None]
    w = torch.exp(dw) * ref_w[:, None]
    h = torch.exp(dh) * ref_h[:, None]
    decoded = torch.empty_like(deltas)
    # The original subtracts one at the far corner to stay inclusive.
    decoded[:, 0::4] = cx - 0.5 * w
    decoded[:, 1::4] = cy - 0.5 * h
    decoded[:, 2::4] = cx + 0.5 * w - 1.0
    decoded[:, 3::4] = cy + 0.5 * h - 1.0
    return decoded


def clip_boxes(boxes: Tensor, height: int | float, width: int | float) -> Tensor:
    """Clip ``[N, 4*C]`` boxes to an image of ``height`` x ``width`` pixels."""
    clipped = boxes.clone()
    clipped[:, 0::4] = clipped[:, 0::4].clamp(0, width - 1)
    clipped[:, 1::4] = clipped[:, 1::4].clamp(0, height - 1)
    clipped[:, 2::4] = clipped[:, 2::4].clamp(0, width - 1)
    clipped[:, 3::4] = clipped[:, 3::4].clamp(0, height - 1)
    return clipped


def smooth_l1(pred: Tensor, target: Tensor, sigma: float) -> Tensor:
    """Elementwise smooth L1 of the original: quadratic below ``1 / sigma^2``, linear above."""
    sigma2 = sigma * sigma
    diff = (pred - target).abs()
    quadratic = diff < 1.0 / sigma2
    return torch.where(quadratic, 0.5 * sigma2 * diff * diff, diff - 0.5 / sigma2)
