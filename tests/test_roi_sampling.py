"""RoI sampling for the Fast R-CNN detector, on cases worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from model.config import RoIConfig
from model.roi import sample_rois

GT = torch.tensor([[0.0, 0.0, 9.0, 9.0]])  # 10 x 10 = 100 pixels
GT_LABELS = torch.tensor([2])
# IoU with GT under the +1 convention, worked by hand:
PROPOSALS = torch.tensor([
    [0.0, 0.0, 9.0, 9.0],     # 0: identical -> 1.0
    [0.0, 0.0, 9.0, 19.0],    # 1: 100 / 200 = 0.5 exactly
    [0.0, 0.0, 9.0, 20.0],    # 2: 100 / 210 = 0.476
    [0.0, 0.0, 19.0, 19.0],   # 3: 100 / 400 = 0.25 exactly
    [20.0, 20.0, 29.0, 29.0], # 4: disjoint -> 0
    [0.0, 0.0, 9.0, 4.0],     # 5: 50 / 100 = 0.5 exactly
])


def _rows(rois: torch.Tensor) -> list[list[float]]:
    return sorted(rois.tolist())


def test_hand_case_default_config_counts_labels_and_gt_included():
    sample = sample_rois(PROPOSALS, GT, GT_LABELS, RoIConfig(), torch.Generator().manual_seed(0))
    # fg (IoU >= 0.5, inclusive): proposals 0, 1, 5 and the appended gt box; bg [0, 0.5): 2, 3, 4
    assert sample.num_foreground == 4 and sample.num_background == 3
    assert sample.labels.tolist() == [2, 2, 2, 2, 0, 0, 0]  # foreground rows first
    fg_rows = _rows(sample.rois[:4])
    assert fg_rows == _rows(torch.cat([PROPOSALS[[0, 1, 5]], GT]))
    assert _rows(sample.rois[4:]) == _rows(PROPOSALS[[2, 3, 4]])
    assert not sample.is_empty


def test_targets_are_encoded_for_foreground_and_zero_for_background():
    sample = sample_rois(PROPOSALS, GT, GT_LABELS, RoIConfig(), torch.Generator().manual_seed(0))
    for roi, label, target in zip(sample.rois.tolist(), sample.labels.tolist(), sample.targets):
        if roi == [0.0, 0.0, 9.0, 19.0]:
            # 10 x 20 box centred (5, 10) -> gt 10 x 10 centred (5, 5): dy = -5 / 20, dh = log(1/2)
            assert torch.allclose(target, torch.tensor([0.0, -0.25, 0.0, math.log(0.5)]))
        elif roi == [0.0, 0.0, 9.0, 9.0]:
            assert torch.equal(target, torch.zeros(4))
        if label == 0:
            assert torch.equal(target, torch.zeros(4))


def test_background_range_is_inclusive_below_exclusive_above():
    cfg = RoIConfig(foreground_iou=0.9, background_iou_low=0.25, background_iou_high=0.5)
    sample = sample_rois(PROPOSALS, GT, GT_LABELS, cfg, torch.Generator().manual_seed(0))
    # fg: IoU 1.0 (proposal 0 and the gt); bg: 0.476 (2) and exactly 0.25 (3);
    # 0.5 (1 and 5) is neither fg (< 0.9) nor bg (not < 0.5); 0 (4) is below 0.25
    assert sample.num_foreground == 2
    assert _rows(sample.rois[2:]) == _rows(PROPOSALS[[2, 3]])


def test_foreground_quota_and_batch_fill():
    fg_like = GT.repeat(40, 1)
    bg_like = torch.tensor([[100.0, 100.0, 109.0, 109.0]]).repeat(100, 1)
    proposals = torch.cat([fg_like, bg_like])
    sample = sample_rois(proposals, GT, GT_LABELS, RoIConfig(), torch.Generator().manual_seed(1))
    # 64 per image, 25 % -> 16 fg out of 41, the rest (48) bg out of 100
    assert (sample.num_foreground, sample.num_background) == (16, 48)
    # round half to even as numpy: 0.25 * 10 = 2.5 -> 2 fg, then 8 bg
    small = sample_rois(proposals, GT, GT_LABELS, RoIConfig(batch_size_per_image=10), torch.Generator().manual_seed(1))
    assert (small.num_foreground, small.num_background) == (2, 8)


def test_short_of_candidates_gives_fewer_rois():
    sample = sample_rois(PROPOSALS[:1], GT, GT_LABELS, RoIConfig(), torch.Generator().manual_seed(0))
    assert sample.rois.shape == (2, 4) and sample.labels.tolist() == [2, 2]


def test_seeded_sampling_is_deterministic_and_seed_dependent():
    proposals = torch.cat([GT.repeat(40, 1) + torch.arange(40.0)[:, None] * 0.01,
                           torch.tensor([[100.0, 100.0, 109.0, 109.0]]) + torch.arange(100.0)[:, None]])
    a = sample_rois(proposals, GT, GT_LABELS, RoIConfig(), torch.Generator().manual_seed(7))
    b = sample_rois(proposals, GT, GT_LABELS, RoIConfig(), torch.Generator().manual_seed(7))
    c = sample_rois(proposals, GT, GT_LABELS, RoIConfig(), torch.Generator().manual_seed(8))
    assert torch.equal(a.rois, b.rois) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.rois, c.rois)
    # every chosen RoI appears once: sampling is without replacement
    assert len(set(map(tuple, a.rois.tolist()))) == a.rois.shape[0]


def test_each_roi_takes_the_label_of_its_best_gt():
    gt = torch.tensor([[0.0, 0.0, 9.0, 9.0], [5.0, 0.0, 14.0, 9.0]])
    labels = torch.tensor([1, 3])
    proposals = torch.tensor([[4.0, 0.0, 13.0, 9.0]])  # IoU 60/140 with gt 0, 90/110 with gt 1
    sample = sample_rois(proposals, gt, labels, RoIConfig(), torch.Generator().manual_seed(0))
    row = sample.rois.tolist().index([4.0, 0.0, 13.0, 9.0])
    assert sample.labels[row] == 3
    assert torch.allclose(sample.targets[row], torch.tensor([0.1, 0.0, 0.0, 0.0]))


def test_no_gt_boxes_everything_is_background_candidate():
    sample = sample_rois(PROPOSALS, torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64), RoIConfig())
    assert sample.num_foreground == 0 and sample.num_background == 6
    assert sample.labels.tolist() == [0] * 6 and torch.equal(sample.targets, torch.zeros(6, 4))
    # with the Fast R-CNN paper's lower bound 0.1, IoU 0 is not background: nothing to train on
    paper = sample_rois(PROPOSALS, torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64),
                        RoIConfig(background_iou_low=0.1))
    assert paper.is_empty


def test_empty_inputs():
    empty = sample_rois(torch.zeros((0, 4)), torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64), RoIConfig())
    assert empty.is_empty and empty.rois.shape == (0, 4) and empty.labels.shape == (0,)
    only_gt = sample_rois(torch.zeros((0, 4)), GT, GT_LABELS, RoIConfig())
    assert only_gt.labels.tolist() == [2] and torch.equal(only_gt.rois, GT)


def test_bad_shapes_and_labels_are_rejected():
    with pytest.raises(ValueError, match="proposals"):
        sample_rois(torch.zeros(3), GT, GT_LABELS, RoIConfig())
    with pytest.raises(ValueError, match="gt_labels"):
        sample_rois(PROPOSALS, GT, torch.tensor([1, 2]), RoIConfig())
    with pytest.raises(ValueError, match="1..K"):
        sample_rois(PROPOSALS, GT, torch.tensor([0]), RoIConfig())
