"""Proposal generation (model/rpn/proposals.py): order, filters, NMS and the ablations."""
from __future__ import annotations

import math

import pytest
import torch

from model.config import ProposalConfig
from model.rpn.proposals import generate_proposals

# Image 200 x 200. Zero deltas, so the boxes are the anchors themselves.
BOXES = torch.tensor(
    [
        [0.0, 0.0, 19.0, 19.0],  # b0 score .9
        [1.0, 0.0, 20.0, 19.0],  # b1 score .8: IoU(b0) = 380 / 420 = 0.905 -> suppressed by b0
        [50.0, 50.0, 69.0, 69.0],  # b2 score .95: best
        [0.0, 0.0, 9.0, 9.0],  # b3 score .5: 10 wide, below min size 16
        [100.0, 100.0, 119.0, 119.0],  # b4 score .7
    ]
)
SCORES = torch.tensor([0.9, 0.8, 0.95, 0.5, 0.7])
ZERO = torch.zeros(5, 4)


def _cfg(**kwargs) -> ProposalConfig:
    base = dict(pre_nms_top_n=-1, post_nms_top_n=-1, nms_threshold=0.7, min_size=16.0)
    base.update(kwargs)
    return ProposalConfig(**base)


def _run(cfg, scale=1.0, boxes=BOXES, scores=SCORES, deltas=ZERO, generator=None, size=(200, 200)):
    return generate_proposals(boxes, scores, deltas, size[0], size[1], scale, cfg, generator)


def test_nms_and_min_size_and_order():
    boxes, scores = _run(_cfg())
    assert boxes.tolist() == BOXES[[2, 0, 4]].tolist()
    assert scores.tolist() == SCORES[[2, 0, 4]].tolist()


def test_without_nms():
    boxes, scores = _run(_cfg(use_nms=False))
    assert boxes.tolist() == BOXES[[2, 0, 1, 4]].tolist()
    assert scores.tolist() == SCORES[[2, 0, 1, 4]].tolist()


def test_min_size_is_scaled():
    # scale 0.5 -> threshold 8 px: the 10 px box b3 stays.
    boxes, _ = _run(_cfg(), scale=0.5)
    assert boxes.tolist() == BOXES[[2, 0, 4, 3]].tolist()
    # scale 1.25 -> 20 px: every 20 px box passes (w >= 20), nothing smaller.
    boxes, _ = _run(_cfg(), scale=1.25)
    assert boxes.tolist() == BOXES[[2, 0, 4]].tolist()
    boxes, _ = _run(_cfg(), scale=1.3)
    assert boxes.shape == (0, 4)


def test_pre_nms_top_n_comes_before_nms():
    # Top 3 by score: b2, b0, b1; NMS drops b1; b4 never entered.
    boxes, _ = _run(_cfg(pre_nms_top_n=3))
    assert boxes.tolist() == BOXES[[2, 0]].tolist()


def test_post_nms_top_n():
    boxes, scores = _run(_cfg(post_nms_top_n=2))
    assert boxes.tolist() == BOXES[[2, 0]].tolist()
    assert scores.tolist() == SCORES[[2, 0]].tolist()


def test_nms_uses_plus_one_iou():
    # [0,0,9,9] vs [5,0,14,9]: +1 IoU = 50 / 150 = 1/3; without +1 it would be 36 / 126 = 0.286.
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [5.0, 0.0, 14.0, 9.0]])
    scores = torch.tensor([0.9, 0.8])
    out, _ = _run(_cfg(min_size=0.0, nms_threshold=0.3), boxes=boxes, scores=scores, deltas=torch.zeros(2, 4))
    assert out.tolist() == [[0.0, 0.0, 9.0, 9.0]]
    out, _ = _run(_cfg(min_size=0.0, nms_threshold=0.34), boxes=boxes, scores=scores, deltas=torch.zeros(2, 4))
    assert out.shape[0] == 2


def test_equal_scores_keep_anchor_order():
    boxes = torch.tensor([[0.0, 0.0, 19.0, 19.0], [40.0, 0.0, 59.0, 19.0], [80.0, 0.0, 99.0, 19.0]])
    out, _ = _run(_cfg(), boxes=boxes, scores=torch.full((3,), 0.5), deltas=torch.zeros(3, 4))
    assert out.tolist() == boxes.tolist()


