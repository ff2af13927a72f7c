"""Reference anchors, shifting and the inside-image mask (model/anchors.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.anchors import anchors_inside, generate_anchors, shift_anchors

PAPER_ANCHORS = [
    [-84, -40, 99, 55],
    [-176, -88, 191, 103],
    [-360, -184, 375, 199],
    [-56, -56, 71, 71],
    [-120, -120, 135, 135],
    [-248, -248, 263, 263],
    [-36, -80, 51, 95],
    [-80, -168, 95, 183],
    [-168, -344, 183, 359],
]


def numpy_reference_anchors(base_size, ratios, scales):
    """py-faster-rcnn's algorithm restated in numpy (float64, np.round = half to even)."""
    side = float(base_size)
    ctr = 0.5 * (side - 1)
    rows = []
    for ratio in ratios:
        w = np.round(np.sqrt(side * side / ratio))
        h = np.round(w * ratio)
        for scale in scales:
            ws, hs = w * scale, h * scale
            rows.append([ctr - 0.5 * (ws - 1), ctr - 0.5 * (hs - 1), ctr + 0.5 * (ws - 1), ctr + 0.5 * (hs - 1)])
    return np.array(rows, dtype=np.float32)


def test_default_anchors_are_the_papers_nine():
    anchors = generate_anchors()
    assert anchors.dtype == torch.float32
    assert anchors.tolist() == PAPER_ANCHORS
    widths = anchors[:, 2] - anchors[:, 0] + 1
    heights = anchors[:, 3] - anchors[:, 1] + 1
    # Ratio-major: the three 1:1 anchors are 128, 256, 512 square.
    assert widths[3:6].tolist() == [128, 256, 512]
    assert heights[3:6].tolist() == [128, 256, 512]
    # Ratio 0.5 at base 16: sqrt(512) = 22.6 -> 23 wide, round(11.5) = 12 high, times 8.
    assert (widths[0].item(), heights[0].item()) == (184, 96)


def test_round_half_to_even_matters():
    # base 5, ratio 0.25: w = sqrt(25 / 0.25) = 10, h = round(2.5) = 2 (half-up would give 3).
    anchor = generate_anchors(5, ratios=(0.25,), scales=(1,))[0]
    assert anchor.tolist() == [-2.5, 1.5, 6.5, 2.5]  # centre 2, w 10, h 2
    # base 9, ratio 0.5: w = round(12.73) = 13, h = round(6.5) = 6 (not 7).
    anchor = generate_anchors(9, ratios=(0.5,), scales=(1,))[0]
    assert (anchor[2] - anchor[0] + 1).item() == 13
    assert (anchor[3] - anchor[1] + 1).item() == 6


@pytest.mark.parametrize(
    "base_size, ratios, scales",
    [
        (16, (0.5, 1.0, 2.0), (8, 16, 32)),
        (8, (0.5, 1.0, 2.0), (2, 4)),
        (9, (0.5, 2.0), (1, 3)),
        (5, (0.25, 0.7, 1.5, 3.0), (1, 3.5)),
        (32, (1 / 3, 1.0, 3.0), (4, 8, 16, 32)),
        (1, (0.16, 1.0), (1, 2)),
    ],
)
def test_anchors_match_numpy_reimplementation(base_size, ratios, scales):
    ours = generate_anchors(base_size, ratios, scales).numpy()
    expected = numpy_reference_anchors(base_size, ratios, scales)
    assert ours.shape == (len(ratios) * len(scales), 4)
    np.testing.assert_array_equal(ours, expected)


def test_generate_anchors_rejects_bad_settings():
    with pytest.raises(ValueError):
        generate_anchors(0)
    with pytest.raises(ValueError):
        generate_anchors(16, ratios=())
    with pytest.raises(ValueError):
        generate_anchors(16, ratios=(-1.0,))


def test_shift_order_is_position_major_anchor_minor():
    reference = torch.tensor([[0.0, 0.0, 15.0, 15.0], [-8.0, -4.0, 23.0, 19.0]])
    anchors = shift_anchors(reference, feature_height=2, feature_width=3, stride=16)
    assert anchors.shape == (2 * 3 * 2, 4)
    for y in range(2):
        for x in range(3):
            for a in range(2):
                shift = torch.tensor([16.0 * x, 16.0 * y, 16.0 * x, 16.0 * y])
                assert torch.equal(anchors[(y * 3 + x) * 2 + a], reference[a] + shift)
    # Hand check: position (y=1, x=2), anchor 1 -> shift (32, 16).
    assert anchors[(1 * 3 + 2) * 2 + 1].tolist() == [24.0, 12.0, 55.0, 35.0]


def test_shift_other_stride_and_empty_map():
    reference = generate_anchors()
    anchors = shift_anchors(reference, 1, 2, stride=8)
    assert torch.equal(anchors[9:], reference + torch.tensor([8.0, 0.0, 8.0, 0.0]))
    assert shift_anchors(reference, 0, 5).shape == (0, 4)


def test_anchors_inside_mask():
    anchors = torch.tensor(
        [
            [0.0, 0.0, 99.0, 49.0],  # touches every edge of a 50 x 100 image: inside
            [-1.0, 0.0, 10.0, 10.0],  # x1 < 0
            [0.0, -1.0, 10.0, 10.0],  # y1 < 0
            [0.0, 0.0, 100.0, 10.0],  # x2 = W
            [0.0, 0.0, 10.0, 50.0],  # y2 = H
            [-6.0, -5.0, 104.0, 54.0],  # 6 px out on the left, 5 on the other sides (x2 < 100 + 5)
        ]
    )
    assert anchors_inside(anchors, 50, 100).tolist() == [True, False, False, False, False, False]
    assert anchors_inside(anchors, 50, 100, allowed_border=5).tolist() == [True] * 5 + [False]
    assert anchors_inside(anchors, 50, 100, allowed_border=6).tolist() == [True] * 6
