"""Anchor labelling and sampling for the RPN (model/rpn/targets.py), cases worked by hand."""
from __future__ import annotations

import torch

from model.anchors import shift_anchors
from model.boxes import box_iou
from model.config import RPNConfig
from model.rpn.targets import label_anchors

# Image 100 x 100 (H x W). Boxes 0-based inclusive, width = x2 - x1 + 1.
GT = torch.tensor([[0.0, 0.0, 9.0, 9.0], [40.0, 0.0, 49.0, 9.0]])
ANCHORS = torch.tensor(
    [
        [0.0, 0.0, 9.0, 9.0],  # a0: IoU(gt0) = 1             -> positive by threshold
        [35.0, 0.0, 44.0, 9.0],  # a1: IoU(gt1) = 50/150 = 1/3  -> positive: gt1's best, tied
        [45.0, 0.0, 54.0, 9.0],  # a2: IoU(gt1) = 50/150 = 1/3  -> positive: gt1's best, tied
        [0.0, 0.0, 9.0, 14.0],  # a3: IoU(gt0) = 100/150 = 2/3 -> ignored (between 0.3 and 0.7)
        [60.0, 60.0, 69.0, 69.0],  # a4: IoU 0                   -> negative
        [0.0, 0.0, 9.0, 39.0],  # a5: IoU(gt0) = 100/400 = 0.25 -> negative
        [-1.0, 0.0, 8.0, 9.0],  # a6: IoU(gt0) = 90/110, but x1 < 0 -> cross-boundary, ignored
        [90.0, 90.0, 100.0, 100.0],  # a7: x2 = W -> cross-boundary, ignored
    ]
)


def test_hand_worked_iou_matrix():
    iou = box_iou(ANCHORS[:6], GT)
    expected = torch.tensor(
        [[1.0, 0.0], [0.0, 1 / 3], [0.0, 1 / 3], [2 / 3, 0.0], [0.0, 0.0], [0.25, 0.0]]
    )
    torch.testing.assert_close(iou, expected)


def test_labels_on_hand_case():
    labels, targets = label_anchors(ANCHORS, GT, 100, 100, RPNConfig())
    assert labels.dtype == torch.int64
    assert labels.tolist() == [1, 1, 1, -1, 0, 0, -1, -1]
    # a0 sits on gt0: zero deltas. a1 centre x 40 -> gt1 centre 45: dx = 5 / 10; a2: -5 / 10.
    expected = torch.zeros(8, 4)
    expected[1, 0] = 0.5
    expected[2, 0] = -0.5
    torch.testing.assert_close(targets, expected)


def test_allowed_border_labels_cross_boundary_anchors():
    labels, targets = label_anchors(ANCHORS, GT, 100, 100, RPNConfig(allowed_border=1))
    # a6 (x1 = -1) now counts: IoU 90/110 >= 0.7 -> positive; a7 (x2 = 100 < 101) IoU 0 -> negative.
    assert labels.tolist() == [1, 1, 1, -1, 0, 0, 1, 0]
    # a6: width 10, centre x 4 -> gt0 centre 5: dx = 0.1, widths equal.
    torch.testing.assert_close(targets[6], torch.tensor([0.1, 0.0, 0.0, 0.0]))


def test_thresholds_follow_config():
    # With positive_iou 0.6, a3 (2/3) becomes positive; with negative_iou 0.2, a5 (0.25) ignored.
    labels, _ = label_anchors(ANCHORS, GT, 100, 100, RPNConfig(positive_iou=0.6, negative_iou=0.2))
    assert labels.tolist() == [1, 1, 1, 1, 0, -1, -1, -1]


def test_best_anchor_overrides_negative_threshold():
    # gt's only overlapping anchor has IoU 0.25 < 0.3: negatives are assigned first, then the
    # gt's best anchor is made positive anyway.
    anchors = torch.tensor([[0.0, 0.0, 9.0, 39.0], [50.0, 50.0, 59.0, 59.0]])
    gt = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    labels, targets = label_anchors(anchors, gt, 100, 100, RPNConfig())
    assert labels.tolist() == [1, 0]
    # anchor centre y 20 (h 40) -> gt centre y 5 (h 10): dy = -15/40, dh = log(1/4).
    torch.testing.assert_close(
        targets[0], torch.tensor([0.0, -0.375, 0.0, float(torch.log(torch.tensor(0.25)))])
    )


