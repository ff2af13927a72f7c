"""The Region Proposal Network: head + anchors + labelling/loss + proposal generation.

Shapes: one image per ``forward`` call (as the original's RPN), B images per ``forward_batch``
call (a padded batch), C feature channels, Hf x Wf feature
positions, A anchors per position, N = Hf * Wf * A anchors, G gt boxes, P proposals.
All boxes are in network-input pixels (the resized image), +1 convention.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from model.anchors import generate_anchors, shift_anchors
from model.config import AnchorConfig, ProposalConfig, RPNConfig
from model.rpn.head import RPNHead, objectness_probability
from model.rpn.loss import rpn_loss
from model.rpn.proposals import generate_proposals
from model.rpn.targets import label_anchors

# Feature sizes seen in a run are few (images are resized to a few shapes), so a small
# cache of shifted anchors avoids rebuilding ~20k boxes every step; bounded just in case.
_MAX_CACHED_SIZES = 32


@dataclass
class RPNOutput:
    """What the RPN gives for one image.

    ``proposals`` ``[P, 4]`` and ``scores`` ``[P]`` (foreground probability), rank order,
    detached. ``losses`` holds ``rpn_cls`` and ``rpn_reg`` when gt boxes were given, else is
    empty. Diagnostics: ``anchors`` ``[N, 4]``, ``objectness`` ``[N]`` (foreground
    probability, detached) and ``labels`` ``[N]`` (None without gt).
    """

    proposals: Tensor
    scores: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)
    anchors: Tensor | None = None
    objectness: Tensor | None = None
    labels: Tensor | None = None


class RegionProposalNetwork(nn.Module):
    """The paper's RPN over a shared feature map of stride ``stride``."""

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        anchor_cfg: AnchorConfig,
        rpn_cfg: RPNConfig,
        stride: int = 16,
    ) -> None:
        super().__init__()
        self.anchor_cfg = anchor_cfg
        self.rpn_cfg = rpn_cfg
        self.stride = stride
        reference = generate_anchors(anchor_cfg.base_size, anchor_cfg.ratios, anchor_cfg.scales)
        self.head = RPNHead(in_channels, mid_channels, reference.shape[0])
        # Not persistent: the anchors follow from the config, which checkpoints carry anyway;
        # keeping them out of the state_dict keeps checkpoints to learned weights.
        self.register_buffer("reference_anchors", reference, persistent=False)
        self._anchor_cache: dict[tuple[int, int, str, torch.dtype], Tensor] = {}

    @property
    def num_anchors(self) -> int:
        return int(self.reference_anchors.shape[0])

    def anchors_for(self, feature_height: int, feature_width: int) -> Tensor:
        """All anchors ``[Hf * Wf * A, 4]`` of a feature map, cached per size and device."""
        ref = self.reference_anchors
        key = (feature_height, feature_width, str(ref.device), ref.dtype)
        anchors = self._anchor_cache.get(key)
        if anchors is None:
            if len(self._anchor_cache) >= _MAX_CACHED_SIZES:
                self._anchor_cache.clear()
            anchors = shift_anchors(ref, feature_height, feature_width, self.stride)
            self._anchor_cache[key] = anchors
        return anchors

    def forward(
        self,
        features: Tensor,
        image_height: int,
        image_width: int,
        scale: float,
        proposal_cfg: ProposalConfig,
        gt_boxes: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> RPNOutput:
        """``features`` ``[1, C, Hf, Wf]`` of an ``image_height`` x ``image_width`` input
        resized by ``scale``; ``gt_boxes`` ``[G, 4]`` in input pixels turn on the loss.

        ``generator`` drives anchor sampling first, then the "random" ranking if chosen.
        """
        if features.dim() != 4 or features.shape[0] != 1:
            raise ValueError(
                f"RegionProposalNetwork takes one image, features [1, C, H, W]; got "
                f"{tuple(features.shape)}"
            )
        logits, deltas = self.head(features)
        anchors = self.anchors_for(features.shape[2], features.shape[3])
        return self._one_image(
            logits[0], deltas[0], anchors, image_height, image_width, scale, proposal_cfg, gt_boxes, generator
        )

    def forward_batch(
        self,
        features: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        feature_sizes: Sequence[tuple[int, int]],
        scales: Sequence[float],
        proposal_cfg: ProposalConfig,
        gt_boxes: Sequence[Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> list[RPNOutput]:
        """One ``RPNOutput`` per image of a padded batch ``features`` ``[B, C, Hf, Wf]``.

        ``image_sizes`` ``(h_i, w_i)``, ``feature_sizes`` ``(Hf_i, Wf_i)`` (the map the trunk
        gives the image alone, ``Backbone.feature_size``) and ``scales`` per image,
        ``gt_boxes`` ``[G_i, 4]`` per image (input pixels). The head runs once over the batch;
        each image then keeps only the anchors of its own feature extent
        (``own_anchor_positions``), so no position of the padding is labelled, scored or
        proposed, and labels, loss and proposals follow as for that image alone, in batch
        order (``generator`` draws image 0's first).
        """
        if (features.dim() != 4 or features.shape[0] != len(image_sizes)
                or len(scales) != len(image_sizes) or len(feature_sizes) != len(image_sizes)):
            raise ValueError(
                f"features [B, C, H, W] with B = {len(image_sizes)} image sizes and scales, got "
                f"{tuple(features.shape)} and {len(scales)} scales"
            )
        if gt_boxes is not None and len(gt_boxes) != len(image_sizes):
            raise ValueError(f"gt_boxes must hold one [G, 4] tensor per image, got {len(gt_boxes)}")
        logits, deltas = self.head(features)  # [B, N, 2], [B, N, 4]
        feature_height, feature_width = features.shape[2], features.shape[3]
        anchors = self.anchors_for(feature_height, feature_width)
        outputs = []
        for i, ((height, width), own_size, scale) in enumerate(zip(image_sizes, feature_sizes, scales)):
            own = own_anchor_positions(own_size, (feature_height, feature_width), self.num_anchors, anchors.device)
            if own is None:  # the image fills the batch's map: every anchor is its own
                image_anchors, image_logits, image_deltas = anchors, logits[i], deltas[i]
            else:
                image_anchors, image_logits, image_deltas = anchors[own], logits[i][own], deltas[i][own]
            outputs.append(self._one_image(
                image_logits, image_deltas, image_anchors, height, width, scale, proposal_cfg,
                None if gt_boxes is None else gt_boxes[i], generator,
            ))
        return outputs

    def _one_image(
        self,
        logits: Tensor,
        deltas: Tensor,
        anchors: Tensor,
        image_height: int,
        image_width: int,
        scale: float,
        proposal_cfg: ProposalConfig,
        gt_boxes: Tensor | None,
        generator: torch.Generator | None,
    ) -> RPNOutput:
        """Labels, loss and proposals of one image from its logits ``[N, 2]``, deltas ``[N, 4]``."""
        losses: dict[str, Tensor] = {}
        labels = None
        if gt_boxes is not None:
            labels, targets = label_anchors(
                anchors, gt_boxes, image_height, image_width, self.rpn_cfg, generator
            )
            losses = rpn_loss(logits, deltas, labels, targets, sigma=self.rpn_cfg.sigma)

        # Proposals are inputs to the detector, never differentiated through (as the original).
        with torch.no_grad():
            objectness = objectness_probability(logits.detach())
            proposals, scores = generate_proposals(
                anchors,
                objectness,
                deltas.detach(),
                image_height,
                image_width,
                scale,
                proposal_cfg,
                generator,
            )
        return RPNOutput(
            proposals=proposals,
            scores=scores,
            losses=losses,
            anchors=anchors,
            objectness=objectness,
            labels=labels,
        )


def own_anchor_positions(
    own_size: tuple[int, int],
    batch_size: tuple[int, int],
    num_anchors: int,
    device: torch.device,
) -> Tensor | None:
    """Indices ``[N_i]`` (``shift_anchors`` order) of the anchors of an image whose own map is
    ``own_size`` = ``(Hf_i, Wf_i)``, the top-left part of a padded batch's ``batch_size`` map;
    None when that is the whole map."""
    rows, columns = min(own_size[0], batch_size[0]), min(own_size[1], batch_size[1])
    feature_width = batch_size[1]
    if (rows, columns) == tuple(batch_size):
        return None
    y = torch.arange(rows, device=device)[:, None]
    x = torch.arange(columns, device=device)[None, :]
    positions = (y * feature_width + x).reshape(-1)
    return (positions[:, None] * num_anchors + torch.arange(num_anchors, device=device)[None, :]).reshape(-1)
