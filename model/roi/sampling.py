"""Which RoIs the Fast R-CNN detector trains on, and their labels and box targets.

Shapes: P proposals, G ground-truth boxes, R sampled RoIs, K foreground classes; all
boxes in network-input pixels (gt boxes already multiplied by the input scale).

As py-faster-rcnn's ``proposal_target_layer`` / ``roi_data_layer``:

1. the gt boxes are appended to the proposals, so every image has foreground candidates;
2. every candidate takes the gt box of highest IoU (first one on ties; ``roi_matcher``);
3. foreground: max IoU ``>= foreground_iou``; at most
   ``round(foreground_fraction * batch_size_per_image)`` of them, a random subset
   without replacement;
4. background: max IoU in ``[background_iou_low, background_iou_high)``, a random
   subset filling the rest of the batch (``model.sampler.roi_sampler``; a candidate in both
   ranges, possible only when ``background_iou_high > foreground_iou``, is foreground);
5. R is smaller than the batch size when candidates run out.

With no gt box (G = 0) every candidate has IoU 0 and is background exactly when
``background_iou_low <= 0`` (the default 0.0 of py-faster-rcnn); with the paper's 0.1 such
an image yields nothing and ``is_empty`` says so (the trainer drops it, as the original's
roidb filter drops images without a foreground or background RoI).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model.boxes import box_iou, encode_boxes
from model.config import RoIConfig
from model.matcher import Matcher
from model.sampler import roi_sampler


@dataclass
class RoISample:
    """Sampled RoIs of one image, foreground rows first.

    rois ``[R, 4]`` float (input pixels), labels ``[R]`` int64 in 0..K (0 background),
    targets ``[R, 4]`` = ``encode_boxes(roi, matched gt)`` on foreground rows, zero on
    background rows (not yet normalised).
    """

    rois: Tensor
    labels: Tensor
    targets: Tensor

    @property
    def num_foreground(self) -> int:
        return int((self.labels > 0).sum())

    @property
    def num_background(self) -> int:
        return int((self.labels == 0).sum())

    @property
    def is_empty(self) -> bool:
        """No foreground and no background RoI: the image contributes nothing."""
        return self.rois.shape[0] == 0


def roi_matcher(cfg: RoIConfig) -> Matcher:
    """The detector's rule: foreground from ``foreground_iou``, background in
    ``[background_iou_low, background_iou_high)``, no low-quality matches."""
    return Matcher(cfg.foreground_iou, cfg.background_iou_high, background_floor=cfg.background_iou_low)


def sample_rois(
    proposals: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    cfg: RoIConfig,
    generator: torch.Generator | None = None,
) -> RoISample:
    """Sample up to ``cfg.batch_size_per_image`` RoIs from ``proposals`` ``[P, 4]`` + ``gt_boxes`` ``[G, 4]``.

    ``gt_labels`` ``[G]`` int64 in 1..K. ``generator`` (a CPU ``torch.Generator``) makes
    the random subsets reproducible.
    """
    if proposals.dim() != 2 or proposals.shape[1] != 4:
        raise ValueError(f"proposals must be [P, 4], got {tuple(proposals.shape)}")
    if gt_boxes.dim() != 2 or gt_boxes.shape[1] != 4:
        raise ValueError(f"gt_boxes must be [G, 4], got {tuple(gt_boxes.shape)}")
    if gt_labels.shape != (gt_boxes.shape[0],):
        raise ValueError(f"gt_labels must be [G] = [{gt_boxes.shape[0]}], got {tuple(gt_labels.shape)}")
    if gt_labels.numel() and int(gt_labels.min()) < 1:
        raise ValueError("gt_labels must be foreground classes 1..K (0 is the background)")

    gt_boxes = gt_boxes.to(proposals)
    candidates = torch.cat([proposals, gt_boxes], dim=0)
    match = roi_matcher(cfg)(box_iou(candidates, gt_boxes))
    fg, bg = roi_sampler(cfg.batch_size_per_image, cfg.foreground_fraction)(match.labels, generator)

    keep = torch.cat([fg, bg])
    rois = candidates[keep]
    labels = torch.zeros(keep.numel(), dtype=torch.int64, device=candidates.device)
    targets = candidates.new_zeros((keep.numel(), 4))
    if fg.numel():
        matched = match.matched[fg]
        labels[: fg.numel()] = gt_labels.to(candidates.device)[matched]
        targets[: fg.numel()] = encode_boxes(rois[: fg.numel()], gt_boxes[matched])
    return RoISample(rois=rois, labels=labels, targets=targets)
