"""Box arithmetic under the +1 (inclusive pixel) convention, checked by hand."""
import math

import torch

from model.boxes import box_areas, box_iou, clip_boxes, decode_boxes, encode_boxes, smooth_l1


def test_area_counts_pixels_inclusively():
    # A box from pixel 0 to pixel 9 covers 10 pixels per side.
    assert box_areas(torch.tensor([[0.0, 0.0, 9.0, 9.0]])).item() == 100.0


def test_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    b = torch.tensor([[5.0, 0.0, 14.0, 9.0], [10.0, 10.0, 19.0, 19.0], [0.0, 0.0, 9.0, 9.0]])
    # overlap 5x10 = 50, union 100 + 100 - 50 = 150; disjoint; identical
    expected = torch.tensor([[50 / 150, 0.0, 1.0]])
    assert torch.allclose(box_iou(a, b), expected)
    assert box_iou(a, torch.zeros((0, 4))).shape == (1, 0)


def test_encode_decode_round_trip_and_known_delta():
    anchors = torch.tensor([[0.0, 0.0, 15.0, 15.0], [10.0, 20.0, 41.0, 35.0]])
    targets = torch.tensor([[8.0, 0.0, 23.0, 15.0], [0.0, 0.0, 63.0, 63.0]])
    deltas = encode_boxes(anchors, targets)
    # first: same size, shifted by 8 px of a 16 px box -> dx = 0.5, no scale change
    assert torch.allclose(deltas[0], torch.tensor([0.5, 0.0, 0.0, 0.0]))
    # second: 32x16 -> 64x64: log(2), log(4)
    assert math.isclose(deltas[1, 2].item(), math.log(2.0), rel_tol=1e-6)
    assert math.isclose(deltas[1, 3].item(), math.log(4.0), rel_tol=1e-6)
    assert torch.allclose(decode_boxes(anchors, deltas), targets, atol=1e-4)


def test_decode_many_classes_at_once():
    rois = torch.tensor([[0.0, 0.0, 15.0, 15.0]])
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0]])
    decoded = decode_boxes(rois, deltas)
    assert torch.allclose(decoded, torch.tensor([[0.0, 0.0, 15.0, 15.0, 8.0, 0.0, 23.0, 15.0]]))


def test_clip_to_last_pixel():
    boxes = torch.tensor([[-5.0, -1.0, 120.0, 50.0]])
    assert clip_boxes(boxes, height=40, width=100).tolist() == [[0.0, 0.0, 99.0, 39.0]]


def test_smooth_l1_switches_at_one_over_sigma_squared():
    sigma = 3.0
    x = torch.tensor([0.0, 0.1, 1.0 / 9.0, 1.0])
    y = smooth_l1(x, torch.zeros(4), sigma)
    # below 1/9: 0.5 * 9 * x^2; above: |x| - 0.5 / 9
    assert torch.allclose(y, torch.tensor([0.0, 0.045, 0.5 / 9.0, 1.0 - 0.5 / 9.0]))
