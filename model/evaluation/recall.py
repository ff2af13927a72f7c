"""Proposal recall: how many ground-truth boxes the top-N proposals cover (paper fig. 4).

Shapes: G non-difficult ground-truth boxes of an image, P proposals of an
image (sorted by score, descending), N = ``len(top_ns)``, T = ``len(iou_thresholds)``.

A ground-truth box is recalled at threshold t by the top-N proposals when its
largest IoU (+1 convention, ``model.boxes.box_iou``) with any of the first N
proposals is >= t. Recall pools every non-difficult box of the dataset, whatever
its class. Average recall (Hosang et al., "What makes for effective detection
proposals?") is the mean of recall over the IoU thresholds 0.5:0.05:0.95.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model.boxes import box_iou
from model.data.records import DetectionDataset

logger = logging.getLogger(__name__)

DEFAULT_TOP_NS: tuple[int, ...] = (300, 1000, 2000)
# Written out rather than np.arange(0.5, 0.96, 0.05): arange's 0.6000000000000001
# would wrongly fail an IoU of exactly 0.6 under ">=".
DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


@dataclass
class RecallResult:
    """``recall`` ``[N, T]``: fraction of the ``num_gt`` boxes recalled per (top N, threshold)."""

    top_ns: tuple[int, ...]
    iou_thresholds: tuple[float, ...]
    recall: np.ndarray
    num_gt: int
    num_images: int

    @property
    def average_recall(self) -> dict[int, float]:
        """Mean recall over the IoU thresholds, per top N."""
        return {n: float(self.recall[i].mean()) for i, n in enumerate(self.top_ns)}

    def to_json_dict(self) -> dict:
        """``{"num_gt", "num_images", "average_recall": {"300": ..}, "recall": {"300": {"0.5": ..}}}``; NaN -> null."""
        return {
            "num_gt": self.num_gt,
            "num_images": self.num_images,
            "average_recall": {str(n): _json_float(ar) for n, ar in self.average_recall.items()},
            "recall": {
                str(n): {f"{t:g}": _json_float(self.recall[i, j]) for j, t in enumerate(self.iou_thresholds)}
                for i, n in enumerate(self.top_ns)
            },
        }

    def to_rows(self) -> list[dict]:
        """One row per (top N, threshold) for a CSV: ``top_n, iou_threshold, recall, num_gt``."""
        return [
            {"top_n": n, "iou_threshold": t, "recall": float(self.recall[i, j]), "num_gt": self.num_gt}
            for i, n in enumerate(self.top_ns)
            for j, t in enumerate(self.iou_thresholds)
        ]


def _json_float(value: float) -> float | None:
    """NaN (no ground truth) becomes ``None`` so the JSON stays valid."""
    return None if np.isnan(value) else float(value)


def best_iou_per_gt(gt_boxes: torch.Tensor, proposals: torch.Tensor, top_ns: Sequence[int]) -> np.ndarray:
    """``[G, N]``: each ground-truth box's largest IoU with the first ``n`` proposals, per ``n``.

    ``gt_boxes`` ``[G, 4]``, ``proposals`` ``[P, 4]`` sorted by score; 0 where there is no proposal.
    """
    num_gt = gt_boxes.shape[0]
    best = np.zeros((num_gt, len(top_ns)), dtype=np.float64)
    if num_gt == 0 or proposals.shape[0] == 0:
        return best
    iou = box_iou(gt_boxes.to(torch.float64), proposals.to(torch.float64))  # [G, P]
    # Running max along the ranking: column p holds the best IoU among the first p + 1.
    running = torch.cummax(iou, dim=1).values
    columns = torch.tensor([min(n, proposals.shape[0]) - 1 for n in top_ns], dtype=torch.int64)
    return running[:, columns].numpy()


def proposal_recall(
    dataset: DetectionDataset,
    proposals: Mapping[str, torch.Tensor],
    top_ns: Sequence[int] = DEFAULT_TOP_NS,
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
) -> RecallResult:
    """Recall of the top-N ``proposals`` (image id -> ``[P, 4]``, sorted by score) per IoU threshold.

    Images of the dataset without an entry have no proposals (their boxes are
    missed; warned). An entry for an image not in the dataset raises ``ValueError``.
    """
    top_ns = tuple(int(n) for n in top_ns)
    if not top_ns or min(top_ns) < 1:
        raise ValueError(f"top_ns must be positive, got {top_ns}")
    thresholds = np.asarray(tuple(float(t) for t in iou_thresholds), dtype=np.float64)
    if thresholds.size == 0:
        raise ValueError("iou_thresholds is empty")
    known = {record.image_id for record in dataset.records}
    unknown = [image_id for image_id in proposals if image_id not in known]
    if unknown:
        raise ValueError(f"proposals for {len(unknown)} image(s) not in the dataset, e.g. {unknown[0]!r} (wrong split?)")
    missing = 0
    bests = []
    for record in dataset.records:
        gt = [obj.box for obj in record.objects if not obj.difficult]
        boxes = proposals.get(record.image_id)
        if boxes is None:
            missing += 1
            boxes = torch.zeros((0, 4))
        boxes = boxes.detach().cpu()
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"proposals of image {record.image_id!r} have shape {tuple(boxes.shape)}, expected [P, 4]")
        if gt:
            bests.append(best_iou_per_gt(torch.tensor(gt, dtype=torch.float64), boxes, top_ns))
    if missing:
        logger.warning("%d of %d images have no proposals; their boxes count as missed", missing, len(dataset))
    best = np.concatenate(bests) if bests else np.zeros((0, len(top_ns)))  # [num_gt, N]
    num_gt = best.shape[0]
    if num_gt == 0:
        logger.warning("no non-difficult ground-truth boxes: recall undefined (NaN)")
        recall = np.full((len(top_ns), thresholds.size), np.nan)
    else:
        recall = (best[:, :, None] >= thresholds[None, None, :]).mean(axis=0)  # [N, T]
    return RecallResult(
        top_ns=top_ns,
        iou_thresholds=tuple(thresholds.tolist()),
        recall=recall,
        num_gt=num_gt,
        num_images=len(dataset),
    )
