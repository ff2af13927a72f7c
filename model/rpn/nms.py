"""Greedy NMS over boxes in rank order, deciding only as many boxes as the first ``limit`` need.

Shapes: N boxes ``[N, 4]`` (``x1, y1, x2, y2``, as ``torchvision.ops.nms`` measures them),
already in rank order; returns ascending indices ``[min(K, limit)]``, K the boxes full NMS
keeps.

The proposal layer keeps only the first ``post_nms_top_n`` boxes NMS keeps (2000 of 12000
in training, 300 of 6000 at test), but ``torchvision.ops.nms`` decides every box; on the CPU
its cost grows with (boxes x kept). Greedy NMS is prefix-closed: whether box j survives
depends only on the boxes before it, so NMS over the first k boxes keeps exactly the boxes
full NMS keeps among them. ``nms_first`` therefore runs ``torchvision.ops.nms`` itself on a
prefix (``2 * limit`` boxes), and when that keeps fewer than ``limit`` on a longer one sized
by the keep rate seen so far (the whole set once that would be most of it). The result is
``nms(boxes, decreasing scores, threshold)[:limit]`` index for index
(``tests/test_rpn_proposals.py``); measured on the test-time 6000 -> 300 of a random-weight
600-px image: 56 ms -> 2 ms (BENCHMARKS.md).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import nms

# Margin on the keep rate when sizing the next prefix, and the share of N past which the
# whole set is cheaper than guessing again.
_MARGIN = 1.25
_WHOLE = 0.7


def nms_first(boxes: Tensor, threshold: float, limit: int, prefix: int | None = None) -> Tensor:
    """Indices of the first ``limit`` boxes greedy NMS keeps, visiting ``boxes`` in order.

    ``prefix`` (default ``2 * limit``): boxes decided in the first round.
    """
    if limit <= 0:
        raise ValueError(f"nms_first needs a positive limit, got {limit}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be [N, 4], got {tuple(boxes.shape)}")
    total = boxes.shape[0]
    order = torch.arange(total, 0, -1, device=boxes.device, dtype=boxes.dtype)  # rank as score
    size = min(total, max(1, 2 * limit if prefix is None else prefix))
    while True:
        if size >= _WHOLE * total:
            size = total
        keep = nms(boxes[:size], order[:size], threshold)  # ascending: boxes visited in order
        if keep.numel() >= limit or size == total:
            return keep[:limit]
        rate = max(keep.numel(), 1) / size
        size = min(total, max(size + 1, math.ceil(limit / rate * _MARGIN)))
