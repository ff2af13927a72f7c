"""Does an exported graph detect what the PyTorch model detects? Image by image, detection by detection.

Shapes: D reference (PyTorch) and E candidate (ONNX Runtime) detections of one image.

Tolerance: each reference detection must have a candidate of the same class with box IoU
>= ``min_iou`` (0.99, +1 convention) and a score within ``score_tolerance`` (1e-3), one to
one. Two float pipelines can legitimately disagree only where a score sits at a cut-off:
the score threshold, or the lowest kept score when the list is full
(``max_detections_per_image``). A detection left unmatched is therefore accepted as
*borderline* when its score is within ``score_tolerance`` of its list's cut-off; any other
unmatched detection fails the check.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from model.boxes import box_iou
from model.config import TestConfig
from model.detections import Detections

MIN_IOU = 0.99
SCORE_TOLERANCE = 1e-3


@dataclass
class ImageComparison:
    """One image: matched pairs, their worst IoU and score difference, what stayed unmatched."""

    name: str
    reference: int
    candidate: int
    matched: int
    worst_iou: float
    worst_score_difference: float
    borderline: int
    unmatched: int  # unmatched and not borderline: a failure

    @property
    def ok(self) -> bool:
        return self.unmatched == 0


@dataclass
class ExportCheck:
    """All compared images; ``ok`` when every image matched within the tolerance."""

    images: list[ImageComparison] = field(default_factory=list)
    min_iou: float = MIN_IOU
    score_tolerance: float = SCORE_TOLERANCE

    @property
    def ok(self) -> bool:
        return bool(self.images) and all(image.ok for image in self.images)

    def summary(self) -> dict:
        """Plain numbers for a report or JSON."""
        matched = [i for i in self.images if i.matched]
        return {
            "ok": self.ok,
            "images": len(self.images),
            "detections": sum(i.reference for i in self.images),
            "matched": sum(i.matched for i in self.images),
            "borderline": sum(i.borderline for i in self.images),
            "unmatched": sum(i.unmatched for i in self.images),
            "worst_iou": min((i.worst_iou for i in matched), default=1.0),
            "worst_score_difference": max((i.worst_score_difference for i in matched), default=0.0),
            "tolerance": {"min_iou": self.min_iou, "score": self.score_tolerance},
            "failed_images": [i.name for i in self.images if not i.ok],
        }


def _cutoff(det: Detections, cfg: TestConfig) -> float:
    """The score below which a detection would not have been listed."""
    full = cfg.max_detections_per_image > 0 and len(det) >= cfg.max_detections_per_image
    return float(det.scores.min()) if full else cfg.score_threshold


def compare_detections(
    name: str,
    reference: Detections,
    candidate: Detections,
    cfg: TestConfig,
    min_iou: float = MIN_IOU,
    score_tolerance: float = SCORE_TOLERANCE,
) -> ImageComparison:
    """Match ``candidate`` to ``reference`` one to one (highest reference score first, best IoU)."""
    iou = box_iou(reference.boxes.float(), candidate.boxes.float())  # [D, E]
    fits = (
        (iou >= min_iou)
        & (reference.labels[:, None] == candidate.labels[None, :])
        & ((reference.scores[:, None] - candidate.scores[None, :]).abs() <= score_tolerance)
    )
    taken = torch.zeros(len(candidate), dtype=torch.bool)
    matched_ref: list[int] = []
    worst_iou, worst_diff = 1.0, 0.0
    for r in torch.argsort(reference.scores, descending=True, stable=True).tolist():
        options = fits[r] & ~taken
        if not bool(options.any()):
            continue
        c = int(torch.where(options, iou[r], torch.full_like(iou[r], -1.0)).argmax())
        taken[c] = True
        matched_ref.append(r)
        worst_iou = min(worst_iou, float(iou[r, c]))
        worst_diff = max(worst_diff, abs(float(reference.scores[r] - candidate.scores[c])))
    left_ref = _unmatched_scores(reference.scores, matched_ref)
    left_cand = candidate.scores[~taken]
    borderline = unmatched = 0
    for scores, det in ((left_ref, reference), (left_cand, candidate)):
        if scores.numel() == 0:
            continue
        near = (scores - _cutoff(det, cfg)).abs() <= score_tolerance
        borderline += int(near.sum())
        unmatched += int((~near).sum())
    return ImageComparison(
        name=name,
        reference=len(reference),
        candidate=len(candidate),
        matched=len(matched_ref),
        worst_iou=worst_iou,
        worst_score_difference=worst_diff,
        borderline=borderline,
        unmatched=unmatched,
    )


def _unmatched_scores(scores: Tensor, matched: list[int]) -> Tensor:
    keep = torch.ones(scores.shape[0], dtype=torch.bool)
    keep[matched] = False
    return scores[keep]


def check_export(
    images: Iterable[tuple[str, Tensor, float]],
    reference: Callable[[Tensor, float], Detections],
    candidate: Callable[[Tensor, float], Detections],
    cfg: TestConfig,
) -> ExportCheck:
    """Compare ``reference(image, scale)`` with ``candidate(image, scale)`` on each ``(name, image, scale)``."""
    check = ExportCheck()
    for name, image, scale in images:
        ref = reference(image, scale)
        got = candidate(image, scale)
        check.images.append(
            compare_detections(name, Detections(ref.boxes.cpu(), ref.scores.cpu(), ref.labels.cpu()), got, cfg)
        )
    return check
