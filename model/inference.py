"""Running a trained detector over a whole dataset: RPN proposals, or final detections.

Shapes: P proposals, D detections per image; all boxes in original-image pixels,
0-based inclusive (see ``model``). Images are resized the test way (no flip).
``precision`` ("float32" / "bfloat16", ``model.precision``; None: ``FRCNN_PRECISION``, else
float32) is the network's compute precision.

Several processes (``torchrun``, ``model.distributed``): each runs its share of the images
(every N-th, from its rank) and every process gets back the whole dict in the dataset's
order (``gather_shards``); each image's result is what one process alone would compute
for it. Without a process group nothing is shared and nothing is sent.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from model.config import ProposalConfig
from model.data.images import load_image_rgb
from model.data.records import DetectionDataset, ImageRecord
from model.data.transforms import prepare_image
from model.batching import chunks
from model.detections import Detections
from model.detector import Detector
from model.distributed import World, current_world, gather
from model.faster_rcnn import FasterRCNN
from model.precision import autocast


def shard_records(records: Sequence[ImageRecord], world: World) -> list[ImageRecord]:
    """This process's images: every ``world.size``-th from ``world.rank`` (interleaved, so
    the shards are about equally hard when image sizes drift along the list)."""
    return list(records[world.rank :: world.size])


def _world_for(world: World | None, proposal_cfg: ProposalConfig | None) -> World:
    """The processes that share the images: ``world`` (None: the current group's), or this
    process alone when proposals are ranked at random (the draws follow the image order
    from one generator, so a shard would draw other numbers than the serial run)."""
    if proposal_cfg is not None and proposal_cfg.ranking != "score":
        return World()
    return current_world() if world is None else world


def gather_shards(part: dict[str, object], records: Sequence[ImageRecord], world: World) -> dict[str, object]:
    """Every process's ``part`` (image id -> result) merged, in ``records``' order."""
    if world.size <= 1:
        return part
    merged: dict[str, object] = {}
    for other in gather(part, world):
        merged.update(other)
    return {record.image_id: merged[record.image_id] for record in records}


def _input(model: Detector, record: ImageRecord) -> tuple[Tensor, float]:
    image, scale = prepare_image(load_image_rgb(record.path), model.cfg.min_size, model.cfg.max_size)
    device = next(model.parameters()).device
    return image.to(device), scale


def _inputs(model: Detector, records: Sequence[ImageRecord]) -> tuple[list[Tensor], list[float]]:
    pairs = [_input(model, record) for record in records]
    return [image for image, _ in pairs], [scale for _, scale in pairs]


def propose_dataset(
    model: FasterRCNN,
    dataset: DetectionDataset,
    proposal_cfg: ProposalConfig | None = None,
    progress: bool = True,
    generator: torch.Generator | None = None,
    batch_size: int = 1,
    precision: str | None = None,
    world: World | None = None,
) -> dict[str, tuple[Tensor, Tensor]]:
    """``image_id -> (boxes [P, 4], scores [P])`` on the CPU, in the RPN's rank order.

    ``proposal_cfg`` defaults to ``cfg.test_proposals``; for caching proposals to train a
    detector on, pass ``cfg.cache_proposals`` (all -> NMS -> 2000). With the default "score"
    ranking the order is by decreasing score; with "random" ranking it is the random rank,
    drawn from ``generator`` (None: torch's global one). ``batch_size`` images go through
    the trunk at once (one padded batch). ``world`` (None: the current process group's)
    shares the images out, except with random ranking, whose draws follow the image order
    from one generator: then every process proposes on all of them.
    """
    world = _world_for(world, proposal_cfg or model.cfg.test_proposals)
    mine = shard_records(dataset.records, world)
    out: dict[str, tuple[Tensor, Tensor]] = {}
    with tqdm(total=len(mine), desc="proposals", disable=not progress, dynamic_ncols=True) as bar:
        for records in chunks(mine, batch_size):
            images, scales = _inputs(model, records)
            with autocast(images[0].device, precision):
                batch = model.propose_batch(images, scales, proposal_cfg, generator)
            for record, (boxes, scores) in zip(records, batch):
                out[record.image_id] = (boxes.cpu(), scores.cpu())
            bar.update(len(records))
    return gather_shards(out, dataset.records, world)  # type: ignore[return-value]


def detect_dataset(
    model: Detector,
    dataset: DetectionDataset,
    proposals: Mapping[str, Tensor | tuple[Tensor, Tensor]] | None = None,
    progress: bool = True,
    batch_size: int = 1,
    precision: str | None = None,
    world: World | None = None,
) -> dict[str, Detections]:
    """``image_id -> Detections`` (CPU tensors) for every image of ``dataset``.

    ``model`` is any ``model.detector.Detector`` (two-stage or one-stage). ``proposals``
    (``image_id -> [P, 4]`` original pixels, or ``(boxes, scores)``) replace a two-stage
    model's own RPN, e.g. selective-search or cached boxes for the ablations; every image
    must then have an entry. ``batch_size`` images go through the trunk at once.
    ``world`` (None: the current process group's) shares the images out (not when the
    model's own RPN ranks at random, as ``propose_dataset``).
    """
    own_rpn = getattr(model.cfg, "test_proposals", None) if proposals is None else None
    world = _world_for(world, own_rpn)
    if proposals is not None:
        missing = [r.image_id for r in dataset.records if r.image_id not in proposals]
        if missing:
            raise ValueError(
                f"proposals are missing for {len(missing)} of {len(dataset.records)} images, "
                f"e.g. {missing[:5]}"
            )
    results: dict[str, Detections] = {}
    mine = shard_records(dataset.records, world)
    with tqdm(total=len(mine), desc="detect", disable=not progress, dynamic_ncols=True) as bar:
        for records in chunks(mine, batch_size):
            images, scales = _inputs(model, records)
            boxes = None
            if proposals is not None:
                values = [proposals[record.image_id] for record in records]
                boxes = [v[0] if isinstance(v, (tuple, list)) else v for v in values]
            with autocast(images[0].device, precision):
                detections = model.detect_batch(images, scales, boxes)
            for record, det in zip(records, detections):
                results[record.image_id] = Detections(det.boxes.cpu(), det.scores.cpu(), det.labels.cpu())
            bar.update(len(records))
    return gather_shards(results, dataset.records, world)  # type: ignore[return-value]
