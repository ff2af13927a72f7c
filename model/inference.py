"""Running a trained detector over a whole dataset: RPN proposals, or final detections.

Shapes: P proposals, D detections per image; all boxes in original-image pixels,
0-based inclusive (see ``model``). Images are resized the test way (no flip).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from tqdm.auto import tqdm

from model.config import ProposalConfig
from model.data.images import load_image_rgb
from model.data.records import DetectionDataset, ImageRecord
from model.data.transforms import prepare_image
from model.detections import Detections
from model.faster_rcnn import FasterRCNN


def _input(model: FasterRCNN, record: ImageRecord) -> tuple[Tensor, float]:
    image, scale = prepare_image(load_image_rgb(record.path), model.cfg.min_size, model.cfg.max_size)
    device = next(model.parameters()).device
    return image.to(device), scale


def propose_dataset(
    model: FasterRCNN,
    dataset: DetectionDataset,
    proposal_cfg: ProposalConfig | None = None,
    progress: bool = True,
    generator: torch.Generator | None = None,
) -> dict[str, tuple[Tensor, Tensor]]:
    """``image_id -> (boxes [P, 4], scores [P])`` on the CPU, in the RPN's rank order.

    ``proposal_cfg`` defaults to ``cfg.test_proposals``; for caching proposals to train a
    detector on, pass ``cfg.cache_proposals`` (all -> NMS -> 2000). With the default "score"
    ranking the order is by decreasing score; with "random" ranking it is the random rank,
    drawn from ``generator`` (None: torch's global one).
    """
    out: dict[str, tuple[Tensor, Tensor]] = {}
    for record in tqdm(dataset.records, desc="proposals", disable=not progress, dynamic_ncols=True):
        image, scale = _input(model, record)
        boxes, scores = model.propose(image, scale, proposal_cfg, generator)
        out[record.image_id] = (boxes.cpu(), scores.cpu())
    return out


def detect_dataset(
    model: FasterRCNN,
    dataset: DetectionDataset,
    proposals: Mapping[str, Tensor | tuple[Tensor, Tensor]] | None = None,
    progress: bool = True,
) -> dict[str, Detections]:
    """``image_id -> Detections`` (CPU tensors) for every image of ``dataset``.

    ``proposals`` (``image_id -> [P, 4]`` original pixels, or ``(boxes, scores)``) replace
    the model's own RPN, e.g. selective-search or cached boxes for the ablations; every
    image must then have an entry.
    """
    if proposals is not None:
        missing = [r.image_id for r in dataset.records if r.image_id not in proposals]
        if missing:
            raise ValueError(
                f"proposals are missing for {len(missing)} of {len(dataset.records)} images, "
                f"e.g. {missing[:5]}"
            )
    results: dict[str, Detections] = {}
    for record in tqdm(dataset.records, desc="detect", disable=not progress, dynamic_ncols=True):
        image, scale = _input(model, record)
        boxes = None
        if proposals is not None:
            value = proposals[record.image_id]
            boxes = value[0] if isinstance(value, (tuple, list)) else value
        det = model.detect(image, scale, boxes)
        results[record.image_id] = Detections(det.boxes.cpu(), det.scores.cpu(), det.labels.cpu())
    return results
