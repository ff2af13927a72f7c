"""From RPN outputs to proposals (py-faster-rcnn's ``proposal_layer``), one image.

Shapes: N anchors, P proposals kept. Boxes in network-input pixels, +1 convention.

Order of operations, as the original: decode -> clip to the image -> drop boxes narrower or
shorter than ``min_size * scale`` -> rank -> pre-NMS top N -> NMS -> post-NMS top N.
The ``ProposalConfig`` switches give the paper's ablations (Table 2): ranking "random" is
"no cls" (scores are returned but do not order anything), ``use_regression`` False is
"no reg" (the clipped anchors are the proposals), ``use_nms`` False is "no NMS".

NMS uses ``torchvision.ops.nms`` on boxes with ``x2 + 1, y2 + 1``: its area and intersection
are then exactly the +1-convention ones of the original. It is given the rank order as scores
(not the objectness) so that it suppresses in exactly the order chosen by the ranking step,
which also makes the random ranking well defined and score ties deterministic. On the CPU,
with a post-NMS top N, ``model.rpn.nms.nms_first`` gives the same first N boxes without
deciding the boxes past them (the ONNX trace keeps ``torchvision.ops.nms``).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms

from model.boxes import box_widths_heights, clip_boxes, decode_boxes
from model.config import ProposalConfig
from model.rpn.nms import nms_first

RANKINGS = ("score", "random")


def generate_proposals(
    anchors: Tensor,
    objectness: Tensor,
    deltas: Tensor,
    image_height: int,
    image_width: int,
    scale: float,
    cfg: ProposalConfig,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Proposals ``[P, 4]`` and their foreground probabilities ``[P]``, in rank order.

    ``anchors`` ``[N, 4]``, ``objectness`` ``[N]`` (foreground probability), ``deltas``
    ``[N, 4]``; ``scale`` is the factor the original image was resized by (for the minimum
    size); ``generator`` drives the "random" ranking.
    """
    if cfg.ranking not in RANKINGS:
        raise ValueError(f"proposal ranking must be one of {RANKINGS}, got {cfg.ranking!r}")
    if anchors.shape[0] != objectness.shape[0] or anchors.shape[0] != deltas.shape[0]:
        raise ValueError(
            "anchors, objectness and deltas must have the same length, got "
            f"{anchors.shape[0]}, {objectness.shape[0]}, {deltas.shape[0]}"
        )
    boxes = decode_boxes(anchors, deltas) if cfg.use_regression else anchors
    boxes = clip_boxes(boxes, image_height, image_width)

    widths, heights = box_widths_heights(boxes)
    min_size = cfg.min_size * scale
    keep = torch.nonzero((widths >= min_size) & (heights >= min_size)).squeeze(1)
    boxes, scores = boxes[keep], objectness[keep]

    if cfg.ranking == "score":
        order = torch.argsort(scores, descending=True, stable=True)
    else:
        perm_device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(scores.shape[0], generator=generator, device=perm_device)
        order = order.to(scores.device)
    if cfg.pre_nms_top_n > 0:
        order = order[: cfg.pre_nms_top_n]
    boxes, scores = boxes[order], scores[order]

    if cfg.use_nms and boxes.shape[0] > 0:
        # Strictly decreasing stand-in scores: NMS visits boxes in rank order.
        rank_scores = torch.arange(
            boxes.shape[0], 0, -1, device=boxes.device, dtype=boxes.dtype
        )
        inclusive = boxes.clone()
        inclusive[:, 2:] += 1.0
        if cfg.post_nms_top_n > 0 and boxes.device.type == "cpu" and not torch.jit.is_tracing():
            kept = nms_first(inclusive, cfg.nms_threshold, cfg.post_nms_top_n)  # = nms(...)[:top_n]
        else:
            kept = nms(inclusive, rank_scores, cfg.nms_threshold)  # ascending rank
        boxes, scores = boxes[kept], scores[kept]

    if cfg.post_nms_top_n > 0:
        boxes, scores = boxes[: cfg.post_nms_top_n], scores[: cfg.post_nms_top_n]
    return boxes, scores
