"""The RPN loss, paper eq. (1), with py-faster-rcnn's normalisation.

Shapes: N anchors (one image), labels -1 ignored / 0 negative / 1 positive.

- ``rpn_cls``: two-way softmax cross-entropy averaged over the sampled anchors (labels != -1),
  i.e. 1 / N_cls with N_cls = the mini-batch size (256).
- ``rpn_reg``: smooth L1 (sigma 3, summed over the four deltas) over positives only, summed and
  divided by the number of sampled anchors: the original puts ``1 / num_examples`` in the
  outside weights, so the paper's lambda * 1 / N_reg balance is replaced by this equal weighting.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from model.boxes import smooth_l1


def rpn_loss(
    objectness_logits: Tensor,
    deltas: Tensor,
    labels: Tensor,
    targets: Tensor,
    sigma: float = 3.0,
) -> dict[str, Tensor]:
    """``{"rpn_cls", "rpn_reg"}`` scalars from logits ``[N, 2]``, deltas ``[N, 4]``, labels
    ``[N]`` and targets ``[N, 4]``. No sampled anchor gives zeros that still backpropagate."""
    sampled = labels >= 0
    num_sampled = int(sampled.sum())
    if num_sampled == 0:
        # Zero attached to the graph, so backward() and optimiser steps still work.
        return {
            "rpn_cls": objectness_logits.sum() * 0.0,
            "rpn_reg": deltas.sum() * 0.0,
        }
    cls = F.cross_entropy(objectness_logits[sampled], labels[sampled])
    positive = labels == 1
    reg = smooth_l1(deltas[positive], targets[positive], sigma).sum() / num_sampled
    return {"rpn_cls": cls, "rpn_reg": reg}
