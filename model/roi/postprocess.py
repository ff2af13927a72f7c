"""Detector outputs -> final detections of one image (py-faster-rcnn's ``test_net``).

Shapes: R RoIs, K foreground classes; class column 0 is the background and is skipped.

Per class j >= 1: decode that class's deltas, clip to the image, keep score >
``score_threshold``, NMS at ``nms_threshold``; then keep the ``max_detections_per_image``
highest scores over all classes, and map boxes back to the original image by dividing
by the input scale. NMS uses the original's +1 (inclusive-pixel) areas: torchvision's
``nms`` measures ``(x2 - x1) * (y2 - y1)``, so it is given ``x2 + 1, y2 + 1``.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from model.boxes import clip_boxes, decode_boxes
from model.config import TestConfig
from model.detections import Detections


def postprocess_detections(
    rois: Tensor,
    class_probs: Tensor,
    box_deltas: Tensor,
    image_height: int,
    image_width: int,
    scale: float,
    cfg: TestConfig,
) -> Detections:
    """Final detections in original-image pixels.

    ``rois`` ``[R, 4]`` input pixels, ``class_probs`` ``[R, K+1]`` (softmax),
    ``box_deltas`` ``[R, 4(K+1)]`` raw (already un-normalised); ``image_height`` /
    ``image_width`` of the network input, ``scale`` = input / original size.
    """
    num_rois, num_cols = class_probs.shape
    if rois.shape != (num_rois, 4) or box_deltas.shape != (num_rois, 4 * num_cols):
        raise ValueError(
            f"expected rois [R, 4], class_probs [R, K+1], box_deltas [R, 4(K+1)]; got "
            f"{tuple(rois.shape)}, {tuple(class_probs.shape)}, {tuple(box_deltas.shape)}"
        )
    num_classes = num_cols - 1
    if num_rois == 0 or num_classes == 0:
        return _empty_like(rois)

    boxes = clip_boxes(decode_boxes(rois, box_deltas), image_height, image_width)
    boxes = boxes.reshape(num_rois, num_cols, 4)[:, 1:].reshape(-1, 4)  # [R*K, 4], RoI-major
    scores = class_probs[:, 1:].reshape(-1)
    labels = torch.arange(1, num_cols, device=rois.device).repeat(num_rois)

    keep = scores > cfg.score_threshold
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    inclusive = boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
    keep = batched_nms(inclusive, scores, labels, cfg.nms_threshold)  # sorted by decreasing score
    if cfg.max_detections_per_image > 0:
        keep = keep[: cfg.max_detections_per_image]
    return Detections(boxes=boxes[keep] / scale, scores=scores[keep], labels=labels[keep])


def _empty_like(rois: Tensor) -> Detections:
    return Detections(
        boxes=rois.new_zeros((0, 4)),
        scores=rois.new_zeros((0,)),
        labels=torch.zeros((0,), dtype=torch.int64, device=rois.device),
    )
