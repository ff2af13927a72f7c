"""The assembled Faster R-CNN: backbone + RPN + Fast R-CNN detector, with its parameter groups.

Shapes: one image per call, ``[3, h, w]`` RGB float 0..255 already resized by ``scale``
(see ``model.data.transforms``); features ``[1, C, Hf, Wf]``; G gt boxes, P proposals,
R sampled RoIs, K foreground classes. The ``*_batch`` methods take B such images as one
padded batch (``model.batching``), features ``[B, C, Hf, Wf]``, and lists of per-image boxes.

The paper's alternating training switches whole groups of layers on and off, so the
model is split into three parameter groups, each saved as one state dict:

- ``shared``: the backbone's convolutions that both networks use (``backbone.shared``);
- ``rpn``: the RPN's 3x3 conv and its two sibling 1x1 convs;
- ``detector``: the detector-only layers (``backbone.top``, fc6/fc7 for ZF/VGG) plus the
  classifier, box regressor and the box-target statistics.

Step 1 trains shared + rpn, step 2 shared + detector, step 3 only rpn, step 4 only
detector (``set_trainable``). Parameters under the backbone's ``never_train`` prefixes
(VGG-16 conv1-conv2) never train.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.backbones import build_backbone
from model.config import DetectorConfig, ProposalConfig, TestConfig
from model.detections import Detections
from model.detector import ParameterGroups, evaluating
from model.batching import pad_images
from model.roi import DetectorHead, detector_loss, postprocess_detections, sample_rois
from model.rpn.network import RegionProposalNetwork, RPNOutput
from model.timing import NO_TIMER, PhaseTimer

# During the RPN steps the proposals are not used; the RPN still returns some, so ask
# for as few as possible (one box, no NMS) to keep the step cheap.
_LOSS_ONLY_PROPOSALS = ProposalConfig(pre_nms_top_n=1, post_nms_top_n=1, use_nms=False)


class FasterRCNN(ParameterGroups, nn.Module):
    """Faster R-CNN (Ren et al. 2015) for ``cfg.class_names`` (background excluded);
    a ``model.detector.Detector``."""

    GROUPS = ("shared", "rpn", "detector")
    CHECKPOINT_FORMAT = "frcnn/1"
    KIND = "Faster R-CNN"

    def __init__(self, cfg: DetectorConfig, backbone_options: dict | None = None) -> None:
        super().__init__()
        if cfg.num_classes < 1:
            raise ValueError("DetectorConfig.class_names is empty: the detector needs at least one class")
        self.cfg = cfg
        self.backbone_options = dict(backbone_options or {})
        self.backbone = build_backbone(cfg.backbone, pretrained=cfg.pretrained, **self.backbone_options)
        mid_channels = cfg.rpn.mid_channels or self.backbone.rpn_mid_channels
        self.rpn = RegionProposalNetwork(
            self.backbone.feature_channels,
            mid_channels,
            cfg.anchors,
            cfg.rpn,
            stride=self.backbone.stride,
        )
        self.roi_head = DetectorHead(
            self.backbone.top,
            self.backbone.feature_channels,
            self.backbone.top_channels,
            self.backbone.pool_size,
            cfg.num_classes,
            spatial_scale=1.0 / self.backbone.stride,
        )
        if cfg.roi.normalize_targets:
            # The config's stats until training computes the dataset's (``train_detector``).
            self.roi_head.set_target_stats(cfg.roi.target_means, cfg.roi.target_stds)
        else:
            self.roi_head.set_target_stats((0.0, 0.0, 0.0, 0.0), (1.0, 1.0, 1.0, 1.0))
        self._trainable: frozenset[str] = frozenset(self.GROUPS)
        self.set_trainable(self.GROUPS)

    # ------------------------------------------------------------------ groups
    def group_modules(self) -> dict[str, nn.Module]:
        """``{"shared", "rpn", "detector"}`` -> the module whose state dict is that group.

        ``DetectorHead`` holds ``backbone.top`` as its ``top`` submodule, so the detector
        group is the head itself and its keys are ``top.*`` plus the head's own layers and
        target-statistics buffers, the same whatever the backbone.
        """
        return {"shared": self.backbone.shared, "rpn": self.rpn, "detector": self.roi_head}

    def checkpoint_options(self) -> dict:
        return {}

    @classmethod
    def from_checkpoint_parts(cls, cfg: DetectorConfig, backbone_options: dict, options: dict) -> "FasterRCNN":
        return cls(cfg, backbone_options)

    # ----------------------------------------------------------------- forward
    def features(self, image: Tensor) -> Tensor:
        """Shared conv features ``[1, C, Hf, Wf]`` of one image ``[3, h, w]`` (RGB 0..255)."""
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected one image [3, h, w], got {tuple(image.shape)}")
        return self.backbone.trunk(self.backbone.normalize(image[None]))

    def rpn_losses(
        self, image: Tensor, gt_boxes: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """``{"rpn_cls", "rpn_reg"}`` for one image; ``gt_boxes`` ``[G, 4]`` in input pixels."""
        features = self.features(image)
        out = self.rpn(
            features,
            int(image.shape[1]),
            int(image.shape[2]),
            1.0,
            _LOSS_ONLY_PROPOSALS,
            gt_boxes=gt_boxes.to(features.device, features.dtype),
            generator=generator,
        )
        return out.losses

    def detector_terms(
        self,
        image: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        proposals: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """Head outputs and their targets for one image's sampled RoIs, or None when none sampled.

        Returns ``(logits [R, K+1], deltas [R, 4(K+1)] normalised, labels [R],
        targets [R, 4] normalised)``: what ``detector_loss`` takes, so that a batch of
        several images can concatenate them and average the loss over all its RoIs as
        the original does.
        """
        return self._detector_terms(self.features(image), gt_boxes, gt_labels, proposals, generator)

    def _detector_terms(
        self,
        features: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        proposals: Tensor,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        device, dtype = features.device, features.dtype
        sample = sample_rois(
            proposals.to(device, dtype),
            gt_boxes.to(device, dtype),
            gt_labels.to(device),
            self.cfg.roi,
            generator,
        )
        if sample.is_empty:
            return None
        logits, deltas = self.roi_head(features, sample.rois)
        targets = self.roi_head.normalize_targets(sample.targets)
        return logits, deltas, sample.labels, targets

    def detector_losses(
        self,
        image: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        proposals: Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """``{"det_cls", "det_reg"}`` for one image, ``proposals`` ``[P, 4]`` in input pixels.

        Empty dict when neither a foreground nor a background RoI could be sampled.
        """
        terms = self.detector_terms(image, gt_boxes, gt_labels, proposals, generator)
        if terms is None:
            return {}
        return detector_loss(*terms, sigma=self.cfg.roi.sigma)

    def joint_losses(
        self,
        image: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        generator: torch.Generator | None = None,
        scale: float = 1.0,
    ) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor, Tensor, Tensor] | None]:
        """Approximate joint training (paper sec. 3.2, ii) for one image: one feature pass.

        The RPN's ``cfg.train_proposals`` (12000 -> 2000) feed the detector directly, not
        differentiated through; ``scale`` (input / original) sets their minimum size. Returns
        the RPN losses and the detector terms (as ``detector_terms``; None when no RoI was
        sampled). The per-image form of ``joint_losses_batch``, which ``model.joint`` trains with.
        """
        features = self.features(image)
        gt_boxes = gt_boxes.to(features.device, features.dtype)
        out = self.rpn(
            features, int(image.shape[1]), int(image.shape[2]), scale, self.cfg.train_proposals,
            gt_boxes=gt_boxes, generator=generator,
        )
        terms = self._detector_terms(features, gt_boxes, gt_labels, out.proposals, generator)
        return out.losses, terms

    # ----------------------------------------------------------- mini-batches
    # Several images at once (B images, image i ``[3, h_i, w_i]``): one padded batch through
    # the trunk, then the RPN and the RoI sampling image by image on their own part of the
    # map, in batch order. One image gives exactly the per-image methods' numbers.
    def features_batch(self, images: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Features ``[B, C, Hf, Wf]`` of the padded batch and each image's ``(h_i, w_i)``."""
        batch, sizes = pad_images(images, self.backbone.normalize)
        return self.backbone.trunk(batch), sizes

    def rpn_outputs_batch(
        self,
        features: Tensor,
        sizes: Sequence[tuple[int, int]],
        scales: Sequence[float],
        proposal_cfg: ProposalConfig,
        gt_boxes: Sequence[Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> list[RPNOutput]:
        """The RPN's ``RPNOutput`` per image of the batch (labels and losses with ``gt_boxes``)."""
        own = [self.backbone.feature_size(h, w) for h, w in sizes]
        return self.rpn.forward_batch(features, sizes, own, scales, proposal_cfg, gt_boxes, generator)

    def rpn_losses_batch(
        self, images: Sequence[Tensor], gt_boxes: Sequence[Tensor], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """``{"rpn_cls", "rpn_reg"}``: each image's loss over its own sampled anchors (about
        1/256), averaged over the images, as one Caffe batch of the original."""
        features, sizes = self.features_batch(images)
        outputs = self.rpn_outputs_batch(
            features, sizes, [1.0] * len(sizes), _LOSS_ONLY_PROPOSALS,
            [g.to(features.device, features.dtype) for g in gt_boxes], generator,
        )
        return _mean_over_images([out.losses for out in outputs])

    def detector_terms_batch(
        self,
        images: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        proposals: Sequence[Tensor],
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """``detector_terms`` of every sampled RoI of the batch, concatenated in image order
        (the loss then averages over all RoIs of the batch), or None when no image gave one.
        ``proposals`` ``[P_i, 4]`` per image, input pixels."""
        features, _ = self.features_batch(images)
        return self._detector_terms_batch(features, gt_boxes, gt_labels, proposals, generator)

    def _detector_terms_batch(
        self,
        features: Tensor,
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        proposals: Sequence[Tensor],
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        device, dtype = features.device, features.dtype
        samples = [
            sample_rois(p.to(device, dtype), g.to(device, dtype), lab.to(device), self.cfg.roi, generator)
            for p, g, lab in zip(proposals, gt_boxes, gt_labels, strict=True)
        ]
        if all(sample.is_empty for sample in samples):
            return None
        logits, deltas = self.roi_head(features, [sample.rois for sample in samples])
        labels = torch.cat([sample.labels for sample in samples])
        targets = self.roi_head.normalize_targets(torch.cat([sample.targets for sample in samples]))
        return logits, deltas, labels, targets

    def joint_losses_batch(
        self,
        images: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        scales: Sequence[float],
        generator: torch.Generator | None = None,
    ) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor, Tensor, Tensor] | None]:
        """``joint_losses`` over a batch: RPN losses averaged over the images, detector terms
        of all the batch's RoIs (None when none was sampled)."""
        features, sizes = self.features_batch(images)
        gt_boxes = [g.to(features.device, features.dtype) for g in gt_boxes]
        outputs = self.rpn_outputs_batch(features, sizes, scales, self.cfg.train_proposals, gt_boxes, generator)
        terms = self._detector_terms_batch(
            features, gt_boxes, gt_labels, [out.proposals for out in outputs], generator
        )
        return _mean_over_images([out.losses for out in outputs]), terms

    def propose_batch(
        self,
        images: Sequence[Tensor],
        scales: Sequence[float],
        proposal_cfg: ProposalConfig | None = None,
        generator: torch.Generator | None = None,
    ) -> list[tuple[Tensor, Tensor]]:
        """``propose`` for each image of the batch."""
        cfg = proposal_cfg or self.cfg.test_proposals
        with evaluating(self):
            features, sizes = self.features_batch(images)
            outputs = self.rpn_outputs_batch(features, sizes, scales, cfg, generator=generator)
        return [(out.proposals / scale, out.scores) for out, scale in zip(outputs, scales)]

    def detect_batch(
        self,
        images: Sequence[Tensor],
        scales: Sequence[float],
        proposals: Sequence[Tensor] | None = None,
        *,
        test_cfg: TestConfig | None = None,
    ) -> list[Detections]:
        """``detect`` for each image of the batch; ``proposals`` one ``[P_i, 4]`` per image."""
        if proposals is not None and len(proposals) != len(images):
            raise ValueError(f"proposals must hold one [P, 4] tensor per image, got {len(proposals)} for {len(images)}")
        with evaluating(self):
            features, sizes = self.features_batch(images)
            if proposals is None:
                outputs = self.rpn_outputs_batch(features, sizes, scales, self.cfg.test_proposals)
                rois = [out.proposals for out in outputs]
            else:
                rois = []
                for boxes, scale in zip(proposals, scales):
                    if boxes.dim() != 2 or boxes.shape[1] != 4:
                        raise ValueError(f"proposals must be [P, 4], got {tuple(boxes.shape)}")
                    rois.append(boxes.to(features.device, features.dtype) * scale)
            counts = [r.shape[0] for r in rois]
            if sum(counts) == 0:
                return [Detections.empty() for _ in images]
            logits, deltas = self.roi_head(features, rois)
            probs = F.softmax(logits, dim=1)
            deltas = self.roi_head.unnormalize_deltas(deltas)
            results = []
            for (height, width), scale, r, p, d in zip(
                sizes, scales, rois, probs.split(counts), deltas.split(counts)
            ):
                if r.shape[0] == 0:
                    results.append(Detections.empty())
                else:
                    results.append(postprocess_detections(r, p, d, height, width, scale, test_cfg or self.cfg.test))
            return results

    # --------------------------------------------------------------- inference
    def propose(
        self,
        image: Tensor,
        scale: float,
        proposal_cfg: ProposalConfig | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """RPN proposals ``[P, 4]`` in ORIGINAL-image pixels and scores ``[P]``, rank order.

        ``proposal_cfg`` defaults to ``cfg.test_proposals``; ``generator`` drives its "random"
        ranking (None: torch's global generator). Runs in eval mode, no grad.
        """
        cfg = proposal_cfg or self.cfg.test_proposals
        with evaluating(self):
            features = self.features(image)
            out = self.rpn(features, int(image.shape[1]), int(image.shape[2]), scale, cfg, generator=generator)
        return out.proposals / scale, out.scores

    def detect(
        self,
        image: Tensor,
        scale: float,
        proposals: Tensor | None = None,
        *,
        proposal_cfg: ProposalConfig | None = None,
        test_cfg: TestConfig | None = None,
        timer: PhaseTimer | None = None,
    ) -> Detections:
        """Detections of one image in original-image pixels.

        ``proposals`` ``[P, 4]`` in original-image pixels replace the RPN's (selective
        search, random or cached boxes for the ablations); None uses the model's own RPN
        with ``proposal_cfg`` (default ``cfg.test_proposals``). ``test_cfg`` replaces
        ``cfg.test``. ``timer`` (a ``model.timing.PhaseTimer``) is billed the paper's Table-5
        phases: "conv", "proposal", "region". Runs in eval mode, no grad.
        """
        timer = timer or NO_TIMER
        height, width = int(image.shape[1]), int(image.shape[2])
        with evaluating(self):
            with timer.phase("conv"):
                features = self.features(image)
            with timer.phase("proposal"):
                if proposals is None:
                    cfg = proposal_cfg or self.cfg.test_proposals
                    rois = self.rpn(features, height, width, scale, cfg).proposals
                else:
                    if proposals.dim() != 2 or proposals.shape[1] != 4:
                        raise ValueError(f"proposals must be [P, 4], got {tuple(proposals.shape)}")
                    rois = proposals.to(features.device, features.dtype) * scale
            if rois.shape[0] == 0:
                return Detections.empty()
            with timer.phase("region"):
                logits, deltas = self.roi_head(features, rois)
                probs = F.softmax(logits, dim=1)
                deltas = self.roi_head.unnormalize_deltas(deltas)
                return postprocess_detections(
                    rois, probs, deltas, height, width, scale, test_cfg or self.cfg.test
                )


def _mean_over_images(per_image: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Each loss term averaged over the images (each already averaged over its own samples)."""
    return {k: sum(d[k] for d in per_image) / len(per_image) for k in per_image[0]}
