"""Fast R-CNN loss against values worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from model.roi import detector_loss


def test_uniform_logits_cost_log_of_class_count():
    logits = torch.zeros(5, 4)  # K = 3 -> 4 outputs
    labels = torch.tensor([0, 1, 2, 3, 0])
    losses = detector_loss(logits, torch.zeros(5, 16), labels, torch.zeros(5, 4))
    assert math.isclose(losses["det_cls"].item(), math.log(4), rel_tol=1e-6)
    assert losses["det_reg"].item() == 0.0
    assert set(losses) == {"det_cls", "det_reg"}


def test_perfect_prediction_costs_nothing():
    labels = torch.tensor([1, 0, 2])
    logits = torch.full((3, 3), -50.0)
    logits[torch.arange(3), labels] = 50.0
    targets = torch.tensor([[0.5, -1.0, 2.0, 0.1], [0.0, 0.0, 0.0, 0.0], [-3.0, 0.2, 0.0, 1.0]])
    deltas = torch.randn(3, 12)  # other classes' columns must not matter
    deltas[0, 4:8] = targets[0]
    deltas[2, 8:12] = targets[2]
    losses = detector_loss(logits, deltas, labels, targets)
    assert losses["det_cls"].item() < 1e-6 and losses["det_reg"].item() == 0.0


def test_regression_only_on_own_class_of_foreground_rows_divided_by_all_rois():
    labels = torch.tensor([2, 0, 0, 1])  # R = 4
    targets = torch.zeros(4, 4)
    targets[0] = torch.tensor([1.0, 1.0, 1.0, 1.0])
    deltas = torch.full((4, 12), 7.0)  # background rows and other classes: ignored
    deltas[0, 8:12] = targets[0] + torch.tensor([0.5, 2.0, 0.0, 0.0])
    deltas[3, 4:8] = torch.tensor([0.0, 0.0, 0.0, -0.2])
    logits = torch.zeros(4, 3)
    # sigma 1: 0.5 -> 0.5 * 0.25 = 0.125; 2.0 -> 2.0 - 0.5 = 1.5; 0.2 -> 0.5 * 0.04 = 0.02
    expected = (0.125 + 1.5 + 0.02) / 4
    assert math.isclose(detector_loss(logits, deltas, labels, targets)["det_reg"].item(), expected, rel_tol=1e-6)
    # sigma 3: quadratic only below 1/9: 0.5 -> 0.5 - 0.5/9; 2.0 -> 2.0 - 0.5/9; 0.2 -> 0.2 - 0.5/9
    expected3 = (0.5 + 2.0 + 0.2 - 3 * 0.5 / 9) / 4
    got3 = detector_loss(logits, deltas, labels, targets, sigma=3.0)["det_reg"].item()
    assert math.isclose(got3, expected3, rel_tol=1e-6)


def test_gradients_reach_only_the_labelled_columns():
    labels = torch.tensor([1, 0])
    deltas = torch.zeros(2, 8, requires_grad=True)
    targets = torch.tensor([[0.3, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    detector_loss(torch.zeros(2, 2), deltas, labels, targets)["det_reg"].backward()
    nonzero = deltas.grad.nonzero().tolist()
    assert nonzero == [[0, 4]]


def test_no_rois_gives_zeros_that_backpropagate():
    logits = torch.zeros(0, 3, requires_grad=True)
    deltas = torch.zeros(0, 12, requires_grad=True)
    losses = detector_loss(logits, deltas, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4))
    assert losses["det_cls"].item() == 0.0 and losses["det_reg"].item() == 0.0
    (losses["det_cls"] + losses["det_reg"]).backward()


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="box_deltas"):
        detector_loss(torch.zeros(2, 3), torch.zeros(2, 8), torch.zeros(2, dtype=torch.int64), torch.zeros(2, 4))