def test_decoding_and_clipping():
    anchors = torch.tensor([[0.0, 0.0, 19.0, 19.0], [-10.0, 150.0, 29.0, 249.0]])
    deltas = torch.tensor([[0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # Anchor 0: width 20, dx 0.5 -> shifted 10 px. Anchor 1 clipped to the 200 x 200 image.
    boxes, scores = _run(_cfg(), boxes=anchors, scores=torch.tensor([0.9, 0.1]), deltas=deltas)
    assert boxes.tolist() == [[10.0, 0.0, 29.0, 19.0], [0.0, 150.0, 29.0, 199.0]]
    # dw = ln 2 doubles the width about the centre.
    deltas = torch.tensor([[0.0, 0.0, math.log(2.0), 0.0]])
    boxes, _ = _run(_cfg(), boxes=anchors[:1], scores=torch.tensor([0.9]), deltas=deltas)
    # centre x 10, width 40 -> x1 = 10 - 20 = -10 -> clipped 0, x2 = 10 + 20 - 1 = 29.
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 0.0, 29.0, 19.0]]))


def test_no_regression_returns_clipped_anchors():
    anchors = torch.tensor([[-10.0, -10.0, 29.0, 29.0], [50.0, 50.0, 89.0, 89.0]])
    deltas = torch.full((2, 4), 0.7)  # would move the boxes if used
    boxes, scores = _run(
        _cfg(use_regression=False), boxes=anchors, scores=torch.tensor([0.2, 0.6]), deltas=deltas
    )
    assert boxes.tolist() == [[50.0, 50.0, 89.0, 89.0], [0.0, 0.0, 29.0, 29.0]]
    assert scores.tolist() == pytest.approx([0.6, 0.2])


def _many_boxes(n=60):
    x = torch.arange(n, dtype=torch.float32) * 30.0
    boxes = torch.stack([x, torch.zeros(n), x + 19.0, torch.full((n,), 19.0)], dim=1)
    scores = torch.linspace(0.99, 0.01, n)
    return boxes, scores


def test_random_ranking_is_seeded_and_ignores_scores():
    boxes, scores = _many_boxes()
    cfg = _cfg(ranking="random", post_nms_top_n=20)
    size = (40, 60 * 30)
    run = lambda seed: _run(cfg, boxes=boxes, scores=scores, deltas=torch.zeros(60, 4),
                            generator=torch.Generator().manual_seed(seed), size=size)
    b1, s1 = run(3)
    b2, s2 = run(3)
    b3, _ = run(4)
    assert torch.equal(b1, b2) and torch.equal(s1, s2)
    assert not torch.equal(b1, b3)
    assert b1.shape == (20, 4)
    # Not the score order, and scores still belong to their boxes.
    assert not torch.equal(b1, boxes[:20])
    index = (b1[:, 0] / 30.0).long()
    assert torch.equal(s1, scores[index])


def test_random_ranking_drives_nms_order():
    # Two heavily overlapping boxes: whichever comes first in the random order survives.
    boxes = torch.tensor([[0.0, 0.0, 19.0, 19.0], [1.0, 0.0, 20.0, 19.0]])
    cfg = _cfg(ranking="random")
    survivors = set()
    for seed in range(20):
        out, _ = _run(cfg, boxes=boxes, scores=torch.tensor([0.9, 0.1]), deltas=torch.zeros(2, 4),
                      generator=torch.Generator().manual_seed(seed))
        assert out.shape[0] == 1
        survivors.add(out[0, 0].item())
    assert survivors == {0.0, 1.0}


def test_bad_ranking_and_empty_input():
    with pytest.raises(ValueError):
        _run(_cfg(ranking="best"))
    boxes, scores = _run(_cfg(), boxes=torch.zeros(0, 4), scores=torch.zeros(0), deltas=torch.zeros(0, 4))
    assert boxes.shape == (0, 4) and scores.shape == (0,)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("prefix", [None, 7, 64])
def test_nms_first_is_torchvisions_first_boxes(threshold: float, prefix: int | None):
    """NMS over growing prefixes keeps exactly what full NMS keeps first, in clusters of
    near-duplicates (many suppressions) and in spread-out boxes (few)."""
    from torchvision.ops import nms

    from model.rpn.nms import nms_first

    g = torch.Generator().manual_seed(int(threshold * 10) + (prefix or 0))
    centres = torch.rand(40, 2, generator=g) * 500
    clustered = centres.repeat(30, 1) + torch.randn(1200, 2, generator=g) * 6
    spread = torch.rand(800, 2, generator=g) * 500
    for xy in (clustered, spread):
        wh = torch.rand(xy.shape[0], 2, generator=g) * 120 + 8
        boxes = torch.cat([xy, xy + wh], 1)
        boxes = boxes[torch.randperm(boxes.shape[0], generator=g)]
        full = nms(boxes, torch.arange(boxes.shape[0], 0, -1, dtype=torch.float32), threshold)
        for limit in (1, 50, full.numel(), full.numel() + 10):
            assert torch.equal(nms_first(boxes, threshold, limit, prefix), full[:limit])
    assert nms_first(torch.zeros((0, 4)), 0.7, 5).numel() == 0
    with pytest.raises(ValueError, match="positive limit"):
        nms_first(boxes, 0.7, 0)
