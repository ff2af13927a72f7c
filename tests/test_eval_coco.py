"""evaluate_coco against pycocotools run directly on the json that model.data.coco writes."""
from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from model.data.coco import write_coco_json
from model.data.records import DetectionDataset, ImageRecord, ObjectAnnotation
from model.detections import Detections
from model.evaluation.coco_eval import COCO_METRICS, evaluate_coco

# Sides 20, 50, 120 px: areas 400 (small, < 32^2), 2500 (medium), 14400 (large, > 96^2).
SIDES = (20, 50, 120)


def make_dataset(num_images=6, with_difficult=False) -> DetectionDataset:
    rng = np.random.default_rng(1)
    records = []
    for i in range(num_images):
        objects = []
        for j, side in enumerate(SIDES):
            x, y = float(rng.integers(0, 300)), float(rng.integers(0, 200))
            objects.append(ObjectAnnotation(("cat", "dog")[(i + j) % 2], (x, y, x + side - 1, y + side - 1)))
        if with_difficult:
            objects.append(ObjectAnnotation("cat", (400.0, 300.0, 449.0, 349.0), difficult=True))
        records.append(ImageRecord(f"im{i}", Path(f"/toy/im{i}.jpg"), 500, 375, tuple(objects)))
    return DetectionDataset(root=Path("/toy"), classes=("cat", "dog"), records=records)


def perfect_detections(dataset, include_difficult=False):
    out = {}
    for record in dataset.records:
        objs = [o for o in record.objects if include_difficult or not o.difficult]
        out[record.image_id] = Detections(
            boxes=torch.tensor([o.box for o in objs], dtype=torch.float64),
            # Difficult boxes (listed last) get the top score, so a detection on one,
            # if it counts as a false positive, ranks before true positives and costs AP.
            scores=torch.tensor([1.0 if o.difficult else 0.9 - 0.1 * k for k, o in enumerate(objs)], dtype=torch.float64),
            labels=torch.tensor([dataset.classes.index(o.name) + 1 for o in objs]),
        )
    return out


def noisy_detections(dataset, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for record in dataset.records:
        boxes = np.array([o.box for o in record.objects], dtype=np.float64)
        labels = np.array([dataset.classes.index(o.name) + 1 for o in record.objects])
        jittered = boxes + rng.normal(0, 4, boxes.shape)
        extra = np.array([[10, 10, 80, 60], [200, 100, 260, 180]], dtype=np.float64)
        all_boxes = np.concatenate([jittered, extra])
        all_labels = np.concatenate([labels, rng.integers(1, 3, 2)])
        out[record.image_id] = Detections(
            boxes=torch.from_numpy(all_boxes),
            scores=torch.from_numpy(rng.uniform(0.1, 1.0, len(all_boxes))),
            labels=torch.from_numpy(all_labels),
        )
    return out


def pycocotools_stats(gt_json: Path, dataset, detections) -> np.ndarray:
    """The reference: pycocotools on the written json, results built here from the inclusive boxes."""
    ids = {record.image_id: i + 1 for i, record in enumerate(dataset.records)}
    results = []
    for image_id, dets in detections.items():
        for box, score, label in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist()):
            x1, y1, x2, y2 = box
            results.append({"image_id": ids[image_id], "category_id": label, "bbox": [x1, y1, x2 - x1 + 1, y2 - y1 + 1], "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_json))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def test_perfect_detections_give_one():
    dataset = make_dataset()
    metrics = evaluate_coco(dataset, perfect_detections(dataset))
    assert list(metrics) == list(COCO_METRICS)
    for name, value in metrics.items():
        assert value == pytest.approx(1.0), name


def test_agrees_with_pycocotools_on_written_json(tmp_path, capsys):
    dataset = make_dataset()
    detections = noisy_detections(dataset)
    metrics = evaluate_coco(dataset, detections)
    assert capsys.readouterr().out == ""  # pycocotools' prints went to the log
    stats = pycocotools_stats(write_coco_json(dataset, tmp_path / "gt.json"), dataset, detections)
    for i, name in enumerate(COCO_METRICS):
        assert metrics[name] == stats[i], name
    # A sanity check that the case is not trivial.
    assert 0.05 < metrics["AP"] < 0.95


def test_difficult_boxes_are_left_out(tmp_path):
    dataset = make_dataset(with_difficult=True)
    # Without detections on them, difficult boxes cost nothing: still perfect.
    assert evaluate_coco(dataset, perfect_detections(dataset))["AP"] == pytest.approx(1.0)
    # A detection on a difficult box is an ordinary false positive here; the numbers
    # are pycocotools' on the json without difficult boxes.
    detections = perfect_detections(dataset, include_difficult=True)
    metrics = evaluate_coco(dataset, detections)
    assert metrics["AP"] < 1.0
    stats = pycocotools_stats(write_coco_json(dataset, tmp_path / "gt.json", include_difficult=False), dataset, detections)
    assert [metrics[name] for name in COCO_METRICS] == stats[:6].tolist()


def test_no_detections():
    # AP 0 where there is ground truth; pycocotools' -1 means "no ground truth in that range".
    dataset = make_dataset(num_images=2)
    small_only = DetectionDataset(
        root=dataset.root,
        classes=dataset.classes,
        records=[ImageRecord("s", Path("/toy/s.jpg"), 100, 100, (ObjectAnnotation("cat", (0, 0, 9, 9)),))],
    )
    assert evaluate_coco(dataset, {})["AP"] == 0.0
    metrics = evaluate_coco(small_only, {"s": Detections.empty()})
    assert metrics["AP"] == 0.0 and metrics["APs"] == 0.0
    assert metrics["APm"] == -1.0 and metrics["APl"] == -1.0
    assert not any(math.isnan(v) for v in metrics.values())


def test_unknown_image_is_an_error():
    with pytest.raises(ValueError, match="not in the dataset"):
        evaluate_coco(make_dataset(), {"nope": Detections.empty()})
