"""PASCAL VOC average precision, computed exactly as the devkit / py-faster-rcnn ``voc_eval``.

Shape shorthand: D detections of one class (over all images), G ground-truth
boxes of that class (over all images), P detection/ground-truth pairs that
share an image. Boxes are ``(x1, y1, x2, y2)`` 0-based inclusive pixels; IoU
uses the +1 convention (the formula of ``model.boxes.box_iou``, written out
here over detection/ground-truth pairs), in float64 as the devkit does.

What "exactly" means here, rule by rule (py-faster-rcnn ``voc_eval.py``):

* detections of a class are ranked by score, descending, with a *stable* sort
  (MATLAB's ``sort`` in the devkit is stable; equal scores keep input order);
* each detection is compared with the ground truth of its image with the
  largest IoU *only* (first one on ties) - not with the best unmatched one;
* it is a match when that IoU is strictly greater than the threshold (0.5);
* a match on a ``difficult`` box is neither TP nor FP (it still occupies a
  rank, so precision there repeats the previous value); difficult boxes are
  not counted in the positives ``npos``;
* a match on a box already taken by a higher-ranked detection is a FP
  (duplicate); no match at all is a FP;
* recall = cumTP / npos, precision = cumTP / max(cumTP + cumFP, eps);
* VOC2007 ``voc07`` AP: the mean over the 11 thresholds ``np.arange(0, 1.1, 0.1)``
  (those exact float values, as py-faster-rcnn) of the maximum precision at
  recall >= t (0 when no such point); VOC2010+ ``area`` AP: the area under the
  monotone (right-to-left running max) precision envelope at the points where
  recall changes.

A class without any non-difficult ground truth has no defined recall (the
devkit divides by ``npos = 0``). Its AP is reported as NaN and it is left out
of the mean, with a logged warning; ``VOCResult.to_json_dict`` writes it as
``null`` so that the JSON stays valid. When *no* class has ground truth the mAP
itself is undefined: the scoring functions raise :class:`NoGroundTruthError`
rather than report a mAP of nothing. A class with ground truth but no
detections scores AP 0: it always stays in the mean, so removing detections can
never raise the mAP.

Options are checked where they enter: ``metric`` must be one of ``METRICS`` and
the IoU threshold a number strictly between 0 and 1 (:func:`check_options`).

Matching is vectorised: because a detection only ever looks at the box with
the largest IoU in its image, that box does not depend on earlier matches, and
"TP" reduces to "first detection (in rank order) to pick this box".
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from model.data.records import DetectionDataset

if TYPE_CHECKING:  # not imported at run time: the CLI scores files without loading torch
    from model.detections import Detections

logger = logging.getLogger(__name__)

METRICS = ("voc07", "area")
# A match needs IoU strictly above this (the devkit's 0.5).
DEFAULT_IOU_THRESHOLD = 0.5

# py-faster-rcnn: ``for t in np.arange(0., 1.1, 0.1)``. The float values matter
# at recall exactly 0.3, 0.6, 0.7 (np.arange gives 0.30000000000000004 ...).
_ELEVEN_POINTS = np.arange(0.0, 1.1, 0.1)


class NoGroundTruthError(ValueError):
    """No evaluated class has a non-difficult ground-truth box: there is no mAP to report."""


def check_options(metric: str, iou_threshold: float) -> bool:
    """Refuse an unknown ``metric`` or an IoU threshold outside (0, 1); returns "use the 07 metric"."""
    if metric not in METRICS:
        raise ValueError(f"unknown VOC metric {metric!r}; expected one of {METRICS}")
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float, np.floating)):
        raise ValueError(f"IoU threshold must be a number in (0, 1), got {iou_threshold!r}")
    if not 0.0 < float(iou_threshold) < 1.0:  # NaN fails too
        raise ValueError(f"IoU threshold must lie strictly between 0 and 1, got {iou_threshold!r}")
    return metric == "voc07"


def require_ground_truth(result: "VOCResult", where: str) -> "VOCResult":
    """``result``, or :class:`NoGroundTruthError` naming ``where`` when its mAP is undefined."""
    if math.isnan(result.mAP):
        classes = ", ".join(result.ap) or "none"
        raise NoGroundTruthError(
            f"{where}: no evaluated class has non-difficult ground truth (classes: {classes}); the mAP is undefined"
        )
    return result


@dataclass
class ClassResult:
    """Evaluation of one class.

    ``recall`` and ``precision`` are ``[D]`` float64 arrays, one entry per
    ranked detection (the devkit's ``rec`` / ``prec``); ``ap`` is NaN when
    ``num_positives`` (non-difficult ground-truth boxes) is 0.
    ``true_positive`` / ``false_positive`` ``[D]`` bool flag each ranked
    detection (both False: matched a difficult box).
    """

    ap: float
    recall: np.ndarray
    precision: np.ndarray
    num_positives: int
    true_positive: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    false_positive: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def num_detections(self) -> int:
        return int(self.recall.shape[0])


@dataclass
class VOCResult:
    """Per-class APs and their mean.

    ``mAP`` is the mean over classes whose AP is defined (not NaN); NaN if none is.
    """

    mAP: float
    ap: dict[str, float]
    curves: dict[str, ClassResult]
    metric: str = "voc07"
    iou_threshold: float = DEFAULT_IOU_THRESHOLD

    @classmethod
    def from_curves(cls, curves: Mapping[str, ClassResult], metric: str, iou_threshold: float) -> "VOCResult":
        """Aggregate per-class results; classes with NaN AP are left out of the mean (warned)."""
        ap = {name: float(result.ap) for name, result in curves.items()}
        defined = [value for value in ap.values() if not math.isnan(value)]
        undefined = [name for name, value in ap.items() if math.isnan(value)]
        if undefined:
            logger.warning(
                "no non-difficult ground truth for class(es) %s: AP undefined (NaN), left out of the mAP",
                ", ".join(undefined),
            )
        m_ap = float(np.mean(defined)) if defined else math.nan
        return cls(mAP=m_ap, ap=ap, curves=dict(curves), metric=metric, iou_threshold=iou_threshold)

    def to_json_dict(self) -> dict:
        """``{"mAP": float, "ap": {"<class>": float}}``; NaN becomes ``None`` (JSON ``null``)."""
        return {"mAP": _json_float(self.mAP), "ap": {name: _json_float(v) for name, v in self.ap.items()}}


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def average_precision(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """The devkit's ``voc_ap``: 11-point (VOC2007) or area-under-envelope (VOC2010+) AP.

    ``recall``, ``precision``: ``[D]`` in rank order. Empty input gives 0.0.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.shape != precision.shape or recall.ndim != 1:
        raise ValueError(f"recall and precision must be 1-D of equal length, got {recall.shape} and {precision.shape}")
    if use_07_metric:
        ap = 0.0
        for threshold in _ELEVEN_POINTS:
            above = recall >= threshold
            # Summed one term at a time, in this order, as the original does.
            ap = ap + (float(np.max(precision[above])) if above.any() else 0.0) / 11.0
        return float(ap)
    # Sentinels: recall 0 and 1, precision 0, so the area starts at recall 0.
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    # Precision envelope: the running max from the right.
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    change = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[change + 1] - mrec[change]) * mpre[change + 1]))


