"""SGD training of the RPN steps and the Fast R-CNN detector steps of the alternating scheme.

Shapes: P proposals per image (original-image pixels), G gt boxes, R sampled RoIs.

What follows the original (py-faster-rcnn's solvers and prototxts):

- SGD, momentum 0.9, weight decay 5e-4; biases get twice the learning rate
  (``lr_mult: 2``) and the same weight decay (the prototxts leave ``decay_mult`` at its
  default of 1; ``TrainSchedule.bias_weight_decay`` turns it off as many ports do);
- a "multistep" schedule by iteration: ``lr = base_lr * gamma ** (#steps <= iteration)``
  with the iteration counted from 0;
- one image per RPN iteration, two per detector iteration with the loss averaged over the
  RoIs of both (128 = 2 x 64), as one Caffe batch does (``ims_per_batch`` changes it); the
  images of an iteration go through the trunk as one padded batch, the RPN loss is each
  image's (over its sampled anchors) averaged over the images;
- the training images plus their mirror images (``flip``) in a shuffled order, reshuffled
  each pass; images without any usable sample are dropped first (``filter_roidb``):
  for the RPN images without a non-difficult object, for the detector images where
  neither a foreground nor a background RoI exists;
- detector box targets normalised with the empirical mean and std of the targets of every
  proposal (and gt box) with IoU >= ``foreground_iou`` over the training images, mirror
  images included (``add_bbox_regression_targets``). Unlike the original these are pooled
  over the classes (the head keeps one ``[4]`` mean/std), and they live in the detector's
  buffers rather than being folded into the weights.

One difference: PyTorch's SGD multiplies the momentum buffer by the current learning rate,
Caffe accumulates ``lr * grad``; the two agree except for the few iterations after a
learning-rate step.

Runs are deterministic on the CPU for a given ``seed``: image order and flips come from a
seeded numpy RandomState, anchor/RoI sampling from a seeded ``torch.Generator``, dropout
from the global torch RNG, which is seeded inside a ``fork_rng`` block (the caller's RNG
state is left alone). All three states go into the checkpoints, so an interrupted run
resumed from its last checkpoint ends with the same weights as a straight run.

Several processes (``torchrun``, ``model.distributed``): each trains on its shard of
every iteration's images, gradients averaged; one process is the loop above, unchanged.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from model.boxes import box_iou, encode_boxes
from model.checkpoint import CheckpointError, load_group_state, read_checkpoint, save_checkpoint
from model.data.records import DetectionDataset, ImageRecord
from model.data.transforms import compute_scale, flip_boxes, load_training_sample, record_boxes_labels
from model.config import DetectorConfig
from model.detector import Detector
from model.distributed import average_gradients, average_values, broadcast_state, current_world, gather, shard
from model.faster_rcnn import FasterRCNN
from model.roi import detector_loss
from model.roi.sampling import roi_matcher

LogFn = Callable[[int, dict[str, float]], None]
# Schedule fields that may change between an interrupted run and its resumption.
_RESUMABLE_CHANGES = ("iterations", "checkpoint_every")


class TrainingDiverged(RuntimeError):
    """A loss (or a weight about to be saved) became NaN or infinite."""


@dataclass
class TrainSchedule:
    """How long and how fast one training step runs.

    ``ims_per_batch`` None means the original's choice: 1 image per RPN iteration,
    2 per detector iteration.
    """

    iterations: int
    base_lr: float = 1e-3
    lr_steps: tuple[int, ...] = ()
    gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bias_lr_factor: float = 2.0
    ims_per_batch: int | None = None
    flip: bool = True
    checkpoint_every: int = 100
    seed: int = 0
    bias_weight_decay: bool = True
    # Not in the original (0 keeps its schedule): a linear ramp from warmup_factor x lr to
    # lr over the first iterations steadies short fine-tuning runs at high rates.
    warmup_iterations: int = 0
    warmup_factor: float = 1.0 / 3.0

    def __post_init__(self) -> None:
        self.lr_steps = tuple(int(s) for s in self.lr_steps)
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.ims_per_batch is not None and self.ims_per_batch < 1:
            raise ValueError(f"ims_per_batch must be >= 1, got {self.ims_per_batch}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.warmup_iterations < 0 or not 0.0 < self.warmup_factor <= 1.0:
            raise ValueError(
                f"warmup_iterations must be >= 0 and warmup_factor in (0, 1], got "
                f"{self.warmup_iterations} / {self.warmup_factor}"
            )

    def learning_rate(self, iteration: int) -> float:
        """Base learning rate at 0-based ``iteration`` (Caffe's "multistep", then the warm-up)."""
        lr = self.base_lr * self.gamma ** sum(1 for s in self.lr_steps if iteration >= s)
        if iteration < self.warmup_iterations:
            progress = iteration / self.warmup_iterations
            lr *= self.warmup_factor + (1.0 - self.warmup_factor) * progress
        return lr

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lr_steps"] = list(self.lr_steps)
        return data


# --------------------------------------------------------------------------- public API
def train_rpn(
    model: FasterRCNN,
    dataset: DetectionDataset,
    schedule: TrainSchedule,
    checkpoint_path: Path | str,
    trainable_groups: Iterable[str] = ("shared", "rpn"),
    resume: bool = True,
    progress: bool = True,
    on_log: LogFn | None = None,
    extra: dict | None = None,
) -> list[dict[str, float]]:
    """Train the RPN (paper steps 1 and 3); returns per-iteration ``{"rpn_cls", "rpn_reg", "total", "lr"}``.

    Step 1: ``trainable_groups=("shared", "rpn")``; step 3: ``("rpn",)``.
    """
    cfg = model.cfg
    records = [r for r in dataset.records if len(record_boxes_labels(r, cfg.class_names)[0]) > 0]
    if not records:
        raise ValueError(f"{dataset.root}: no training image has a non-difficult object")

    def batch_losses(batch: list[tuple[ImageRecord, bool]], generator: torch.Generator, device: torch.device):
        images, gt_boxes, _, _ = load_batch(batch, cfg, device)
        return model.rpn_losses_batch(images, gt_boxes, generator)

    return run_training(
        model, "rpn", records, schedule, schedule.ims_per_batch or 1, Path(checkpoint_path),
        trainable_groups, resume, progress, on_log, batch_losses, extra,
    )


def train_detector(
    model: FasterRCNN,
    dataset: DetectionDataset,
    proposals: Mapping[str, Tensor | tuple[Tensor, Tensor]],
    schedule: TrainSchedule,
    checkpoint_path: Path | str,
    trainable_groups: Iterable[str] = ("shared", "detector"),
    resume: bool = True,
    progress: bool = True,
    on_log: LogFn | None = None,
    extra: dict | None = None,
) -> list[dict[str, float]]:
    """Train the Fast R-CNN detector on fixed proposals (paper steps 2 and 4).

    ``proposals`` maps every training image id to ``[P, 4]`` boxes in original-image
    pixels (or to ``(boxes, scores)`` as ``propose_dataset`` returns). Step 2:
    ``trainable_groups=("shared", "detector")``; step 4: ``("detector",)``. Returns
    per-iteration ``{"det_cls", "det_reg", "total", "lr"}``.
    """
    cfg = model.cfg
    boxes_of = _proposal_boxes(dataset, proposals)
    records = [r for r in dataset.records if _has_roi_sample(r, boxes_of[r.image_id], model)]
    if not records:
        raise ValueError(f"{dataset.root}: no training image yields a foreground or background RoI")
    if cfg.roi.normalize_targets:
        means, stds = box_target_stats(records, boxes_of, model, schedule.flip)
        model.roi_head.set_target_stats(means, stds)

    def batch_losses(batch: list[tuple[ImageRecord, bool]], generator: torch.Generator, device: torch.device):
        images, gt_boxes, gt_labels, scales = load_batch(batch, cfg, device)
        proposals = []
        for (record, flip), scale in zip(batch, scales):
            boxes = boxes_of[record.image_id]
            proposals.append((flip_boxes(boxes, record.width) if flip else boxes) * scale)
        terms = model.detector_terms_batch(images, gt_boxes, gt_labels, proposals, generator)
        if terms is None:
            ids = [record.image_id for record, _ in batch]
            raise RuntimeError(f"no RoI could be sampled from images {ids}")
        # One loss over all RoIs of the batch, as one Caffe batch of 2 x 64 RoIs.
        return detector_loss(*terms, sigma=cfg.roi.sigma)

    return run_training(
        model, "detector", records, schedule, schedule.ims_per_batch or 2, Path(checkpoint_path),
        trainable_groups, resume, progress, on_log, batch_losses, extra,
    )


def box_target_stats(
    records: Sequence[ImageRecord],
    proposals: Mapping[str, Tensor],
    model: FasterRCNN,
    flip: bool,
) -> tuple[Tensor, Tensor]:
    """Empirical mean and std ``[4]`` of the box targets of every foreground candidate.

    Candidates are each image's gt boxes plus its proposals (original pixels, brought to
    the network input scale); those with IoU >= ``foreground_iou`` to a gt box contribute
    the targets to that box. Mirror images negate ``dx`` and change nothing else, so
    ``flip`` adds those negated copies. Falls back to the config's means/stds when there
    is no foreground candidate, and per component when a std is zero.
    """
    cfg = model.cfg
    collected = []
    for record in records:
        gt_boxes, _ = record_boxes_labels(record, cfg.class_names)
        if gt_boxes.shape[0] == 0:
            continue
        scale = compute_scale(record.height, record.width, cfg.min_size, cfg.max_size)
        gt_boxes = gt_boxes * scale
        candidates = torch.cat([gt_boxes, proposals[record.image_id].float() * scale])
        match = roi_matcher(cfg.roi)(box_iou(candidates, gt_boxes))
        fg = match.labels == 1
        collected.append(encode_boxes(candidates[fg], gt_boxes[match.matched[fg]]))
    default_means = torch.tensor(cfg.roi.target_means, dtype=torch.float32)
    default_stds = torch.tensor(cfg.roi.target_stds, dtype=torch.float32)
    targets = torch.cat(collected) if collected else torch.zeros((0, 4))
    if flip:
        targets = torch.cat([targets, targets * torch.tensor([-1.0, 1.0, 1.0, 1.0])])
    if targets.shape[0] == 0:
        return default_means, default_stds
    means = targets.mean(dim=0)
    stds = targets.std(dim=0, unbiased=False)  # population std, as the original
    stds = torch.where(stds > 1e-6, stds, default_stds)
    return means, stds


# --------------------------------------------------------------------------- helpers
def load_batch(
    batch: Sequence[tuple[ImageRecord, bool]], cfg: DetectorConfig, device: torch.device
) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[float]]:
    """Each ``(record, flipped)`` resized the training way: images ``[3, h_i, w_i]`` on
    ``device``, gt boxes ``[G_i, 4]`` (input pixels) and labels ``[G_i]``, scales."""
    images, boxes, labels, scales = [], [], [], []
    for record, flip in batch:
        image, gt_boxes, gt_labels, scale = load_training_sample(
            record, cfg.class_names, cfg.min_size, cfg.max_size, flip
        )
        images.append(image.to(device))
        boxes.append(gt_boxes)
        labels.append(gt_labels)
        scales.append(scale)
    return images, boxes, labels, scales


