"""VOC AP as the devkit computes it: hand-worked cases plus a cross-check against a plain loop.

Boxes are 0-based inclusive; IoU uses the +1 convention, so a 10x10 box is (0, 0, 9, 9).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from model.data.records import DetectionDataset, ImageRecord, ObjectAnnotation
from model.detections import Detections
from model.evaluation.voc_ap import VOCResult, average_precision, evaluate_class, evaluate_voc


def gt(*boxes, difficult=None):
    """Ground truth of one image for evaluate_class: boxes [G, 4], difficult [G]."""
    arr = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    flags = np.zeros(len(arr), dtype=bool) if difficult is None else np.array(difficult, dtype=bool)
    return arr, flags


def run(ground_truth, dets, **kwargs):
    """dets: list of (image_id, score, box)."""
    ids = [d[0] for d in dets]
    scores = np.array([d[1] for d in dets], dtype=np.float64)
    boxes = np.array([d[2] for d in dets], dtype=np.float64).reshape(-1, 4)
    return evaluate_class(ground_truth, ids, scores, boxes, **kwargs)


# ---------------------------------------------------------------- the main hand-worked case
# Image a: gt1 (0,0,9,9), gt2 (20,20,29,29) difficult. Image b: gt3 (0,0,9,9). npos = 2.
# Ranked detections:
#   d1 0.9 a (0,0,9,9)     IoU 1 with gt1                  -> TP
#   d2 0.8 a (0,0,9,9)     gt1 again                       -> FP (duplicate)
#   d3 0.7 a (20,20,29,29) best match gt2 is difficult     -> neither
#   d4 0.6 b (50,50,59,59) no overlap                      -> FP
#   d5 0.5 b (0,0,9,9)     gt3                             -> TP
# cum TP 1 1 1 1 2, cum FP 0 1 1 2 2
# recall    .5  .5  .5  .5   1
# precision  1  .5  .5  1/3 .5
# 11-point: t = 0 .. 0.5 (6 points) max prec 1; t = 0.6 .. 1.0 (5 points) only the last, 0.5
#           -> (6 * 1 + 5 * 0.5) / 11 = 8.5 / 11 = 0.772727...
# area: envelope 1 up to recall .5, then .5 up to 1 -> .5 * 1 + .5 * .5 = 0.75
MAIN_GT = {"a": gt((0, 0, 9, 9), (20, 20, 29, 29), difficult=[False, True]), "b": gt((0, 0, 9, 9))}
# Input order deliberately not score order.
MAIN_DETS = [
    ("b", 0.5, (0, 0, 9, 9)),
    ("a", 0.9, (0, 0, 9, 9)),
    ("a", 0.7, (20, 20, 29, 29)),
    ("a", 0.8, (0, 0, 9, 9)),
    ("b", 0.6, (50, 50, 59, 59)),
]


def test_main_case_flags_recall_precision():
    result = run(MAIN_GT, MAIN_DETS)
    assert result.num_positives == 2
    assert result.true_positive.tolist() == [True, False, False, False, True]
    assert result.false_positive.tolist() == [False, True, False, True, False]
    np.testing.assert_allclose(result.recall, [0.5, 0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(result.precision, [1.0, 0.5, 0.5, 1 / 3, 0.5])


def test_main_case_11_point_and_area_differ():
    assert run(MAIN_GT, MAIN_DETS, use_07_metric=True).ap == pytest.approx(8.5 / 11, abs=1e-12)
    assert run(MAIN_GT, MAIN_DETS, use_07_metric=False).ap == pytest.approx(0.75, abs=1e-12)


def test_detection_on_difficult_is_neither_tp_nor_fp():
    # Only d1 (TP) and d3 (on the difficult box). If d3 were an FP, precision
    # would drop to 1/2 at rank 2; it must stay 1. npos = 1 (difficult not counted).
    ground_truth = {"a": gt((0, 0, 9, 9), (20, 20, 29, 29), difficult=[False, True])}
    result = run(ground_truth, [("a", 0.9, (0, 0, 9, 9)), ("a", 0.8, (20, 20, 29, 29))])
    assert result.num_positives == 1
    assert result.true_positive.tolist() == [True, False]
    assert result.false_positive.tolist() == [False, False]
    np.testing.assert_allclose(result.precision, [1.0, 1.0])
    assert result.ap == pytest.approx(1.0)


def test_iou_exactly_half_is_not_a_match():
    # gt (0,0,9,9): 10x10 = 100 px. det (0,0,9,4): 10x5 = 50 px, inside the gt:
    # IoU = 50 / (100 + 50 - 50) = 0.5 exactly -> NOT a match (strict >) -> FP.
    # det (0,0,9,5): 60 / 100 = 0.6 -> TP.
    # recall [0, 1], precision [0, 0.5] -> every 11-point threshold sees max precision 0.5 -> AP 0.5.
    ground_truth = {"a": gt((0, 0, 9, 9))}
    result = run(ground_truth, [("a", 0.9, (0, 0, 9, 4)), ("a", 0.8, (0, 0, 9, 5))])
    assert result.true_positive.tolist() == [False, True]
    assert result.false_positive.tolist() == [True, False]
    assert result.ap == pytest.approx(0.5)
    # A lower threshold turns the 0.5 overlap into a match: d1 TP, d2 a duplicate.
    looser = run(ground_truth, [("a", 0.9, (0, 0, 9, 4)), ("a", 0.8, (0, 0, 9, 5))], iou_threshold=0.49)
    assert looser.true_positive.tolist() == [True, False]


def test_plus_one_pixel_convention():
    # gt (0,0,9,8): 10x9 = 90 px; det (0,0,9,4): 10x5 = 50 px inside it.
    # +1 convention: 50 / 90 = 0.556 -> match. Without +1: 36 / 72 = 0.5 -> no match.
    result = run({"a": gt((0, 0, 9, 8))}, [("a", 1.0, (0, 0, 9, 4))])
    assert result.true_positive.tolist() == [True]
    assert result.ap == pytest.approx(1.0)


def test_only_the_max_iou_box_is_tried():
    # gt1 (0,0,9,9) and gt2 (0,0,9,11) (10x12 = 120 px). det (0,0,9,9): IoU 1 with gt1,
    # 100/120 = 0.83 with gt2. The second, identical detection again picks gt1 (taken)
    # -> FP, although gt2 is free and overlaps 0.83: the devkit does not fall back.
    # recall .5 .5, precision 1 .5 -> 11-point: t = 0..0.5 (6 points) -> 1 -> 6/11; area .5.
    ground_truth = {"a": gt((0, 0, 9, 9), (0, 0, 9, 11))}
    dets = [("a", 0.9, (0, 0, 9, 9)), ("a", 0.8, (0, 0, 9, 9))]
    result = run(ground_truth, dets)
    assert result.true_positive.tolist() == [True, False]
    assert result.false_positive.tolist() == [False, True]
    assert result.ap == pytest.approx(6 / 11)
    assert run(ground_truth, dets, use_07_metric=False).ap == pytest.approx(0.5)


def test_iou_ties_pick_the_first_ground_truth_box():
    # Two identical gt boxes; the detection ties between them and takes the first.
    # First difficult -> the detection is ignored, npos 1, no TP -> AP 0.
    # First not difficult -> TP -> AP 1.
    det = [("a", 0.9, (0, 0, 9, 9))]
    first_difficult = run({"a": gt((0, 0, 9, 9), (0, 0, 9, 9), difficult=[True, False])}, det)
    assert first_difficult.true_positive.tolist() == [False]
    assert first_difficult.false_positive.tolist() == [False]
    assert first_difficult.ap == 0.0
    second_difficult = run({"a": gt((0, 0, 9, 9), (0, 0, 9, 9), difficult=[False, True])}, det)
    # 11 * (1/11) summed one term at a time, as the original, is 1.0000000000000002.
    assert second_difficult.ap == pytest.approx(1.0, abs=1e-15)


def test_score_ties_keep_input_order():
    # Equal scores: the stable sort keeps input order. [FP, TP] -> precision 0, .5 -> AP .5;
    # [TP, FP] -> AP 1.
    ground_truth = {"a": gt((0, 0, 9, 9))}
    bad, good = ("a", 0.5, (40, 40, 49, 49)), ("a", 0.5, (0, 0, 9, 9))
    assert run(ground_truth, [bad, good]).ap == pytest.approx(0.5)
    assert run(ground_truth, [good, bad]).ap == pytest.approx(1.0)


def test_eleven_points_are_numpy_arange_values():
    # py-faster-rcnn's thresholds come from np.arange(0, 1.1, 0.1), whose 4th value is
    # 0.30000000000000004 > 0.3. Recall 3/10 therefore does not reach "t = 0.3".
    # 10 positives; 3 TPs then nothing: recall .1 .2 .3, precision 1 -> t = 0, .1, .2 -> 1,
    # t >= "0.3" -> 0 -> AP = 3/11 (it would be 4/11 with a decimal 0.3).
    ground_truth = {f"im{i}": gt((0, 0, 9, 9)) for i in range(10)}
    dets = [(f"im{i}", 1.0 - i / 10, (0, 0, 9, 9)) for i in range(3)]
    result = run(ground_truth, dets)
    np.testing.assert_array_equal(result.recall, [0.1, 0.2, 0.3])
    assert result.ap == pytest.approx(3 / 11, abs=1e-15)


def test_no_detections_gives_zero():
    result = run({"a": gt((0, 0, 9, 9))}, [])
    assert result.ap == 0.0
    assert result.num_positives == 1
    assert result.recall.shape == (0,)
    assert run({"a": gt((0, 0, 9, 9))}, [], use_07_metric=False).ap == 0.0


def test_class_without_positives_is_nan():
    # Only a difficult box: npos = 0, recall undefined -> AP NaN.
    result = run({"a": gt((0, 0, 9, 9), difficult=[True])}, [("a", 0.9, (50, 50, 59, 59))])
    assert result.num_positives == 0
    assert math.isnan(result.ap)
    assert result.false_positive.tolist() == [True]


def test_detection_on_unknown_image_raises():
    with pytest.raises(ValueError, match="'zz'"):
        run({"a": gt((0, 0, 9, 9))}, [("zz", 0.9, (0, 0, 9, 9))])


def test_average_precision_direct():
    # Recall/precision worked by hand: (0.5, 1), (0.5, 0.5), (1, 0.5).
    recall = np.array([0.5, 0.5, 1.0])
    precision = np.array([1.0, 0.5, 0.5])
    assert average_precision(recall, precision, True) == pytest.approx(8.5 / 11)
    assert average_precision(recall, precision, False) == pytest.approx(0.75)
    # A dip then a rise: precision .5 at recall .25, 2/3 at recall .5: the envelope lifts
    # the dip: area = .5 * 2/3 = 1/3; 11-point: t = 0..0.5 -> 2/3 (6 points) -> 4/11.
    assert average_precision(np.array([0.25, 0.5]), np.array([0.5, 2 / 3]), False) == pytest.approx(1 / 3)
    assert average_precision(np.array([0.25, 0.5]), np.array([0.5, 2 / 3]), True) == pytest.approx(4 / 11)
    assert average_precision(np.zeros(0), np.zeros(0), True) == 0.0


# ---------------------------------------------------------------- evaluate_voc on a dataset
def make_dataset():
    # Two classes over three images. "cat": the main case above (images a, b).
    # "dog": one box on image c, found once (TP) -> AP 1. "cow": only a difficult box -> NaN.
    def rec(image_id, *objects):
        return ImageRecord(image_id=image_id, path=Path(f"/nowhere/{image_id}.jpg"), width=100, height=100, objects=objects)

    return DetectionDataset(
        root=Path("/nowhere"),
        classes=("cat", "dog", "cow"),
        records=[
            rec("a", ObjectAnnotation("cat", (0, 0, 9, 9)), ObjectAnnotation("cat", (20, 20, 29, 29), True)),
            rec("b", ObjectAnnotation("cat", (0, 0, 9, 9)), ObjectAnnotation("cow", (60, 60, 69, 69), True)),
            rec("c", ObjectAnnotation("dog", (30, 30, 59, 59))),
        ],
    )


def dets_of(rows):
    """rows: (box, score, label)."""
    if not rows:
        return Detections.empty()
    return Detections(
        boxes=torch.tensor([r[0] for r in rows], dtype=torch.float32),
        scores=torch.tensor([r[1] for r in rows], dtype=torch.float32),
        labels=torch.tensor([r[2] for r in rows], dtype=torch.int64),
    )


def make_detections():
    return {
        "a": dets_of([((0, 0, 9, 9), 0.9, 1), ((20, 20, 29, 29), 0.7, 1), ((0, 0, 9, 9), 0.8, 1)]),
        "b": dets_of([((50, 50, 59, 59), 0.6, 1), ((0, 0, 9, 9), 0.5, 1), ((60, 60, 69, 69), 0.4, 3)]),
        "c": dets_of([((31, 30, 59, 59), 0.3, 2)]),
    }


def test_evaluate_voc_per_class_and_mean():
    result = evaluate_voc(make_dataset(), make_detections(), metric="voc07")
    assert result.ap["cat"] == pytest.approx(8.5 / 11)
    assert result.ap["dog"] == pytest.approx(1.0)
    assert math.isnan(result.ap["cow"])
    # The mean leaves the undefined class out: (8.5/11 + 1) / 2.
    assert result.mAP == pytest.approx((8.5 / 11 + 1.0) / 2)
    area = evaluate_voc(make_dataset(), make_detections(), metric="area")
    assert area.ap["cat"] == pytest.approx(0.75)
    assert area.mAP == pytest.approx(0.875)


def test_to_json_dict_writes_null_for_nan():
    payload = evaluate_voc(make_dataset(), make_detections()).to_json_dict()
    text = json.dumps(payload, allow_nan=False)  # raises if a NaN slipped through
    assert json.loads(text)["ap"]["cow"] is None
    assert set(payload) == {"mAP", "ap"}
    assert list(payload["ap"]) == ["cat", "dog", "cow"]
    assert math.isnan(VOCResult.from_curves({}, "voc07", 0.5).mAP)
    assert VOCResult.from_curves({}, "voc07", 0.5).to_json_dict() == {"mAP": None, "ap": {}}


def test_evaluate_voc_missing_images_and_empty_detections():
    result = evaluate_voc(make_dataset(), {"c": Detections.empty()})
    assert result.ap["cat"] == 0.0 and result.ap["dog"] == 0.0
    assert result.mAP == 0.0


def test_evaluate_voc_rejects_wrong_image_set_and_labels():
    with pytest.raises(ValueError, match="not in the evaluated dataset"):
        evaluate_voc(make_dataset(), {"zzz": dets_of([((0, 0, 9, 9), 0.9, 1)])})
    with pytest.raises(ValueError, match="labels must be in 1..3"):
        evaluate_voc(make_dataset(), {"a": dets_of([((0, 0, 9, 9), 0.9, 4)])})
    with pytest.raises(ValueError, match="labels must be in 1..3"):
        evaluate_voc(make_dataset(), {"a": dets_of([((0, 0, 9, 9), 0.9, 0)])})
    with pytest.raises(ValueError, match="unknown VOC metric"):
        evaluate_voc(make_dataset(), {}, metric="voc12")


# ---------------------------------------------------------------- cross-check against a plain loop
def loop_voc_eval(ground_truth, image_ids, scores, boxes, threshold, use_07):
    """py-faster-rcnn's voc_eval written as the obvious loop (scores ranked with a stable sort)."""
    taken = {k: [False] * len(v[0]) for k, v in ground_truth.items()}
    npos = sum(int((~v[1]).sum()) for v in ground_truth.values())
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    tp, fp = [], []
    for i in order:
        bb = boxes[i]
        gt_boxes, difficult = ground_truth[image_ids[i]]
        ovmax, jmax = -np.inf, -1
        for j, g in enumerate(gt_boxes):
            iw = max(min(bb[2], g[2]) - max(bb[0], g[0]) + 1.0, 0.0)
            ih = max(min(bb[3], g[3]) - max(bb[1], g[1]) + 1.0, 0.0)
            inter = iw * ih
            union = (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0) + (g[2] - g[0] + 1.0) * (g[3] - g[1] + 1.0) - inter
            if inter / union > ovmax:
                ovmax, jmax = inter / union, j
        t = f = 0.0
        if ovmax > threshold:
            if not difficult[jmax]:
                if not taken[image_ids[i]][jmax]:
                    t = 1.0
                    taken[image_ids[i]][jmax] = True
                else:
                    f = 1.0
        else:
            f = 1.0
        tp.append(t)
        fp.append(f)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return average_precision(rec, prec, use_07), rec, prec