def _devkit_iou(det_boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """Row-wise IoU ``[P]`` of ``[P, 4]`` detection and ground-truth boxes, devkit formula (+1)."""
    iw = np.maximum(np.minimum(det_boxes[:, 2], gt_boxes[:, 2]) - np.maximum(det_boxes[:, 0], gt_boxes[:, 0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(det_boxes[:, 3], gt_boxes[:, 3]) - np.maximum(det_boxes[:, 1], gt_boxes[:, 1]) + 1.0, 0.0)
    inters = iw * ih
    union = (
        (det_boxes[:, 2] - det_boxes[:, 0] + 1.0) * (det_boxes[:, 3] - det_boxes[:, 1] + 1.0)
        + (gt_boxes[:, 2] - gt_boxes[:, 0] + 1.0) * (gt_boxes[:, 3] - gt_boxes[:, 1] + 1.0)
        - inters
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        return inters / union


def _match(
    gt_boxes: np.ndarray,
    gt_image: np.ndarray,
    gt_difficult: np.ndarray,
    det_image: np.ndarray,
    det_boxes: np.ndarray,
    iou_threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """TP and FP flags ``[D]`` for detections already in rank order.

    ``gt_boxes`` ``[G, 4]``, ``gt_image`` ``[G]`` int sorted ascending (box order
    within an image preserved: it breaks IoU ties), ``gt_difficult`` ``[G]`` bool,
    ``det_image`` ``[D]`` int, ``det_boxes`` ``[D, 4]``.
    """
    num_dets = det_image.shape[0]
    if gt_boxes.shape[0] == 0:  # nothing to match: every detection is a false positive
        return np.zeros(num_dets, dtype=bool), np.ones(num_dets, dtype=bool)
    starts = np.searchsorted(gt_image, det_image, side="left")
    counts = np.searchsorted(gt_image, det_image, side="right") - starts
    # Every (detection, ground truth of the same image) pair, grouped by detection.
    pair_det = np.repeat(np.arange(num_dets), counts)
    first_pair = np.cumsum(counts) - counts
    pair_gt = np.repeat(starts - first_pair, counts) + np.arange(pair_det.shape[0])
    iou = _devkit_iou(det_boxes[pair_det], gt_boxes[pair_gt])

    ovmax = np.full(num_dets, -np.inf)
    has_gt = counts > 0
    if has_gt.any():
        ovmax[has_gt] = np.maximum.reduceat(iou, first_pair[has_gt])
    # First pair reaching its detection's max = np.argmax's choice. (A NaN IoU
    # makes ovmax NaN; such a detection fails "> threshold" below, as in the devkit.)
    at_max = np.flatnonzero(iou == ovmax[pair_det])
    firsts = at_max[np.r_[True, pair_det[at_max[1:]] != pair_det[at_max[:-1]]]] if at_max.size else at_max
    jmax = np.full(num_dets, -1, dtype=np.int64)
    jmax[pair_det[firsts]] = pair_gt[firsts]

    matched = ovmax > iou_threshold  # strict, as py-faster-rcnn
    on_difficult = matched & gt_difficult[np.maximum(jmax, 0)]
    claims = np.flatnonzero(matched & ~on_difficult)
    true_positive = np.zeros(num_dets, dtype=bool)
    # The first claim on a box (in rank order) takes it; later ones are duplicates.
    _, first_claim = np.unique(jmax[claims], return_index=True)
    true_positive[claims[first_claim]] = True
    false_positive = ~true_positive & ~on_difficult
    return true_positive, false_positive


def _evaluate_indexed(
    gt_boxes: np.ndarray,
    gt_image: np.ndarray,
    gt_difficult: np.ndarray,
    det_image: np.ndarray,
    det_scores: np.ndarray,
    det_boxes: np.ndarray,
    iou_threshold: float,
    use_07_metric: bool,
) -> ClassResult:
    """One class with images named by integer index; see ``evaluate_class``."""
    gt_order = np.argsort(gt_image, kind="stable")
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)[gt_order]
    gt_image = np.asarray(gt_image, dtype=np.int64)[gt_order]
    gt_difficult = np.asarray(gt_difficult, dtype=bool)[gt_order]
    num_positives = int(np.count_nonzero(~gt_difficult))

    rank = np.argsort(-np.asarray(det_scores, dtype=np.float64), kind="stable")
    det_image = np.asarray(det_image, dtype=np.int64)[rank]
    det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)[rank]

    true_positive, false_positive = _match(gt_boxes, gt_image, gt_difficult, det_image, det_boxes, iou_threshold)
    tp = np.cumsum(true_positive, dtype=np.float64)
    fp = np.cumsum(false_positive, dtype=np.float64)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if num_positives == 0:
        recall = np.full(tp.shape, np.nan)
        ap = math.nan
    else:
        recall = tp / float(num_positives)
        ap = average_precision(recall, precision, use_07_metric)
    return ClassResult(
        ap=ap,
        recall=recall,
        precision=precision,
        num_positives=num_positives,
        true_positive=true_positive,
        false_positive=false_positive,
    )


def evaluate_class(
    ground_truth: Mapping[str, tuple[np.ndarray, np.ndarray]],
    image_ids: Sequence[str],
    scores: np.ndarray,
    boxes: np.ndarray,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    use_07_metric: bool = True,
) -> ClassResult:
    """AP of one class, as the devkit's ``voc_eval``.

    ``ground_truth`` maps every image of the evaluated set to that image's boxes
    of this class ``[G, 4]`` and difficult flags ``[G]`` bool (empty arrays for
    images without the class). ``image_ids`` ``[D]``, ``scores`` ``[D]``,
    ``boxes`` ``[D, 4]`` are the detections of this class in input order (the
    order of the results file: it breaks score ties). A detection on an image
    missing from ``ground_truth`` raises ``ValueError`` (wrong image set), as does
    an IoU threshold outside (0, 1).
    """
    check_options("voc07" if use_07_metric else "area", iou_threshold)
    index = {image_id: i for i, image_id in enumerate(ground_truth)}
    gt_boxes_list, gt_image_list, gt_difficult_list = [], [], []
    for i, (image_id, (gt_boxes, difficult)) in enumerate(ground_truth.items()):
        if len(gt_boxes) == 0 and len(difficult) == 0:
            continue  # most images lack any one class; skip the array work
        gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
        difficult = np.asarray(difficult, dtype=bool).reshape(-1)
        if difficult.shape[0] != gt_boxes.shape[0]:
            raise ValueError(f"ground truth of image {image_id!r}: {gt_boxes.shape[0]} boxes but {difficult.shape[0]} difficult flags")
        gt_boxes_list.append(gt_boxes)
        gt_difficult_list.append(difficult)
        gt_image_list.append(np.full(gt_boxes.shape[0], i, dtype=np.int64))
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(image_ids) != scores.shape[0] or boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"detections disagree in length: {len(image_ids)} image ids, {scores.shape[0]} scores, {boxes.shape[0]} boxes")
    try:
        det_image = np.fromiter((index[image_id] for image_id in image_ids), dtype=np.int64, count=len(image_ids))
    except KeyError as error:
        raise ValueError(f"detection on image {error.args[0]!r}, which is not in the evaluated image set") from None
    return _evaluate_indexed(
        np.concatenate(gt_boxes_list) if gt_boxes_list else np.zeros((0, 4)),
        np.concatenate(gt_image_list) if gt_image_list else np.zeros(0, dtype=np.int64),
        np.concatenate(gt_difficult_list) if gt_difficult_list else np.zeros(0, dtype=bool),
        det_image,
        scores,
        boxes,
        iou_threshold,
        use_07_metric,
    )


def class_ground_truth(dataset: DetectionDataset, class_name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``evaluate_class``'s ground truth for one class: every image -> (boxes ``[G, 4]``, difficult ``[G]``)."""
    return ground_truth_by_class(dataset, (class_name,))[class_name]


def ground_truth_by_class(
    dataset: DetectionDataset, classes: Sequence[str] | None = None
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``class_ground_truth`` for several classes (default ``dataset.classes``) in one pass over the records."""
    classes = tuple(dataset.classes if classes is None else classes)
    empty = (np.zeros((0, 4), dtype=np.float64), np.zeros(0, dtype=bool))
    for array in empty:  # shared by every image without the class: keep it immutable
        array.flags.writeable = False
    result: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {name: {} for name in classes}
    for record in dataset.records:
        grouped: dict[str, list] = {}
        for obj in record.objects:
            if obj.name in result:
                grouped.setdefault(obj.name, []).append(obj)
        for name in classes:
            objects = grouped.get(name)
            result[name][record.image_id] = (
                (
                    np.array([obj.box for obj in objects], dtype=np.float64).reshape(-1, 4),
                    np.array([obj.difficult for obj in objects], dtype=bool),
                )
                if objects
                else empty
            )
    return result


def evaluate_voc(
    dataset: DetectionDataset,
    detections: Mapping[str, Detections],
    metric: str = "voc07",
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> VOCResult:
    """Per-class AP and mAP of ``detections`` (image id -> ``Detections``) on ``dataset``.

    ``metric``: ``"voc07"`` (11-point) or ``"area"`` (VOC2010+). Labels ``1..K``
    name ``dataset.classes[label - 1]``. Images of the dataset missing from
    ``detections`` have no detections; an image id in ``detections`` that is not
    in the dataset, or a label outside ``1..K``, raises ``ValueError``.
    Score ties are broken by the mapping's order, then the order within an image,
    the order ``write_voc_results`` writes the files in. Every class of
    ``dataset.classes`` is scored (AP 0 without detections); an unknown metric,
    an IoU threshold outside (0, 1) raise ``ValueError``, no class with ground
    truth :class:`NoGroundTruthError`.
    """
    use_07_metric = check_options(metric, iou_threshold)
    classes = tuple(dataset.classes)
    image_index = {record.image_id: i for i, record in enumerate(dataset.records)}
    class_index = {name: k for k, name in enumerate(classes)}

    gt_boxes, gt_label, gt_image, gt_difficult = [], [], [], []
    for i, record in enumerate(dataset.records):
        for obj in record.objects:
            k = class_index.get(obj.name)
            if k is None:  # not one of the evaluated classes
                continue
            gt_boxes.append(obj.box)
            gt_label.append(k)
            gt_image.append(i)
            gt_difficult.append(obj.difficult)
    gt_boxes_arr = np.array(gt_boxes, dtype=np.float64).reshape(-1, 4)
    gt_label_arr = np.array(gt_label, dtype=np.int64)
    gt_image_arr = np.array(gt_image, dtype=np.int64)
    gt_difficult_arr = np.array(gt_difficult, dtype=bool)

    det_image, det_label, det_scores, det_boxes = _flatten_detections(detections, image_index, len(classes))

    curves = {}
    # Group detections by class once; the stable sort keeps their input order.
    by_label = np.argsort(det_label, kind="stable")
    label_bounds = np.searchsorted(det_label[by_label], np.arange(len(classes) + 1), side="left")
    for k, name in enumerate(classes):
        sel = by_label[label_bounds[k] : label_bounds[k + 1]]
        gt_sel = gt_label_arr == k
        curves[name] = _evaluate_indexed(
            gt_boxes_arr[gt_sel],
            gt_image_arr[gt_sel],
            gt_difficult_arr[gt_sel],
            det_image[sel],
            det_scores[sel],
            det_boxes[sel],
            iou_threshold,
            use_07_metric,
        )
    return require_ground_truth(VOCResult.from_curves(curves, metric, iou_threshold), f"dataset {dataset.root}")


def _flatten_detections(
    detections: Mapping[str, Detections], image_index: Mapping[str, int], num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate per-image detections: image index ``[D]``, 0-based class ``[D]``, scores ``[D]``, boxes ``[D, 4]``."""
    images, labels, scores, boxes = [], [], [], []
    for image_id, dets in detections.items():
        i = image_index.get(image_id)
        if i is None:
            raise ValueError(
                f"detections for image {image_id!r}, which is not in the evaluated dataset (wrong image set?)"
            )
        n = len(dets)
        if n == 0:
            continue
        box = dets.boxes.detach().cpu().double().numpy().reshape(-1, 4)
        score = dets.scores.detach().cpu().double().numpy().reshape(-1)
        label = dets.labels.detach().cpu().numpy().astype(np.int64).reshape(-1)
        if box.shape[0] != n or label.shape[0] != n:
            raise ValueError(f"detections of image {image_id!r}: {box.shape[0]} boxes, {n} scores, {label.shape[0]} labels")
        if label.min() < 1 or label.max() > num_classes:
            raise ValueError(f"detections of image {image_id!r}: labels must be in 1..{num_classes}, got {sorted(set(label.tolist()))}")
        images.append(np.full(n, i, dtype=np.int64))
        labels.append(label - 1)
        scores.append(score)
        boxes.append(box)
    if not images:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4))
    return np.concatenate(images), np.concatenate(labels), np.concatenate(scores), np.concatenate(boxes)
