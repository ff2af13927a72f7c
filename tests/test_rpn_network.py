"""The assembled RPN (model/rpn/network.py): wiring, losses, caching, no-grad proposals."""
from __future__ import annotations

import pytest
import torch

from model.anchors import generate_anchors, shift_anchors
from model.config import AnchorConfig, ProposalConfig, RPNConfig
from model.rpn import RegionProposalNetwork, RPNOutput, generate_proposals, label_anchors, rpn_loss


def _rpn(**rpn_kwargs) -> RegionProposalNetwork:
    torch.manual_seed(0)
    return RegionProposalNetwork(8, 16, AnchorConfig(), RPNConfig(**rpn_kwargs), stride=16)


def _features(h=10, w=12):
    return torch.randn(1, 8, h, w, generator=torch.Generator().manual_seed(1))


GT = torch.tensor([[20.0, 30.0, 139.0, 149.0], [60.0, 10.0, 179.0, 100.0]])
PCFG = ProposalConfig(pre_nms_top_n=500, post_nms_top_n=50)


def test_forward_with_gt_matches_the_parts():
    rpn = _rpn(allowed_border=1000)  # small image: let all anchors be labelled
    features = _features()
    out = rpn(features, 160, 192, 1.0, PCFG, GT, torch.Generator().manual_seed(5))
    assert isinstance(out, RPNOutput)
    n = 10 * 12 * 9
    assert out.anchors.shape == (n, 4) and out.objectness.shape == (n,) and out.labels.shape == (n,)
    assert torch.equal(out.anchors, shift_anchors(generate_anchors(), 10, 12, 16))

    logits, deltas = rpn.head(features)
    labels, targets = label_anchors(out.anchors, GT, 160, 192, rpn.rpn_cfg, torch.Generator().manual_seed(5))
    assert torch.equal(out.labels, labels)
    expected = rpn_loss(logits[0], deltas[0], labels, targets, sigma=3.0)
    assert set(out.losses) == {"rpn_cls", "rpn_reg"}
    for key in expected:
        torch.testing.assert_close(out.losses[key], expected[key])
    assert (labels == 1).sum() > 0 and (labels >= 0).sum() == 256

    probs = torch.softmax(logits[0], dim=1)[:, 1]
    torch.testing.assert_close(out.objectness, probs.detach())
    boxes, scores = generate_proposals(out.anchors, probs.detach(), deltas[0].detach(), 160, 192, 1.0, PCFG)
    assert torch.equal(out.proposals, boxes) and torch.equal(out.scores, scores)
    assert 0 < out.proposals.shape[0] <= 50
    assert out.proposals[:, [0, 2]].max() <= 191 and out.proposals[:, [1, 3]].max() <= 159


def test_losses_backpropagate_but_proposals_do_not():
    rpn = _rpn(allowed_border=1000)
    out = rpn(_features(), 160, 192, 1.0, PCFG, GT, torch.Generator().manual_seed(0))
    assert not out.proposals.requires_grad and not out.scores.requires_grad
    (out.losses["rpn_cls"] + out.losses["rpn_reg"]).backward()
    for name, param in rpn.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert rpn.head.reg.weight.grad.abs().sum() > 0


def test_without_gt_no_losses():
    out = _rpn()(_features(), 160, 192, 1.0, PCFG)
    assert out.losses == {} and out.labels is None
    assert out.proposals.shape[1] == 4 and out.scores.shape[0] == out.proposals.shape[0]
    assert torch.all(out.scores[:-1] >= out.scores[1:])  # score ranking


def test_default_border_ignores_cross_boundary_anchors():
    out = _rpn()(_features(), 160, 192, 1.0, PCFG, GT, torch.Generator().manual_seed(0))
    inside = (out.anchors[:, 0] >= 0) & (out.anchors[:, 1] >= 0) & (out.anchors[:, 2] < 192) & (out.anchors[:, 3] < 160)
    assert (out.labels[~inside] == -1).all()
    assert (out.labels[inside] >= 0).any()


def test_anchor_cache_and_buffer():
    rpn = _rpn()
    first = rpn.anchors_for(10, 12)
    assert rpn.anchors_for(10, 12) is first
    assert rpn.anchors_for(3, 4).shape == (3 * 4 * 9, 4)
    assert rpn.num_anchors == 9
    assert torch.equal(rpn.reference_anchors, generate_anchors())
    keys = set(rpn.state_dict())
    assert "reference_anchors" not in keys
    assert keys == {f"head.{layer}.{p}" for layer in ("conv", "cls", "reg") for p in ("weight", "bias")}


def test_other_anchor_config():
    cfg = AnchorConfig(base_size=8, ratios=(1.0,), scales=(2.0, 4.0))
    rpn = RegionProposalNetwork(8, 4, cfg, RPNConfig(), stride=8)
    out = rpn(_features(4, 5), 32, 40, 1.0, ProposalConfig(min_size=0.0))
    assert out.anchors.shape == (4 * 5 * 2, 4)
    assert rpn.head.cls.out_channels == 4 and rpn.head.reg.out_channels == 8
    assert out.anchors[2].tolist() == [8.0 - 4.0, -4.0, 8.0 + 11.0, 11.0]  # (y0, x1), scale 2


def test_rejects_batches():
    with pytest.raises(ValueError, match="one image"):
        _rpn()(torch.zeros(2, 8, 4, 4), 64, 64, 1.0, PCFG)