def _proposal_boxes(
    dataset: DetectionDataset, proposals: Mapping[str, Tensor | tuple[Tensor, Tensor]]
) -> dict[str, Tensor]:
    """``image_id -> [P, 4]`` float boxes for every record; a missing id is an error."""
    missing = [r.image_id for r in dataset.records if r.image_id not in proposals]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(
            f"proposals are missing for {len(missing)} of {len(dataset.records)} training images "
            f"of {dataset.root}: {shown}"
        )
    boxes_of = {}
    for record in dataset.records:
        value = proposals[record.image_id]
        boxes = value[0] if isinstance(value, (tuple, list)) else value
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
            shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
            raise ValueError(f"proposals for image {record.image_id!r} must be [P, 4], got {shape}")
        boxes_of[record.image_id] = boxes.detach().float().cpu()
    return boxes_of


def _has_roi_sample(record: ImageRecord, proposals: Tensor, model: FasterRCNN) -> bool:
    """Whether ``sample_rois`` can find a foreground or background RoI (the original's filter)."""
    cfg = model.cfg
    gt_boxes, _ = record_boxes_labels(record, cfg.class_names)
    scale = compute_scale(record.height, record.width, cfg.min_size, cfg.max_size)
    candidates = torch.cat([gt_boxes, proposals]) * scale
    if candidates.shape[0] == 0:
        return False
    match = roi_matcher(cfg.roi)(box_iou(candidates, gt_boxes * scale))
    return bool((match.labels >= 0).any())


