"""The RPN head: a small network slid over the shared feature map (paper sec. 3.1).

Shapes: N images, C feature channels, Hf x Wf positions, A anchors per position.

Channel layout of the two sibling 1x1 convs, fixed to py-faster-rcnn's so that weights
ported from it keep their meaning:

- ``cls`` has ``2A`` channels, class-major: channel ``c * A + a`` is class ``c`` (0 background,
  1 object) of anchor ``a`` (the original reshapes to ``[N, 2, A*Hf, Wf]`` for its softmax and
  reads foreground from channels ``A:``);
- ``reg`` has ``4A`` channels, anchor-major: channel ``a * 4 + j`` is delta ``j`` of
  ``(dx, dy, dw, dh)`` for anchor ``a``.

``forward`` flattens both to the anchor order of ``model.anchors.shift_anchors``:
row ``(y * Wf + x) * A + a``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from model.precision import as_float32


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then sibling 1x1 convs for objectness (2A) and box deltas (4A)."""

    def __init__(self, in_channels: int, mid_channels: int, num_anchors: int) -> None:
        super().__init__()
        if min(in_channels, mid_channels, num_anchors) <= 0:
            raise ValueError(
                "RPNHead needs positive in_channels, mid_channels and num_anchors, got "
                f"{in_channels}, {mid_channels}, {num_anchors}"
            )
        self.num_anchors = num_anchors
        self.conv = nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.cls = nn.Conv2d(mid_channels, 2 * num_anchors, kernel_size=1)
        self.reg = nn.Conv2d(mid_channels, 4 * num_anchors, kernel_size=1)
        for layer in (self.conv, self.cls, self.reg):
            nn.init.normal_(layer.weight, mean=0.0, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``features`` ``[N, C, Hf, Wf]`` -> objectness logits ``[N, Hf*Wf*A, 2]``
        (column 1 = object) and deltas ``[N, Hf*Wf*A, 4]``, in ``shift_anchors`` order; float32
        also under bfloat16 autocast (``model.precision``), for decoding and ranking."""
        hidden = self.relu(self.conv(features))
        logits = self.cls(hidden)  # [N, 2A, Hf, Wf], channel c*A + a
        deltas = self.reg(hidden)  # [N, 4A, Hf, Wf], channel a*4 + j
        n, _, height, width = logits.shape
        a = self.num_anchors
        logits = logits.view(n, 2, a, height, width).permute(0, 3, 4, 2, 1)  # [N, Hf, Wf, A, 2]
        deltas = deltas.view(n, a, 4, height, width).permute(0, 3, 4, 1, 2)  # [N, Hf, Wf, A, 4]
        return as_float32(logits.reshape(n, -1, 2)), as_float32(deltas.reshape(n, -1, 4))


def objectness_probability(logits: Tensor) -> Tensor:
    """Foreground probability ``[...]`` from two-way logits ``[..., 2]`` (softmax, column 1)."""
    return torch.softmax(logits, dim=-1)[..., 1]