def test_gt_without_overlap_makes_zero_iou_anchors_positive():
    # The original's np.where(overlaps == gt_max_overlaps) with gt max = 0: every inside
    # anchor with zero IoU to that gt becomes positive (documented quirk, kept on purpose).
    anchors = torch.tensor([[0.0, 0.0, 9.0, 9.0], [20.0, 20.0, 29.0, 29.0], [0.0, 0.0, 9.0, 19.0]])
    gt = torch.tensor([[0.0, 0.0, 9.0, 9.0], [200.0, 200.0, 209.0, 209.0]])
    labels, _ = label_anchors(anchors, gt, 100, 100, RPNConfig())
    assert labels.tolist() == [1, 1, 1]


def test_no_gt_samples_negatives_only():
    anchors = shift_anchors(torch.tensor([[0.0, 0.0, 15.0, 15.0]]), 20, 20)  # 400 inside
    anchors = torch.cat([anchors, torch.tensor([[-5.0, 0.0, 10.0, 10.0]])])  # one outside
    labels, targets = label_anchors(
        anchors, torch.zeros(0, 4), 320, 320, RPNConfig(), torch.Generator().manual_seed(0)
    )
    assert (labels == 1).sum() == 0
    assert (labels == 0).sum() == 256
    assert labels[-1] == -1
    assert torch.count_nonzero(targets) == 0


def test_all_anchors_outside():
    anchors = torch.tensor([[-10.0, -10.0, 5.0, 5.0]])
    labels, targets = label_anchors(anchors, GT, 100, 100, RPNConfig())
    assert labels.tolist() == [-1]
    assert targets.shape == (1, 4)


def _grid_case(num_positive_gt: int):
    """400 anchors of 16 x 16 on a 20 x 20 grid of a 320 x 320 image; the first
    ``num_positive_gt`` anchors are also gt boxes (IoU 1 -> positive), all others IoU 0."""
    anchors = shift_anchors(torch.tensor([[0.0, 0.0, 15.0, 15.0]]), 20, 20)
    return anchors, anchors[:num_positive_gt].clone()


def test_sampling_caps_positives_and_fills_with_negatives():
    anchors, gt = _grid_case(200)
    labels, targets = label_anchors(anchors, gt, 320, 320, RPNConfig(), torch.Generator().manual_seed(1))
    assert (labels == 1).sum() == 128
    assert (labels == 0).sum() == 128
    assert (labels >= 0).sum() == 256
    assert (labels[200:] == 1).sum() == 0  # positives only among the 200 candidates
    assert (labels[:200] == 0).sum() == 0  # candidates dropped become -1, never negative
    assert torch.count_nonzero(targets[labels != 1]) == 0


def test_sampling_few_positives():
    anchors, gt = _grid_case(10)
    labels, _ = label_anchors(anchors, gt, 320, 320, RPNConfig(), torch.Generator().manual_seed(1))
    assert labels[:10].tolist() == [1] * 10
    assert (labels == 0).sum() == 246


def test_sampling_respects_batch_settings():
    anchors, gt = _grid_case(200)
    cfg = RPNConfig(batch_size_per_image=64, positive_fraction=0.25)
    labels, _ = label_anchors(anchors, gt, 320, 320, cfg, torch.Generator().manual_seed(1))
    assert (labels == 1).sum() == 16
    assert (labels == 0).sum() == 48


def test_sampling_is_deterministic_with_a_seed():
    anchors, gt = _grid_case(200)
    runs = [
        label_anchors(anchors, gt, 320, 320, RPNConfig(), torch.Generator().manual_seed(s))[0]
        for s in (7, 7, 8)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
