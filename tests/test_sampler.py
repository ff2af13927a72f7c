"""The shared balanced foreground/background sampler (model/sampler.py)."""
from __future__ import annotations

import pytest
import torch

from model.sampler import BalancedSampler, roi_sampler, rpn_sampler

# 5 foreground (0, 2, 4, 6, 8), 11 background (1, 3, 5, 7, 9..15), 2 neither.
LABELS = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, -1, -1])


def test_quota_capped_subset_without_replacement():
    fg, bg = BalancedSampler(8, 2)(LABELS, torch.Generator().manual_seed(0))
    assert fg.numel() == 2 and bg.numel() == 6
    assert set(fg.tolist()) <= {0, 2, 4, 6, 8} and len(set(fg.tolist())) == 2
    assert set(bg.tolist()) <= set(torch.nonzero(LABELS == 0).squeeze(1).tolist()) and len(set(bg.tolist())) == 6


def test_background_fills_what_foreground_leaves():
    fg, bg = BalancedSampler(8, 6)(LABELS, torch.Generator().manual_seed(0))
    assert fg.numel() == 5 and bg.numel() == 3  # only 5 foreground exist


def test_no_draw_under_quota_without_shuffle():
    generator = torch.Generator().manual_seed(3)
    before = generator.get_state()
    fg, bg = BalancedSampler(100, 50)(LABELS, generator)
    assert fg.tolist() == [0, 2, 4, 6, 8]  # index order, nothing drawn
    assert bg.tolist() == torch.nonzero(LABELS == 0).squeeze(1).tolist()
    assert torch.equal(generator.get_state(), before)


def test_shuffle_always_draws_a_random_order():
    generator = torch.Generator().manual_seed(3)
    fg, _ = BalancedSampler(100, 50, shuffle=True)(LABELS, generator)
    assert sorted(fg.tolist()) == [0, 2, 4, 6, 8]
    expected = torch.tensor([0, 2, 4, 6, 8])[torch.randperm(5, generator=torch.Generator().manual_seed(3))]
    assert fg.tolist() == expected.tolist()


def test_same_seed_same_sample():
    a = BalancedSampler(6, 3)(LABELS, torch.Generator().manual_seed(11))
    b = BalancedSampler(6, 3)(LABELS, torch.Generator().manual_seed(11))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_quota_rounding_of_the_two_layers():
    # 0.3 x 5 = 1.5: the RPN truncates (1), the RoI layer rounds half to even (2).
    assert rpn_sampler(5, 0.3).max_foreground == 1
    assert roi_sampler(5, 0.3).max_foreground == 2
    assert roi_sampler(5, 0.5).max_foreground == 2  # round(2.5) = 2
    assert rpn_sampler(256, 0.5) == BalancedSampler(256, 128, shuffle=False)
    assert roi_sampler(64, 0.25) == BalancedSampler(64, 16, shuffle=True)


def test_refuses_a_quota_over_the_batch():
    with pytest.raises(ValueError, match="max_foreground"):
        BalancedSampler(4, 5)