@pytest.mark.parametrize("seed", range(6))
def test_matches_plain_loop_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    # Integer coordinates on a small grid give many exact IoU ties and IoU == 0.5 cases;
    # scores on a coarse grid give score ties.
    ground_truth, ids, scores, boxes = {}, [], [], []
    for i in range(12):
        g = int(rng.integers(0, 5))
        xy = rng.integers(0, 12, size=(g, 2))
        wh = rng.integers(1, 8, size=(g, 2))
        ground_truth[f"im{i}"] = (
            np.concatenate([xy, xy + wh - 1], axis=1).astype(np.float64),
            rng.random(g) < 0.25,
        )
        for _ in range(int(rng.integers(0, 8))):
            x, y = rng.integers(0, 12, size=2)
            w, h = rng.integers(1, 8, size=2)
            ids.append(f"im{i}")
            scores.append(float(rng.integers(0, 5)) / 4)
            boxes.append([x, y, x + w - 1, y + h - 1])
    scores_arr = np.array(scores, dtype=np.float64)
    boxes_arr = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    for use_07 in (True, False):
        for threshold in (0.5, 0.3):
            expected_ap, rec, prec = loop_voc_eval(ground_truth, ids, scores_arr, boxes_arr, threshold, use_07)
            got = evaluate_class(ground_truth, ids, scores_arr, boxes_arr, iou_threshold=threshold, use_07_metric=use_07)
            np.testing.assert_array_equal(got.recall, rec)
            np.testing.assert_array_equal(got.precision, prec)
            assert got.ap == expected_ap


