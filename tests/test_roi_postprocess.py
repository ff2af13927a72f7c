"""Turning detector outputs into detections: threshold, class-wise NMS, top-k, scale back."""
from __future__ import annotations

import torch

from model.config import TestConfig as PostprocessConfig  # "Test*" names would be collected by pytest
from model.roi import postprocess_detections

ROIS = torch.tensor([
    [0.0, 0.0, 19.0, 19.0],    # r0
    [1.0, 1.0, 20.0, 20.0],    # r1: IoU with r0 = 361 / 439 = 0.82
    [40.0, 40.0, 59.0, 59.0],  # r2: far away
])
PROBS = torch.tensor([
    [0.10, 0.70, 0.20],
    [0.15, 0.60, 0.25],
    [0.90, 0.04, 0.06],
])


def test_threshold_classwise_nms_and_scale_back():
    dets = postprocess_detections(ROIS, PROBS, torch.zeros(3, 12), 100, 100, 2.0, PostprocessConfig())
    # class 1: r0 0.70 kept, r1 0.60 suppressed by r0, r2 0.04 below 0.05
    # class 2: r1 0.25 kept, r0 0.20 suppressed by r1, r2 0.06 kept
    # r0 (class 1) and r1 (class 2) overlap but NMS is per class: both stay
    assert dets.labels.tolist() == [1, 2, 2]
    assert torch.allclose(dets.scores, torch.tensor([0.70, 0.25, 0.06]))
    assert torch.allclose(dets.boxes, torch.stack([ROIS[0], ROIS[1], ROIS[2]]) / 2.0)
    assert dets.labels.dtype == torch.int64


def test_cap_on_detections_per_image_keeps_highest_scores():
    dets = postprocess_detections(ROIS, PROBS, torch.zeros(3, 12), 100, 100, 1.0,
                                  PostprocessConfig(max_detections_per_image=2))
    assert dets.scores.tolist() == [0.699999988079071, 0.25] and dets.labels.tolist() == [1, 2]


def test_score_threshold_is_strict_and_configurable():
    dets = postprocess_detections(ROIS, PROBS, torch.zeros(3, 12), 100, 100, 1.0, PostprocessConfig(score_threshold=0.25))
    assert dets.scores.tolist() == [0.699999988079071]  # 0.25 is not > 0.25


def test_nms_uses_inclusive_pixel_areas():
    rois = torch.tensor([[0.0, 0.0, 9.0, 9.0], [5.0, 0.0, 14.0, 9.0]])
    probs = torch.tensor([[0.1, 0.9], [0.2, 0.8]])
    # +1 convention: overlap 5 x 10 = 50, union 150 -> IoU 0.333 > 0.3: suppressed.
    # (x2 - x1) areas would give 36 / 126 = 0.286 and keep both.
    dets = postprocess_detections(rois, probs, torch.zeros(2, 8), 50, 50, 1.0, PostprocessConfig())
    assert len(dets) == 1 and dets.scores.item() == 0.8999999761581421


def test_each_class_uses_its_own_deltas_and_boxes_are_clipped():
    rois = torch.tensor([[10.0, 10.0, 29.0, 29.0]])  # 20 x 20, centre (20, 20)
    probs = torch.tensor([[0.0, 0.5, 0.5]])
    deltas = torch.zeros(1, 12)
    deltas[0, 4] = 0.5   # class 1: shift right by 10 px
    deltas[0, 8] = 2.0   # class 2: shift right by 40 px -> beyond a 45 px wide image
    dets = postprocess_detections(rois, probs, deltas, 40, 45, 1.0, PostprocessConfig())
    by_label = {int(label): box.tolist() for label, box in zip(dets.labels, dets.boxes)}
    assert by_label[1] == [20.0, 10.0, 39.0, 29.0]
    assert by_label[2] == [44.0, 10.0, 44.0, 29.0]  # x clipped to width - 1


def test_no_rois_or_nothing_above_threshold_gives_empty_detections():
    empty = postprocess_detections(torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0, 12), 10, 10, 1.0, PostprocessConfig())
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)
    low = postprocess_detections(ROIS, torch.tensor([[1.0, 0.0, 0.0]]).repeat(3, 1), torch.zeros(3, 12), 100, 100,
                                 1.0, PostprocessConfig())
    assert len(low) == 0
