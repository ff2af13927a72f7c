"""Fast R-CNN multi-task loss (Fast R-CNN paper eq. 1, as py-faster-rcnn's layers compute it).

Shapes: R RoIs (all sampled RoIs of the batch), K foreground classes.

- ``det_cls``: softmax cross-entropy averaged over the R RoIs (``SoftmaxWithLoss``,
  ``normalize: true``);
- ``det_reg``: smooth L1 with ``sigma`` on the 4 columns of each foreground RoI's own
  class, summed and divided by R: Caffe's ``SmoothL1Loss`` divides by the batch count,
  background rows contribute zero through their zero inside-weights.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from model.boxes import smooth_l1


def detector_loss(
    class_logits: Tensor,
    box_deltas: Tensor,
    labels: Tensor,
    targets: Tensor,
    sigma: float = 1.0,
) -> dict[str, Tensor]:
    """``{"det_cls", "det_reg"}`` scalars.

    ``class_logits`` ``[R, K+1]``, ``box_deltas`` ``[R, 4(K+1)]`` and ``targets`` ``[R, 4]``
    both in normalised target space, ``labels`` ``[R]`` int64 in 0..K. R = 0 gives zeros
    that stay connected to the graph.
    """
    num_rois = class_logits.shape[0]
    if box_deltas.shape != (num_rois, 4 * class_logits.shape[1]):
        raise ValueError(
            f"box_deltas must be [R, 4(K+1)] = [{num_rois}, {4 * class_logits.shape[1]}], got {tuple(box_deltas.shape)}"
        )
    if labels.shape != (num_rois,) or targets.shape != (num_rois, 4):
        raise ValueError(f"labels must be [R] and targets [R, 4] with R = {num_rois}, got "
                         f"{tuple(labels.shape)} and {tuple(targets.shape)}")
    if num_rois == 0:
        zero = class_logits.sum() * 0.0 + box_deltas.sum() * 0.0
        return {"det_cls": zero, "det_reg": zero.clone()}
    cls_loss = F.cross_entropy(class_logits, labels)
    fg = (labels > 0).nonzero().squeeze(1)
    per_class = box_deltas.reshape(num_rois, -1, 4)
    fg_deltas = per_class[fg, labels[fg]]  # [F, 4]: each RoI's own class
    reg_loss = smooth_l1(fg_deltas, targets[fg], sigma).sum() / num_rois
    return {"det_cls": cls_loss, "det_reg": reg_loss}