def test_nan_box_is_a_false_positive_not_a_crash():
    # A diverged model's NaN box: IoU NaN is not > 0.5 (as in the devkit) -> FP.
    # Ranked: NaN box FP, exact box TP -> recall 0, 1; precision 0, .5 -> 11-point AP .5.
    ground_truth = {"a": gt((0, 0, 9, 9))}
    result = run(ground_truth, [("a", 0.9, (math.nan, 0, 9, 9)), ("a", 0.8, (0, 0, 9, 9))])
    assert result.false_positive.tolist() == [True, False]
    assert result.ap == pytest.approx(0.5)


def test_detections_of_a_class_without_any_ground_truth_do_not_crash():
    """A class with detections but no gt box at all: AP undefined (NaN, left out of the mAP)."""
    dataset = DetectionDataset(
        Path("."), ("a", "b"),
        [ImageRecord("i1", Path("i1.jpg"), 100, 100, (ObjectAnnotation("a", (0.0, 0.0, 10.0, 10.0)),))],
    )
    detections = {"i1": Detections(
        torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0]]), torch.tensor([0.9, 0.8]), torch.tensor([1, 2]),
    )}
    result = evaluate_voc(dataset, detections)
    assert result.ap["a"] == 1.0 or abs(result.ap["a"] - 1.0) < 1e-9
    assert math.isnan(result.ap["b"])
    assert abs(result.mAP - result.ap["a"]) < 1e-12
    assert result.curves["b"].false_positive.tolist() == [True]