class ImageOrder:
    """Endless stream of ``(record index, flipped)``, reshuffled each pass by a seeded RandomState."""

    def __init__(self, count: int, flip: bool, seed: int) -> None:
        self.entries = [(i, False) for i in range(count)]
        if flip:
            self.entries += [(i, True) for i in range(count)]
        self.rng = np.random.RandomState(seed)
        self.perm: list[int] = []
        self.position = 0

    def next(self) -> tuple[int, bool]:
        if self.position >= len(self.perm):
            self.perm = self.rng.permutation(len(self.entries)).tolist()
            self.position = 0
        entry = self.entries[self.perm[self.position]]
        self.position += 1
        return entry

    def state(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, cached = self.rng.get_state()
        return {
            "numpy": [str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
            "perm": list(self.perm),
            "position": int(self.position),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        name, keys, pos, has_gauss, cached = state["numpy"]
        self.rng.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        self.perm = [int(i) for i in state["perm"]]
        self.position = int(state["position"])


def build_optimizer(model: nn.Module, schedule: TrainSchedule) -> torch.optim.SGD:
    """The paper's SGD over ``model``'s trainable parameters: momentum, weight decay (biases
    too unless ``bias_weight_decay`` is off), biases at ``bias_lr_factor`` times the rate
    (each group's ``lr_factor``; the loop sets ``lr`` per iteration)."""
    weights, biases = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (biases if name.endswith("bias") else weights).append(param)
    if not weights and not biases:
        raise ValueError(f"no trainable parameter in groups {sorted(getattr(model, 'trainable_groups', ()))}")
    bias_decay = schedule.weight_decay if schedule.bias_weight_decay else 0.0
    groups = [
        {"params": weights, "lr_factor": 1.0, "weight_decay": schedule.weight_decay},
        {"params": biases, "lr_factor": schedule.bias_lr_factor, "weight_decay": bias_decay},
    ]
    return torch.optim.SGD(
        [g for g in groups if g["params"]], lr=schedule.base_lr, momentum=schedule.momentum
    )


def _all_finite(params: Iterable[Tensor]) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)


def _check_resumable(path: Path, train_state: Mapping[str, Any] | None, step: str, schedule: TrainSchedule,
                     world_size: int = 1) -> None:
    if train_state is None:
        raise CheckpointError(
            f"{path}: checkpoint has no training state to resume from; pass resume=False to start over"
        )
    if train_state.get("step") != step:
        raise CheckpointError(
            f"{path}: checkpoint is from a {train_state.get('step')!r} training step, not {step!r}; "
            "pass resume=False to start over"
        )
    saved = dict(train_state.get("schedule") or {})
    wanted = schedule.to_dict()
    diffs = [
        f"{k}: {saved.get(k)!r} -> {wanted[k]!r}"
        for k in wanted
        if k not in _RESUMABLE_CHANGES and saved.get(k) != wanted[k]
    ]
    if diffs:
        raise CheckpointError(
            f"{path}: cannot resume, the schedule changed ({'; '.join(diffs)}); pass resume=False to start over"
        )
    saved_world = int(train_state.get("world_size", 1))
    if saved_world != world_size:
        raise CheckpointError(
            f"{path}: checkpoint was trained by {saved_world} processes, this run has {world_size} "
            "(pipeline.nproc_per_node); resume with as many or pass resume=False to start over"
        )
    if int(train_state["iteration"]) > schedule.iterations:
        raise CheckpointError(
            f"{path}: checkpoint is at iteration {train_state['iteration']}, past the "
            f"{schedule.iterations} iterations asked for"
        )


def run_training(
    model: Detector,
    step: str,
    records: list[ImageRecord],
    schedule: TrainSchedule,
    ims_per_batch: int,
    checkpoint_path: Path | None,
    trainable_groups: Iterable[str],
    resume: bool,
    progress: bool,
    on_log: LogFn | None,
    batch_losses: Callable[[list[tuple[ImageRecord, bool]], torch.Generator, torch.device], dict[str, Tensor]],
    extra: dict | None,
) -> list[dict[str, float]]:
    """The SGD loop shared by every training step of every detector kind.

    ``checkpoint_path`` None keeps no checkpoint (nothing to resume from). Inside a
    ``torch.distributed`` group of N processes (``model.distributed``) each process trains
    on its shard of every iteration's N x ``ims_per_batch`` images, gradients averaged;
    only rank 0 writes the checkpoint and shows progress."""
    device = next(model.parameters()).device
    world = current_world()
    model.set_trainable(trainable_groups)
    model.train()
    optimizer = build_optimizer(model, schedule)
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    order = ImageOrder(len(records), schedule.flip, schedule.seed)
    # Rank 0 (the only rank of a single process) keeps the seed: one process is unchanged.
    rank_seed = schedule.seed + world.rank
    generator = torch.Generator().manual_seed(rank_seed)
    history: list[dict[str, float]] = []
    start = 0
    devices = [device.index or 0] if device.type == "cuda" else []

    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(rank_seed)
        if resume and checkpoint_path is not None and checkpoint_path.exists():
            content = read_checkpoint(checkpoint_path, kind=type(model))
            state = content["train_state"]
            _check_resumable(checkpoint_path, state, step, schedule, world.size)
            for group in model.GROUPS:
                load_group_state(model, group, content["groups"][group], checkpoint_path)
            optimizer.load_state_dict(state["optimizer"])
            # Rank r's own generators (rank 0's are "sampling" / "torch", as in one process).
            own = state["rng"]["ranks"][world.rank] if world.size > 1 else state["rng"]
            generator.set_state(own["sampling"])
            torch.set_rng_state(own["torch"])
            order.load_state(state["rng"]["order"])
            history = [dict(h) for h in state["history"]]
            start = int(state["iteration"])
        broadcast_state(model, world)

        def save(done: int, last: dict[str, float]) -> None:
            if checkpoint_path is None:
                return
            # The weights are equal in every rank, so every rank stops here alike.
            if not _all_finite(trained):
                raise TrainingDiverged(
                    f"{step} training diverged by iteration {done}: non-finite weights; "
                    f"{checkpoint_path} left as it was"
                )
            # Collective: every rank's generator states, for rank 0 to save.
            ranks = gather({"sampling": generator.get_state(), "torch": torch.get_rng_state()}, world)
            if not world.is_main:
                return
            train_state = {
                "step": step,
                "iteration": done,
                "iterations": schedule.iterations,
                "finished": done >= schedule.iterations,
                "schedule": schedule.to_dict(),
                "trainable_groups": sorted(model.trainable_groups),
                "optimizer": optimizer.state_dict(),
                "rng": {"sampling": generator.get_state(), "torch": torch.get_rng_state(), "order": order.state()},
                "history": history,
            }
            if world.size > 1:
                train_state["world_size"] = world.size
                train_state["rng"]["ranks"] = ranks
            info = {"step": step, "iteration": done, "trainable_groups": sorted(model.trainable_groups),
                    "last_losses": dict(last), **dict(extra or {})}
            save_checkpoint(checkpoint_path, model, extra=info, train_state=train_state)

        bar = tqdm(total=schedule.iterations, initial=start, disable=not progress or not world.is_main,
                   desc=f"train {step}" + (f" x{world.size} processes" if world.size > 1 else ""),
                   dynamic_ncols=True)
        try:
            for iteration in range(start, schedule.iterations):
                lr = schedule.learning_rate(iteration)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["lr_factor"]
                entries = [order.next() for _ in range(ims_per_batch * world.size)]
                batch = [(records[i], flipped) for i, flipped in shard(entries, world)]
                losses = batch_losses(batch, generator, device)
                total = sum(losses.values())
                values = {k: float(v.detach()) for k, v in losses.items()}
                values["total"] = float(total.detach())
                values = average_values(values, world, device)
                if not all(math.isfinite(v) for v in values.values()):
                    raise TrainingDiverged(
                        f"{step} training diverged at iteration {iteration + 1}: losses {values}; "
                        f"last good checkpoint {checkpoint_path} left as it was"
                    )
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                average_gradients(trained, world)
                optimizer.step()
                values["lr"] = lr
                history.append(values)
                done = iteration + 1
                if done % schedule.checkpoint_every == 0 or done == schedule.iterations:
                    save(done, values)
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in values.items() if k != "lr"}, refresh=False)
                if on_log is not None:
                    on_log(done, dict(values))
        finally:
            bar.close()
    model.eval()
    return history
