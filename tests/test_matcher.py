"""The shared max-IoU matcher (model/matcher.py) on an IoU matrix worked by hand."""
from __future__ import annotations

import torch

from model.config import RoIConfig, RPNConfig
from model.matcher import Matcher
from model.roi.sampling import roi_matcher
from model.rpn.targets import anchor_matcher

# 4 candidates (rows) x 3 gt boxes (columns).
IOU = torch.tensor(
    [
        [0.90, 0.10, 0.00],  # c0: best g0 at 0.9                       -> over 0.7
        [0.40, 0.50, 0.30],  # c1: best g1 at 0.5; g2's best (0.3)     -> between / low-quality
        [0.05, 0.25, 0.10],  # c2: best g1 at 0.25                      -> under 0.3
        [0.35, 0.50, 0.20],  # c3: best g1 at 0.5, ties c1 for g1's best
    ]
)


def test_thresholds_only():
    match = Matcher(0.7, 0.3)(IOU)
    assert match.matched.tolist() == [0, 1, 1, 1]
    torch.testing.assert_close(match.max_iou, torch.tensor([0.9, 0.5, 0.25, 0.5]))
    assert match.labels.tolist() == [1, -1, 0, -1]


def test_low_quality_matches_take_each_gts_best_ties_included():
    # g0's best is c0, g1's best (0.5) is c1 and c3 (a tie: both), g2's best (0.3) is c1.
    # A low-quality match keeps the candidate's own best gt (c1 -> g1, not g2).
    match = Matcher(0.7, 0.3, allow_low_quality_matches=True)(IOU)
    assert match.labels.tolist() == [1, 1, 0, 1]
    assert match.matched.tolist() == [0, 1, 1, 1]


def test_boundaries_and_background_floor():
    # Foreground from 0.5 inclusive; background in [0.3, 0.5): c2 (0.25) is under the floor.
    match = Matcher(0.5, 0.5, background_floor=0.3)(IOU)
    assert match.labels.tolist() == [1, 1, -1, 1]
    # Background upper bound exclusive: IoU exactly 0.25 is not below 0.25.
    assert Matcher(0.9, 0.25)(IOU).labels.tolist() == [1, -1, -1, -1]


def test_first_gt_wins_ties_in_a_row():
    match = Matcher(0.5, 0.3)(torch.tensor([[0.6, 0.6, 0.1]]))
    assert match.matched.tolist() == [0]


def test_gt_overlapping_nothing_makes_every_zero_iou_candidate_positive():
    # The original's quirk, kept: the gt's best IoU is 0, so every candidate at 0 "is" its best.
    iou = torch.tensor([[0.8, 0.0], [0.0, 0.0], [0.2, 0.0]])
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou).labels.tolist() == [1, 1, 1]


def test_no_gt_and_no_candidate():
    match = Matcher(0.7, 0.3, allow_low_quality_matches=True)(torch.zeros((3, 0)))
    assert match.labels.tolist() == [0, 0, 0] and match.matched.tolist() == [0, 0, 0]
    assert match.max_iou.tolist() == [0.0, 0.0, 0.0]
    empty = Matcher(0.5, 0.5, background_floor=0.1)(torch.zeros((0, 2)))
    assert empty.labels.shape == (0,) and empty.matched.shape == (0,)
    # RoIs with the paper's floor 0.1 and no gt: nothing is background.
    assert Matcher(0.5, 0.5, background_floor=0.1)(torch.zeros((2, 0))).labels.tolist() == [-1, -1]


def test_the_rpn_and_roi_rules_come_from_their_configs():
    assert anchor_matcher(RPNConfig()) == Matcher(0.7, 0.3, allow_low_quality_matches=True)
    assert roi_matcher(RoIConfig(background_iou_low=0.1)) == Matcher(0.5, 0.5, background_floor=0.1)
