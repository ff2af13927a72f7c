"""COCO-style box AP of detections on a ``DetectionDataset``, through pycocotools' ``COCOeval``.

Difficult ground truth: left out of the COCO ground truth entirely (the
non-difficult boxes go in with ``iscrowd = 0``). pycocotools has no "neither TP
nor FP" flag for boxes (it overwrites ``ignore`` with ``iscrowd``, and crowd
boxes are matched by intersection over the *detection* area, with any number
of detections allowed on one), so marking them crowd would change the matching
rules. Consequence: a detection on a difficult box is an ordinary false
positive here, while the VOC evaluation ignores it; expect COCO AP50 to sit a
little below VOC AP on data with difficult boxes.

pycocotools prints its progress and summary; both go to this module's debug log.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from model.data.coco import dataset_to_coco, detections_to_coco, quiet_stdout
from model.data.records import DetectionDataset
from model.detections import Detections
from model.evaluation.voc_ap import NoGroundTruthError

logger = logging.getLogger(__name__)

# The first six entries of COCOeval.stats, in order.
COCO_METRICS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def evaluate_coco(dataset: DetectionDataset, detections: Mapping[str, Detections]) -> dict[str, float]:
    """``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` (fractions, not percent), max 100 detections per image.

    Values are pycocotools' own, including its ``-1.0`` for "no ground truth in
    this area range". Every class of ``dataset.classes`` is scored (a class with
    ground truth and no detections counts 0, as in pycocotools). Images without
    an entry in ``detections`` have no detections; an unknown image id or label
    raises ``ValueError``; no non-difficult ground truth at all raises
    :class:`~model.evaluation.voc_ap.NoGroundTruthError` (pycocotools would
    report -1, which reads like a score).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_json = dataset_to_coco(dataset, include_difficult=False)
    if not gt_json["annotations"]:
        raise NoGroundTruthError(
            f"dataset {dataset.root}: no non-difficult ground-truth box of classes {list(dataset.classes)}; COCO AP is undefined"
        )
    results = detections_to_coco(dataset, detections)
    with quiet_stdout("pycocotools"):
        coco_gt = COCO()
        coco_gt.dataset = gt_json
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:
            # loadRes cannot take an empty list; an empty result set is still a valid answer (AP 0).
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(gt_json["images"]), "categories": list(gt_json["categories"]), "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = np.asarray(evaluator.stats, dtype=np.float64)
    metrics = {name: float(stats[i]) for i, name in enumerate(COCO_METRICS)}
    logger.info("COCO box AP %s", ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return metrics
