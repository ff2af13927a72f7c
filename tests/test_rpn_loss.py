"""RPN loss (model/rpn/loss.py): hand-computed values and normalisation."""
from __future__ import annotations

import math

import torch

from model.boxes import smooth_l1
from model.rpn.loss import rpn_loss


def test_hand_case_values():
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, -5.0]])
    deltas = torch.tensor([[9.0, 9.0, 9.0, 9.0], [0.5, 0.1, 0.0, 0.0], [7.0, 7.0, 7.0, 7.0]])
    targets = torch.zeros(3, 4)
    labels = torch.tensor([0, 1, -1])  # third anchor ignored: its huge logits/deltas must not count
    losses = rpn_loss(logits, deltas, labels, targets, sigma=3.0)
    assert set(losses) == {"rpn_cls", "rpn_reg"}
    # CE of [0, 0] is ln 2 for either label.
    torch.testing.assert_close(losses["rpn_cls"], torch.tensor(math.log(2.0)))
    # sigma 3: |0.5| >= 1/9 -> 0.5 - 0.5/9; |0.1| < 1/9 -> 0.5 * 9 * 0.01 = 0.045.
    # Only the positive counts (the negative's deltas 9 are ignored); divided by 2 sampled.
    expected_reg = ((0.5 - 0.5 / 9) + 0.045) / 2
    torch.testing.assert_close(losses["rpn_reg"], torch.tensor(expected_reg))


def test_perfect_predictions_give_near_zero_loss():
    labels = torch.tensor([1, 0, 1, 0, -1])
    logits = torch.where(labels[:, None] == 1, torch.tensor([-20.0, 20.0]), torch.tensor([20.0, -20.0]))
    targets = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    losses = rpn_loss(logits, targets.clone(), labels, targets)
    assert losses["rpn_cls"].item() < 1e-6
    assert losses["rpn_reg"].item() == 0.0


def test_reg_is_normalised_by_sampled_count_not_positives():
    # One positive with a linear-region error of 1, plus 3 negatives: 4 sampled.
    logits = torch.zeros(4, 2)
    deltas = torch.zeros(4, 4)
    deltas[0, 0] = 1.0
    labels = torch.tensor([1, 0, 0, 0])
    reg = rpn_loss(logits, deltas, labels, torch.zeros(4, 4))["rpn_reg"]
    torch.testing.assert_close(reg, torch.tensor((1.0 - 0.5 / 9) / 4))


def test_smooth_l1_sigma_three_transition():
    sigma = 3.0
    knee = 1.0 / sigma**2
    diffs = torch.tensor([0.0, 0.05, knee, 0.5, -2.0])
    values = smooth_l1(diffs, torch.zeros_like(diffs), sigma)
    expected = torch.tensor([0.0, 0.5 * 9 * 0.0025, knee - 0.5 / 9, 0.5 - 0.5 / 9, 2.0 - 0.5 / 9])
    torch.testing.assert_close(values, expected)
    # Continuous at the knee: both branches give 0.5 / sigma^2.
    torch.testing.assert_close(values[2], torch.tensor(0.5 / 9))


def test_no_sampled_anchor_gives_zero_and_backpropagates():
    logits = torch.randn(6, 2, requires_grad=True)
    deltas = torch.randn(6, 4, requires_grad=True)
    losses = rpn_loss(logits, deltas, torch.full((6,), -1), torch.zeros(6, 4))
    assert losses["rpn_cls"].item() == 0.0 and losses["rpn_reg"].item() == 0.0
    (losses["rpn_cls"] + losses["rpn_reg"]).backward()
    assert torch.count_nonzero(logits.grad) == 0
    assert torch.count_nonzero(deltas.grad) == 0


def test_no_positive_gives_zero_reg_and_finite_cls():
    logits = torch.tensor([[1.0, 0.0], [0.0, 0.0]], requires_grad=True)
    deltas = torch.ones(2, 4, requires_grad=True)
    losses = rpn_loss(logits, deltas, torch.tensor([0, 0]), torch.zeros(2, 4))
    assert losses["rpn_reg"].item() == 0.0
    expected = (math.log(1 + math.exp(-1.0)) + math.log(2.0)) / 2
    torch.testing.assert_close(losses["rpn_cls"], torch.tensor(expected))
    (losses["rpn_cls"] + losses["rpn_reg"]).backward()
    assert torch.isfinite(logits.grad).all() and torch.count_nonzero(deltas.grad) == 0
