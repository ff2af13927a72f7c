"""Anchor labels and regression targets for training the RPN (paper sec. 3.1.2, 3.1.3).

Shapes: N anchors (all positions, ``shift_anchors`` order), G ground-truth boxes, both in
network-input pixels (gt boxes already multiplied by the input scale).

Labels: ``-1`` ignored, ``0`` negative (background), ``1`` positive (object). This follows
py-faster-rcnn's ``anchor_target_layer`` step for step:

1. only anchors inside the image (``allowed_border``) are labelled; the rest stay ``-1``;
2. negatives first: max IoU with any gt ``< negative_iou`` -> 0;
3. for every gt, the anchor(s) with the highest IoU with it -> 1, ties included;
4. max IoU ``>= positive_iou`` -> 1 (so 3 and 4 override 2);
5. sample at most ``positive_fraction * batch_size_per_image`` positives and fill the rest of
   the batch with negatives, each a random subset without replacement; the others -> -1.

Faithful quirk, kept on purpose: step 3 takes every inside anchor whose IoU with a gt equals
that gt's best IoU, *without* requiring it to be above zero (the original's
``np.where(overlaps == gt_max_overlaps)``). A gt that overlaps no inside anchor at all therefore
turns every inside anchor with zero IoU to it positive, before sampling keeps a random
``positive_fraction`` of them. Filter such boxes (degenerate, or outside the image) upstream.

With no gt (G = 0), which the original does not handle, every inside anchor is a negative
candidate and only negatives are sampled.
"""
from __future__ import annotations

import torch
from torch import Tensor

from model.anchors import anchors_inside
from model.boxes import box_iou, encode_boxes
from model.config import RPNConfig
from model.matcher import Matcher
from model.sampler import rpn_sampler


def label_anchors(
    anchors: Tensor,
    gt_boxes: Tensor,
    image_height: int,
    image_width: int,
    cfg: RPNConfig,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sampled labels ``[N]`` int64 (-1 / 0 / 1) and regression targets ``[N, 4]``.

    Targets are ``encode_boxes(anchor, its max-IoU gt)`` for positive anchors and zero
    elsewhere (only positives carry a regression loss). ``generator`` drives the sampling.
    """
    if anchors.dim() != 2 or anchors.shape[1] != 4:
        raise ValueError(f"anchors must be [N, 4], got {tuple(anchors.shape)}")
    if gt_boxes.dim() != 2 or gt_boxes.shape[1] != 4:
        raise ValueError(f"gt_boxes must be [G, 4], got {tuple(gt_boxes.shape)}")
    num_anchors = anchors.shape[0]
    device = anchors.device
    gt_boxes = gt_boxes.to(device=device, dtype=anchors.dtype)

    labels = torch.full((num_anchors,), -1, dtype=torch.int64, device=device)
    targets = anchors.new_zeros((num_anchors, 4))
    inside = torch.nonzero(
        anchors_inside(anchors, image_height, image_width, cfg.allowed_border)
    ).squeeze(1)
    if inside.numel() == 0:
        return labels, targets
    inside_anchors = anchors[inside]
    # Steps 2-4 (see the module doc); with no gt every inside anchor is a negative.
    match = anchor_matcher(cfg)(box_iou(inside_anchors, gt_boxes))  # over [Ni, G]
    positives, negatives = rpn_sampler(cfg.batch_size_per_image, cfg.positive_fraction)(match.labels, generator)
    inside_labels = torch.full((inside.numel(),), -1, dtype=torch.int64, device=device)
    inside_labels[positives] = 1
    inside_labels[negatives] = 0

    labels[inside] = inside_labels
    if gt_boxes.shape[0] > 0 and positives.numel() > 0:
        positive = inside_labels == 1
        rows = inside[positive]
        targets[rows] = encode_boxes(inside_anchors[positive], gt_boxes[match.matched[positive]])
    return labels, targets


def anchor_matcher(cfg: RPNConfig) -> Matcher:
    """The RPN's rule: positive from ``positive_iou``, negative below ``negative_iou``, and each
    gt's best anchor(s) positive."""
    return Matcher(cfg.positive_iou, cfg.negative_iou, allow_low_quality_matches=True)
