"""Max-IoU matching of candidate boxes (anchors, proposals) to ground-truth boxes.

Shapes: N candidates, G gt boxes; ``iou`` ``[N, G]`` (``model.boxes.box_iou(candidates, gt)``).

One rule serves the RPN's anchor labelling (py-faster-rcnn's ``anchor_target_layer``), the
detector's RoI sampling (``proposal_target_layer``), the one-stage detector's windows and the
box-target statistics:

1. every candidate takes the gt of highest IoU, the first one on ties (``np.argmax``);
2. background (0): ``background_floor <= max IoU < background_below``;
3. foreground (1): ``max IoU >= foreground_from`` (overrides 2 when the two ranges overlap);
4. with ``allow_low_quality_matches``, also foreground: for every gt the candidate(s) whose IoU
   with it equals that gt's best IoU, ties included (the RPN's rule, paper sec. 3.1.2). As in
   the original this does not ask the best IoU to be above zero: a gt that overlaps no
   candidate makes every candidate of zero IoU to it foreground (see ``model.rpn.targets``);
5. anything else is -1 (between the thresholds: neither).

With no gt (G = 0) every max IoU is 0 and the match index 0 (unused by callers).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Match:
    """``matched`` ``[N]`` int64 gt index, ``max_iou`` ``[N]``, ``labels`` ``[N]`` int64 (-1 / 0 / 1)."""

    matched: Tensor
    max_iou: Tensor
    labels: Tensor


@dataclass(frozen=True)
class Matcher:
    """Thresholds of one matching rule (see the module doc).

    RPN: ``Matcher(0.7, 0.3, allow_low_quality_matches=True)``; RoIs:
    ``Matcher(0.5, 0.5, background_floor=0.0)`` (py-faster-rcnn) or 0.1 (the Fast R-CNN paper).
    """

    foreground_from: float
    background_below: float
    background_floor: float = float("-inf")
    allow_low_quality_matches: bool = False

    def __call__(self, iou: Tensor) -> Match:
        if iou.dim() != 2:
            raise ValueError(f"iou must be [N, G], got {tuple(iou.shape)}")
        num, num_gt = iou.shape
        if num_gt == 0:
            max_iou = iou.new_zeros(num)
            matched = torch.zeros(num, dtype=torch.int64, device=iou.device)
        else:
            max_iou, matched = iou.max(dim=1)  # first max on ties, as np.argmax
        labels = torch.full((num,), -1, dtype=torch.int64, device=iou.device)
        labels[(max_iou >= self.background_floor) & (max_iou < self.background_below)] = 0
        if self.allow_low_quality_matches and num_gt > 0 and num > 0:
            gt_best = iou.max(dim=0).values  # [G]
            labels[(iou == gt_best[None, :]).any(dim=1)] = 1
        labels[max_iou >= self.foreground_from] = 1
        return Match(matched=matched, max_iou=max_iou, labels=labels)
