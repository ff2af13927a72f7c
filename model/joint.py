"""Approximate joint training (paper sec. 3.2, ii): RPN and Fast R-CNN as one network, one SGD.

Shapes: B images per iteration (``ims_per_batch``), G_i gt boxes, P_i proposals, R RoIs of the
batch; boxes in network-input pixels.

Each iteration, for one padded batch of images (``FasterRCNN.joint_losses_batch``):

- forward: the shared convs once; the RPN's loss on its sampled anchors (per image, averaged
  over the images) and its proposals, ``cfg.train_proposals`` (12000 -> NMS 0.7 -> 2000, as
  py-faster-rcnn's end2end training); the proposals feed the RoI sampling (the same
  ``cfg.roi`` sampling as the alternating detector steps: gt boxes appended, 25 % foreground)
  and the detector's loss over all RoIs of the batch;
- backward: one loss, ``rpn_cls + rpn_reg + det_cls + det_reg`` (the paper's weighting, all
  terms 1 with the original's normalisations); the proposal coordinates get no gradient
  (they are computed under ``no_grad``), which is what makes it "approximate"; the shared
  convs get both losses' gradients.

The detector's box targets are normalised with the fixed ``cfg.roi.target_means`` /
``target_stds`` (defaults 0 and (0.1, 0.1, 0.2, 0.2), py-faster-rcnn's end2end values): the
proposals move while training, so there are no precomputed statistics as in the alternating
steps. Everything else (optimiser, schedule, image order and flips, determinism, NaN guard,
checkpoints every ``checkpoint_every`` iterations and resuming from them) is
``model.training``'s loop, as for ``train_rpn`` and ``train_detector``.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from model.data.records import DetectionDataset, ImageRecord
from model.data.transforms import record_boxes_labels
from model.faster_rcnn import FasterRCNN
from model.roi import detector_loss
from model.training import LogFn, TrainSchedule, load_batch, run_training

JOINT_STEP = "joint"


def train_joint(
    model: FasterRCNN,
    dataset: DetectionDataset,
    schedule: TrainSchedule,
    checkpoint_path: Path | str,
    trainable_groups: Iterable[str] = FasterRCNN.GROUPS,
    resume: bool = True,
    progress: bool = True,
    on_log: LogFn | None = None,
    extra: dict | None = None,
) -> list[dict[str, float]]:
    """Train shared convs + RPN + detector end to end; returns per-iteration
    ``{"rpn_cls", "rpn_reg", "det_cls", "det_reg", "total", "lr"}``.

    ``schedule.ims_per_batch`` None means 2, the alternating detector steps' batch (so the RoI
    sampling is theirs: 2 x ``roi.batch_size_per_image``). Start ``model`` from the same
    initial weights as step 1 of the alternating training for a like-for-like comparison.
    """
    cfg = model.cfg
    records = [r for r in dataset.records if len(record_boxes_labels(r, cfg.class_names)[0]) > 0]
    if not records:
        raise ValueError(f"{dataset.root}: no training image has a non-difficult object")
    if cfg.roi.normalize_targets:
        model.roi_head.set_target_stats(cfg.roi.target_means, cfg.roi.target_stds)

    def batch_losses(
        batch: list[tuple[ImageRecord, bool]], generator: torch.Generator, device: torch.device
    ) -> dict[str, Tensor]:
        images, gt_boxes, gt_labels, scales = load_batch(batch, cfg, device)
        rpn, terms = model.joint_losses_batch(images, gt_boxes, gt_labels, scales, generator)
        if terms is None:  # cannot happen with gt boxes among the candidates; kept explicit
            ids = [record.image_id for record, _ in batch]
            raise RuntimeError(f"no RoI could be sampled from images {ids}")
        return {**rpn, **detector_loss(*terms, sigma=cfg.roi.sigma)}

    return run_training(
        model, JOINT_STEP, records, schedule, schedule.ims_per_batch or 2, Path(checkpoint_path),
        trainable_groups, resume, progress, on_log, batch_losses, extra,
    )
