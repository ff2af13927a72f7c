"""The paper's one-stage detector: class-specific detection straight from the sliding window.

Paper, sec. 4.1 "One-Stage Detection vs. Two-Stage Proposal + Detection" (Table 10): to
compare the two-stage cascade with an OverFeat-like one-stage system, the authors ran the
Fast R-CNN detector (ZF) on dense sliding windows of 3 scales x 3 aspect ratios (about
20000 per image) instead of on proposals, trained to give class-specific scores and box
regressions for those windows. It reached 53.8 % mAP (53.9 % with 5 test scales) against
58.7 % for the two-stage system with unshared RPN proposals.

What is built here, the simplest faithful variant:

- the shared convs of a backbone (``build_backbone``), then a head shaped like the RPN's
  (3x3 conv + ReLU, ``mid_channels`` 256 ZF / 512 VGG) whose sibling 1x1 convs predict, per
  anchor, ``K + 1`` class scores and ``4 (K + 1)`` class-specific box deltas;
- the windows are the RPN's anchors (3 scales x 3 ratios, stride 16: about 20000 at
  600 x 1000, the paper's count);
- training labels come from the RPN's anchor labelling (``model.rpn.targets.label_anchors``:
  inside anchors only, negatives first, each gt's best anchor(s) positive, random
  sampling) with the Fast R-CNN detector's thresholds and batch by default
  (``one_stage_label_config``): positive IoU >= 0.5, background below 0.5, 64 anchors per
  image, 25 % foreground, 2 images per iteration. A positive takes the class of the gt it
  overlaps most, a negative class 0;
- the loss is the Fast R-CNN loss (``model.roi.detector_loss``: softmax cross-entropy +
  smooth L1 with sigma 1 on the own-class deltas, both over the sampled windows), with box
  targets normalised by the fixed ``RoIConfig.target_means/stds`` (0, 0.1, 0.1, 0.2, 0.2);
- testing scores every anchor and post-processes exactly like the detector
  (``model.roi.postprocess_detections`` with the anchors as RoIs: per class score > 0.05,
  NMS 0.3, at most 100 detections).

What differs from the paper's system: its windows were RoI-pooled and sent through the
Fast R-CNN fc layers (fc6, fc7) of a pretrained net, so each window had features of its own
box; here every window at one position shares the 3x3 sliding-window feature, as
OverFeat's classifier and regressor and the RPN do. The backbone's detector-only ``top``
is therefore not used (and dropped). Its test is single-scale, like every row here.

Shapes: one image per call (B images as one padded batch for ``loss_terms_batch``, which
training uses), ``[3, h, w]`` RGB float 0..255 already resized by ``scale``;
features ``[1, C, Hf, Wf]``; A anchors per position, N = Hf * Wf * A anchors in
``shift_anchors`` order; K foreground classes; G gt boxes in input pixels.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.anchors import generate_anchors, shift_anchors
from model.backbones import build_backbone
from model.batching import pad_images
from model.boxes import box_iou
from model.config import DetectorConfig, RPNConfig, TestConfig
from model.data.records import DetectionDataset
from model.detections import Detections
from model.roi import detector_loss, postprocess_detections
from model.training import TrainSchedule, load_batch, run_training
from model.checkpoint import load_checkpoint, save_checkpoint
from model.detector import ParameterGroups, evaluating
from model.precision import as_float32
from model.rpn.network import own_anchor_positions
from model.rpn.targets import anchor_matcher, label_anchors

# /2: the groups layout of model.checkpoint (/1 was one flat state dict of its own).
CHECKPOINT_FORMAT = "frcnn-one-stage/2"


def one_stage_label_config(cfg: DetectorConfig) -> RPNConfig:
    """Anchor labelling with the Fast R-CNN detector's rule (the paper trained Fast R-CNN
    on the windows): foreground IoU >= ``roi.foreground_iou`` (0.5), background below it,
    ``roi.batch_size_per_image`` (64) windows per image, ``roi.foreground_fraction`` (25 %).
    The background has no lower IoU bound (``roi.background_iou_low`` is not used): that is
    py-faster-rcnn's 0.0; the Fast R-CNN paper's 0.1 would need its own labelling."""
    return RPNConfig(
        positive_iou=cfg.roi.foreground_iou,
        negative_iou=cfg.roi.background_iou_high,
        batch_size_per_image=cfg.roi.batch_size_per_image,
        positive_fraction=cfg.roi.foreground_fraction,
        allowed_border=cfg.rpn.allowed_border,
        sigma=cfg.roi.sigma,
    )


def label_windows(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    image_height: int,
    image_width: int,
    label_cfg: RPNConfig,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Class labels ``[N]`` int64 (-1 ignored / not sampled, 0 background, 1..K the class)
    and raw box targets ``[N, 4]`` of the ``[N, 4]`` anchors, for ``[G, 4]`` gt boxes with
    labels ``[G]`` in 1..K, all in input pixels.

    ``label_anchors`` decides which anchors are positive, negative or ignored (and samples
    them); a positive then takes the class of the gt it overlaps most, the first such gt
    on ties, which is also the gt ``label_anchors`` encodes its targets against. A
    "positive" that overlaps no gt at all (label_anchors' zero-IoU quirk) is background.
    """
    if gt_boxes.dim() != 2 or gt_boxes.shape[1] != 4 or gt_labels.shape != (gt_boxes.shape[0],):
        raise ValueError(
            f"gt_boxes must be [G, 4] and gt_labels [G], got {tuple(gt_boxes.shape)} and {tuple(gt_labels.shape)}"
        )
    gt_boxes = gt_boxes.to(anchors.device, anchors.dtype)
    gt_labels = gt_labels.to(anchors.device, torch.int64)
    labels, targets = label_anchors(anchors, gt_boxes, image_height, image_width, label_cfg, generator)
    positive = torch.nonzero(labels == 1).squeeze(1)
    classes = labels.clone()  # -1 and 0 stay as they are
    if positive.numel() > 0:
        # The same matching label_anchors made (first max-IoU gt), on the positives only.
        match = anchor_matcher(label_cfg)(box_iou(anchors[positive], gt_boxes))
        best, matched = match.max_iou, match.matched
        classes[positive] = gt_labels[matched]
        # label_anchors' faithful quirk (see its module doc): a gt that overlaps no inside
        # anchor makes every zero-IoU anchor "positive". Harmless noise for an objectness
        # score, but here it would teach that empty windows hold class matched[0]: such
        # windows are background, whatever the sampler called them.
        classes[positive[best <= 0]] = 0
    return classes, targets


class OneStageHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 convs for ``A (K+1)`` class scores and ``4 A (K+1)`` deltas.

    Channels are anchor-major: class ``c`` of anchor ``a`` is channel ``a (K+1) + c``, delta
    ``j`` of class ``c`` of anchor ``a`` is channel ``(a (K+1) + c) 4 + j``.
    """

    def __init__(self, in_channels: int, mid_channels: int, num_anchors: int, num_classes: int) -> None:
        super().__init__()
        if min(in_channels, mid_channels, num_anchors, num_classes) <= 0:
            raise ValueError(
                "OneStageHead needs positive in_channels, mid_channels, num_anchors and num_classes, got "
                f"{in_channels}, {mid_channels}, {num_anchors}, {num_classes}"
            )
        self.num_anchors = num_anchors
        self.num_columns = num_classes + 1
        self.conv = nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1)
        self.cls = nn.Conv2d(mid_channels, num_anchors * self.num_columns, kernel_size=1)
        self.reg = nn.Conv2d(mid_channels, num_anchors * self.num_columns * 4, kernel_size=1)
        # RPN init for the conv and the scores, Fast R-CNN's N(0, 0.001) for the regressor.
        for layer, std in ((self.conv, 0.01), (self.cls, 0.01), (self.reg, 0.001)):
            nn.init.normal_(layer.weight, mean=0.0, std=std)
            nn.init.zeros_(layer.bias)

    def forward_batch(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, C, Hf, Wf]`` -> logits ``[B, N, K+1]`` and deltas ``[B, N, 4(K+1)]``, ``shift_anchors`` order."""
        hidden = F.relu(self.conv(features))
        logits = self.cls(hidden).permute(0, 2, 3, 1)  # [B, Hf, Wf, A(K+1)]
        deltas = self.reg(hidden).permute(0, 2, 3, 1)
        batch = features.shape[0]
        return (as_float32(logits.reshape(batch, -1, self.num_columns)),
                as_float32(deltas.reshape(batch, -1, 4 * self.num_columns)))

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``[1, C, Hf, Wf]`` -> logits ``[N, K+1]`` and deltas ``[N, 4(K+1)]``, ``shift_anchors`` order."""
        hidden = F.relu(self.conv(features))
        logits = self.cls(hidden)[0]  # [A(K+1), Hf, Wf]
        deltas = self.reg(hidden)[0]  # [4A(K+1), Hf, Wf]
        # Channel-last then flatten: row (y * Wf + x) * A + a, as model.anchors lays anchors out.
        logits = logits.permute(1, 2, 0).reshape(-1, self.num_columns)
        deltas = deltas.permute(1, 2, 0).reshape(-1, 4 * self.num_columns)
        return as_float32(logits), as_float32(deltas)  # float32 under bfloat16 autocast too


class OneStageDetector(ParameterGroups, nn.Module):
    """OverFeat-style one-stage detector over a backbone's shared convs (see the module doc);
    a ``model.detector.Detector`` with groups ``shared`` (the trunk) and ``head``.

    Uses from ``cfg``: ``class_names``, ``backbone``, ``pretrained``, ``anchors``,
    ``rpn.mid_channels`` and ``rpn.allowed_border``, ``roi`` (labelling, sampling, loss,
    target normalisation) and ``test``. ``label_cfg`` replaces the anchor-labelling rule.
    """

    GROUPS = ("shared", "head")
    CHECKPOINT_FORMAT = CHECKPOINT_FORMAT
    KIND = "one-stage"

    def __init__(
        self,
        cfg: DetectorConfig,
        backbone_options: dict | None = None,
        label_cfg: RPNConfig | None = None,
    ) -> None:
        super().__init__()
        if cfg.num_classes < 1:
            raise ValueError("DetectorConfig.class_names is empty: the detector needs at least one class")
        self.cfg = cfg
        self.backbone_options = dict(backbone_options or {})
        self.label_cfg = label_cfg or one_stage_label_config(cfg)
        self.backbone = build_backbone(cfg.backbone, pretrained=cfg.pretrained, **self.backbone_options)
        # The detector-only layers (fc6/fc7: 54M parameters for ZF) have no use here.
        self.backbone.top = nn.Identity()
        reference = generate_anchors(cfg.anchors.base_size, cfg.anchors.ratios, cfg.anchors.scales)
        self.register_buffer("reference_anchors", reference, persistent=False)
        mid_channels = cfg.rpn.mid_channels or self.backbone.rpn_mid_channels
        self.head = OneStageHead(self.backbone.feature_channels, mid_channels, reference.shape[0], cfg.num_classes)
        self.register_buffer("target_means", torch.tensor(cfg.roi.target_means, dtype=torch.float32), persistent=False)
        self.register_buffer("target_stds", torch.tensor(cfg.roi.target_stds, dtype=torch.float32), persistent=False)
        self._trainable = frozenset(self.GROUPS)
        self.set_trainable(self.GROUPS)

    # ------------------------------------------------------------- Detector protocol
    def group_modules(self) -> dict[str, nn.Module]:
        return {"shared": self.backbone.shared, "head": self.head}

    def checkpoint_options(self) -> dict[str, Any]:
        return {"label_cfg": dataclasses.asdict(self.label_cfg)}

    @classmethod
    def from_checkpoint_parts(
        cls, cfg: DetectorConfig, backbone_options: dict, options: dict[str, Any]
    ) -> "OneStageDetector":
        label_cfg = options.get("label_cfg")
        return cls(cfg, backbone_options, RPNConfig(**label_cfg) if label_cfg is not None else None)

    # ----------------------------------------------------------------------- forward
    def features(self, image: Tensor) -> Tensor:
        """Shared conv features ``[1, C, Hf, Wf]`` of one image ``[3, h, w]`` (RGB 0..255)."""
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected one image [3, h, w], got {tuple(image.shape)}")
        return self.backbone.trunk(self.backbone.normalize(image[None]))

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Anchors ``[N, 4]`` (input pixels), logits ``[N, K+1]``, normalised deltas ``[N, 4(K+1)]``."""
        features = self.features(image)
        logits, deltas = self.head(features)
        anchors = shift_anchors(self.reference_anchors, features.shape[2], features.shape[3], self.backbone.stride)
        return anchors, logits, deltas

    def loss_terms(
        self,
        image: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The sampled windows of one image: ``(logits [S, K+1], deltas [S, 4(K+1)],
        labels [S] in 0..K, normalised targets [S, 4])``, what ``detector_loss`` takes, so
        a batch of images can be concatenated and averaged over all its windows.

        ``gt_boxes`` ``[G, 4]`` in input pixels, ``gt_labels`` ``[G]`` in 1..K.
        """
        anchors, logits, deltas = self(image)
        return self._sampled_terms(
            anchors, logits, deltas, gt_boxes, gt_labels, int(image.shape[1]), int(image.shape[2]), generator
        )

    def loss_terms_batch(
        self,
        images: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``loss_terms`` of B images as one padded batch through the trunk and the head, each
        image labelled on the windows of its own feature map (none of the padding), the sampled
        windows of all images concatenated in image order. One image gives ``loss_terms``'s."""
        batch, sizes = pad_images(images, self.backbone.normalize)
        features = self.backbone.trunk(batch)
        logits, deltas = self.head.forward_batch(features)
        map_size = (features.shape[2], features.shape[3])
        anchors = shift_anchors(self.reference_anchors, *map_size, self.backbone.stride)
        parts = []
        for i, (height, width) in enumerate(sizes):
            own = own_anchor_positions(
                self.backbone.feature_size(height, width), map_size, self.head.num_anchors, anchors.device
            )
            if own is None:
                image_anchors, image_logits, image_deltas = anchors, logits[i], deltas[i]
            else:
                image_anchors, image_logits, image_deltas = anchors[own], logits[i][own], deltas[i][own]
            parts.append(self._sampled_terms(
                image_anchors, image_logits, image_deltas, gt_boxes[i], gt_labels[i], height, width, generator
            ))
        return tuple(torch.cat(t) for t in zip(*parts))  # type: ignore[return-value]

    def _sampled_terms(
        self,
        anchors: Tensor,
        logits: Tensor,
        deltas: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        height: int,
        width: int,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        labels, targets = label_windows(anchors, gt_boxes, gt_labels, height, width, self.label_cfg, generator)
        sampled = torch.nonzero(labels >= 0).squeeze(1)
        classes = labels[sampled]
        normalised = (targets[sampled] - self.target_means) / self.target_stds
        return logits[sampled], deltas[sampled], classes, normalised

    def losses(
        self,
        image: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """``{"one_stage_cls", "one_stage_reg"}`` for one image (see ``loss_terms``)."""
        return _named(detector_loss(*self.loss_terms(image, gt_boxes, gt_labels, generator), sigma=self.label_cfg.sigma))

    def detect(
        self,
        image: Tensor,
        scale: float,
        proposals: Tensor | None = None,
        *,
        test_cfg: TestConfig | None = None,
    ) -> Detections:
        """Detections of one image in original-image pixels; every anchor is a candidate
        window, so ``proposals`` must be None (a one-stage detector has no proposal stage)."""
        if proposals is not None:
            raise ValueError("the one-stage detector scores its own dense windows: it takes no proposals")
        with evaluating(self):
            anchors, logits, deltas = self(image)
            probs = F.softmax(logits, dim=1)
            columns = deltas.shape[1] // 4
            raw = (deltas.reshape(-1, columns, 4) * self.target_stds + self.target_means).reshape(deltas.shape)
            return postprocess_detections(
                anchors, probs, raw, int(image.shape[1]), int(image.shape[2]), scale, test_cfg or self.cfg.test
            )

    def detect_batch(
        self,
        images: Sequence[Tensor],
        scales: Sequence[float],
        proposals: Sequence[Tensor] | None = None,
        *,
        test_cfg: TestConfig | None = None,
    ) -> list[Detections]:
        """``detect`` of each image (image by image: the dense head is the whole cost)."""
        if proposals is not None:
            raise ValueError("the one-stage detector scores its own dense windows: it takes no proposals")
        return [self.detect(image, scale, test_cfg=test_cfg) for image, scale in zip(images, scales, strict=True)]


def _named(losses: dict[str, Tensor]) -> dict[str, Tensor]:
    return {"one_stage_cls": losses["det_cls"], "one_stage_reg": losses["det_reg"]}


# ----------------------------------------------------------------------------- training
def train_one_stage(
    model: OneStageDetector,
    dataset: DetectionDataset,
    schedule: TrainSchedule,
    checkpoint_path: Path | str | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    extra: dict | None = None,
) -> list[dict[str, float]]:
    """SGD on ``dataset`` through ``model.training``'s loop, as the detector steps train;
    returns per-iteration ``{"one_stage_cls", "one_stage_reg", "total", "lr"}``.

    ``schedule`` is the detector steps' ``TrainSchedule``: the paper's optimiser, its learning
    rate (steps and warm-up), ``ims_per_batch`` images (None: 2) and their mirror images if
    ``flip`` in a seeded shuffled order, as one padded batch through the trunk
    (``loss_terms_batch``), the loss averaged over the sampled windows of the whole batch. With ``checkpoint_path`` a checkpoint (``model.checkpoint``) is written every
    ``checkpoint_every`` iterations and, with ``resume``, an interrupted run continues from it
    to the same weights as a straight run. Raises ``TrainingDiverged`` on a non-finite loss.
    """
    if not dataset.records:
        raise ValueError(f"{dataset.root}: the dataset has no images")
    cfg = model.cfg

    def batch_losses(batch, generator: torch.Generator, device: torch.device) -> dict[str, Tensor]:
        images, gt_boxes, gt_labels, _ = load_batch(batch, cfg, device)
        terms = model.loss_terms_batch(images, gt_boxes, gt_labels, generator)
        return _named(detector_loss(*terms, sigma=model.label_cfg.sigma))

    return run_training(
        model, "one_stage", list(dataset.records), schedule, schedule.ims_per_batch or 2,
        None if checkpoint_path is None else Path(checkpoint_path), model.GROUPS, resume, progress, on_log,
        batch_losses, extra,
    )


# ----------------------------------------------------------------------------- files
def save_one_stage(path: Path | str, model: OneStageDetector, extra: dict[str, Any] | None = None) -> None:
    """``model.checkpoint.save_checkpoint`` (groups, config, label rule), atomic, ``weights_only``-safe."""
    save_checkpoint(path, model, extra=extra)


def load_one_stage(path: Path | str, map_location: str | torch.device = "cpu") -> OneStageDetector:
    """Inverse of ``save_one_stage``; errors (``CheckpointError``, a ``ValueError``) name the file."""
    model, _ = load_checkpoint(path, map_location=map_location, kind=OneStageDetector)
    model.eval()
    return model
