"""Proposal recall on a case worked by hand (+1 IoU convention, '>=' at each threshold)."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from model.data.records import DetectionDataset, ImageRecord, ObjectAnnotation
from model.evaluation.recall import DEFAULT_IOU_THRESHOLDS, proposal_recall


def dataset(*extra_records):
    records = [
        ImageRecord("a", Path("a.jpg"), 100, 100, (
            ObjectAnnotation("x", (0, 0, 9, 9)),                   # gt1
            ObjectAnnotation("y", (20, 20, 29, 29)),               # gt2
            ObjectAnnotation("x", (50, 50, 59, 59), difficult=True),  # not counted
        )),
        ImageRecord("b", Path("b.jpg"), 100, 100, (ObjectAnnotation("x", (0, 0, 19, 19)),)),  # gt4, 400 px
        *extra_records,
    ]
    return DetectionDataset(root=Path("."), classes=("x", "y"), records=records)


PROPOSALS = {
    # a: p1 = gt1 (IoU 1); p2 (20,20,29,27) on gt2: 10x8 / 100 = 0.8; p3 on the difficult box; p4 = gt2.
    "a": torch.tensor([[0, 0, 9, 9], [20, 20, 29, 27], [50, 50, 59, 59], [20, 20, 29, 29]], dtype=torch.float32),
    # b: p1 (0,0,19,9): 200 / 400 = 0.5; p2 (0,0,19,14): 300 / 400 = 0.75.
    "b": torch.tensor([[0, 0, 19, 9], [0, 0, 19, 14]], dtype=torch.float32),
}

# Best IoU per counted gt (gt1, gt2, gt4) for top 1 / 2 / 4:
#   gt1: 1, 1, 1      gt2: 0, .8, 1      gt4: .5, .75, .75 (b has only 2 proposals)
# recall at t = .5 / .75 / .9:
#   top1: 2/3, 1/3, 1/3     top2: 1, 1, 1/3     top4: 1, 1, 2/3
# average recall: top1 4/9, top2 7/9, top4 8/9
EXPECTED = np.array([[2 / 3, 1 / 3, 1 / 3], [1, 1, 1 / 3], [1, 1, 2 / 3]])


def test_hand_case():
    result = proposal_recall(dataset(), PROPOSALS, top_ns=(1, 2, 4), iou_thresholds=(0.5, 0.75, 0.9))
    assert result.num_gt == 3
    np.testing.assert_allclose(result.recall, EXPECTED)
    assert result.average_recall == pytest.approx({1: 4 / 9, 2: 7 / 9, 4: 8 / 9})


def test_json_and_rows():
    result = proposal_recall(dataset(), PROPOSALS, top_ns=(1, 2, 4), iou_thresholds=(0.5, 0.75, 0.9))
    payload = json.loads(json.dumps(result.to_json_dict(), allow_nan=False))
    assert payload["average_recall"]["2"] == pytest.approx(7 / 9)
    assert payload["recall"]["4"]["0.9"] == pytest.approx(2 / 3)
    assert payload["num_gt"] == 3 and payload["num_images"] == 2
    rows = result.to_rows()
    assert len(rows) == 9
    assert rows[0] == {"top_n": 1, "iou_threshold": 0.5, "recall": pytest.approx(2 / 3), "num_gt": 3}


def test_default_thresholds_are_exact_decimals():
    assert len(DEFAULT_IOU_THRESHOLDS) == 10
    assert DEFAULT_IOU_THRESHOLDS[2] == 0.6  # not np.arange's 0.6000000000000001
    # gt4's best top-2 IoU is exactly 0.75: recalled at 0.75, not at 0.8.
    result = proposal_recall(dataset(), PROPOSALS, top_ns=(2,))
    recall = dict(zip(result.iou_thresholds, result.recall[0]))
    assert recall[0.75] == pytest.approx(1.0)
    assert recall[0.8] == pytest.approx(2 / 3)


def test_missing_images_count_as_missed(caplog):
    extra = ImageRecord("c", Path("c.jpg"), 100, 100, (ObjectAnnotation("y", (5, 5, 14, 14)),))
    with caplog.at_level(logging.WARNING):
        result = proposal_recall(dataset(extra), PROPOSALS, top_ns=(4,), iou_thresholds=(0.5,))
    assert result.num_gt == 4
    assert result.recall[0, 0] == pytest.approx(3 / 4)
    assert "1 of 3 images have no proposals" in caplog.text


def test_errors_and_empty():
    with pytest.raises(ValueError, match="not in the dataset"):
        proposal_recall(dataset(), {"zz": torch.zeros((0, 4))})
    with pytest.raises(ValueError, match=r"expected \[P, 4\]"):
        proposal_recall(dataset(), {"a": torch.zeros(4)})
    empty = DetectionDataset(root=Path("."), classes=("x",), records=[ImageRecord("e", Path("e.jpg"), 10, 10)])
    result = proposal_recall(empty, {"e": torch.zeros((0, 4))})
    assert result.num_gt == 0 and math.isnan(result.recall[0, 0])
    assert result.to_json_dict()["average_recall"]["300"] is None
