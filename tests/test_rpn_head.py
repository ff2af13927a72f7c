"""RPN head: output shapes, initialisation and the channel layout (model/rpn/head.py)."""
from __future__ import annotations

import torch

from model.anchors import generate_anchors, shift_anchors
from model.rpn.head import RPNHead, objectness_probability


def _layout_head(num_anchors: int) -> RPNHead:
    """A head whose hidden map equals its 1-channel input, and whose output channel k is
    hidden + 1000 * k, so every output value names the channel it came from."""
    head = RPNHead(in_channels=1, mid_channels=1, num_anchors=num_anchors)
    with torch.no_grad():
        head.conv.weight.zero_()
        head.conv.weight[0, 0, 1, 1] = 1.0  # 3x3 centre tap: identity
        head.conv.bias.zero_()
        for conv in (head.cls, head.reg):
            conv.weight.fill_(1.0)
            conv.bias.copy_(1000.0 * torch.arange(conv.out_channels, dtype=torch.float32))
    return head


def test_channel_layout_matches_shift_anchors_order():
    a, height, width = 3, 2, 4
    head = _layout_head(a)
    # Distinct positive value per position (ReLU keeps it): v(y, x) = 1 + y * 10 + x.
    v = 1.0 + torch.arange(height)[:, None] * 10.0 + torch.arange(width)[None, :]
    features = v[None, None].float()
    logits, deltas = head(features)
    assert logits.shape == (1, height * width * a, 2)
    assert deltas.shape == (1, height * width * a, 4)
    for y in range(height):
        for x in range(width):
            for anchor in range(a):
                row = (y * width + x) * a + anchor
                for c in range(2):  # cls channel c * A + a (background block, then object)
                    assert logits[0, row, c].item() == v[y, x].item() + 1000.0 * (c * a + anchor)
                for j in range(4):  # reg channel a * 4 + j
                    assert deltas[0, row, j].item() == v[y, x].item() + 1000.0 * (anchor * 4 + j)
    # Hand check: (y=1, x=2, a=2), object column -> channel 1*3 + 2 = 5, v = 13.
    assert logits[0, (1 * width + 2) * a + 2, 1].item() == 5013.0
    # The rows line up with shift_anchors for the same map.
    anchors = shift_anchors(generate_anchors()[:a], height, width)
    assert anchors.shape[0] == logits.shape[1]


def test_batch_rows_are_independent():
    head = _layout_head(2)
    features = torch.stack([torch.ones(1, 3, 3), 2 * torch.ones(1, 3, 3)])
    logits, deltas = head(features)
    assert torch.equal(logits[1] - logits[0], torch.ones_like(logits[0]))
    assert torch.equal(deltas[1] - deltas[0], torch.ones_like(deltas[0]))


def test_initialisation_and_sizes():
    torch.manual_seed(0)
    head = RPNHead(in_channels=64, mid_channels=128, num_anchors=9)
    assert head.conv.weight.shape == (128, 64, 3, 3)
    assert head.conv.padding == (1, 1)
    assert head.cls.weight.shape == (18, 128, 1, 1)
    assert head.reg.weight.shape == (36, 128, 1, 1)
    for conv in (head.conv, head.cls, head.reg):
        assert torch.count_nonzero(conv.bias) == 0
        assert abs(conv.weight.std().item() - 0.01) < 0.002
        assert abs(conv.weight.mean().item()) < 0.002
    logits, deltas = head(torch.randn(1, 64, 5, 6))
    assert logits.shape == (1, 5 * 6 * 9, 2) and deltas.shape == (1, 5 * 6 * 9, 4)


def test_objectness_probability_is_softmax_column_one():
    logits = torch.tensor([[0.0, 0.0], [0.0, 2.0], [3.0, -1.0]])
    probs = objectness_probability(logits)
    expected = torch.tensor([0.5, 1 / (1 + torch.exp(torch.tensor(-2.0))), 1 / (1 + torch.exp(torch.tensor(4.0)))])
    torch.testing.assert_close(probs, expected)
