"""The Fast R-CNN detector: RoIPool -> backbone top -> class scores and class-specific box deltas.

Shapes: R RoIs, C feature channels, D = top output width, p = pool size, K foreground
classes (the classifier has K + 1 outputs, 0 = background).

Box deltas are predicted in normalised target space, ``(t - mean) / std`` with the
dataset's box-target statistics (or the end-to-end defaults mean 0, std
(0.1, 0.1, 0.2, 0.2)). py-faster-rcnn folds the statistics into ``bbox_pred``'s weights
when it saves a snapshot; here they live in the buffers ``target_means`` /
``target_stds`` of the state dict instead, and ``unnormalize_deltas`` applies them at
inference: the same function, and the weights stay what the optimiser trained.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_pool

from model.config import RoIConfig
from model.memory_format import conv_layout, has_convolutions
from model.precision import as_float32


class DetectorHead(nn.Module):
    """Fast R-CNN head over the feature maps of a batch (one image or several).

    ``top`` maps pooled features ``[R, C, p, p]`` to ``[R, D]`` (fc6/fc7 for ZF/VGG, the
    late EfficientNet blocks for Lite). ``cls_score``: Linear(D, K+1), init N(0, 0.01);
    ``bbox_pred``: Linear(D, 4(K+1)), init N(0, 0.001); biases 0.
    """

    def __init__(
        self,
        top: nn.Module,
        feature_channels: int,
        top_channels: int,
        pool_size: int,
        num_classes: int,
        spatial_scale: float = 1.0 / 16,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes (foreground classes K) must be >= 1, got {num_classes}")
        self.top = top
        self.feature_channels = feature_channels
        self.top_channels = top_channels
        self.pool_size = pool_size
        self.num_classes = num_classes
        self.spatial_scale = spatial_scale
        # A convolutional top (Lite's late blocks) runs on channels-last RoIs on the CPU.
        self.conv_top = has_convolutions(top)
        self.cls_score = nn.Linear(top_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(top_channels, 4 * (num_classes + 1))
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        defaults = RoIConfig()
        self.register_buffer("target_means", torch.tensor(defaults.target_means, dtype=torch.float32))
        self.register_buffer("target_stds", torch.tensor(defaults.target_stds, dtype=torch.float32))

    def set_target_stats(self, means: Sequence[float] | Tensor, stds: Sequence[float] | Tensor) -> None:
        """Use ``means`` / ``stds`` ``[4]`` (dx, dy, dw, dh) to normalise targets from now on."""
        means_t = torch.as_tensor(means, dtype=torch.float32).reshape(-1)
        stds_t = torch.as_tensor(stds, dtype=torch.float32).reshape(-1)
        if means_t.shape != (4,) or stds_t.shape != (4,):
            raise ValueError(
                f"target means and stds must have 4 values, got {tuple(means_t.shape)} and {tuple(stds_t.shape)}"
            )
        finite = bool(torch.isfinite(means_t).all()) and bool(torch.isfinite(stds_t).all())
        if not finite or not bool((stds_t > 0).all()):
            raise ValueError(
                f"target stats must be finite with positive stds, got means {means_t.tolist()}, stds {stds_t.tolist()}"
            )
        self.target_means.copy_(means_t)
        self.target_stds.copy_(stds_t)

    def normalize_targets(self, targets: Tensor) -> Tensor:
        """Raw box targets ``[R, 4]`` -> the space ``bbox_pred`` regresses in, ``[R, 4]``."""
        return (targets - self.target_means) / self.target_stds

    def unnormalize_deltas(self, deltas: Tensor) -> Tensor:
        """Predicted deltas ``[R, 4(K+1)]`` -> raw deltas for ``decode_boxes``, ``[R, 4(K+1)]``."""
        per_class = deltas.reshape(deltas.shape[0], -1, 4)
        return (per_class * self.target_stds + self.target_means).reshape(deltas.shape)

    def pool(self, features: Tensor, rois: Tensor | Sequence[Tensor]) -> Tensor:
        """RoIPool (Caffe semantics: rounded corners, inclusive extent) -> ``[R, C, p, p]``.

        ``features`` ``[B, C, Hf, Wf]`` with ``rois`` one ``[R_i, 4]`` tensor per image (rows
        of the result in that order), or ``[1, C, Hf, Wf]`` with one ``[R, 4]`` tensor.
        """
        per_image = [rois] if isinstance(rois, Tensor) else list(rois)
        if features.dim() != 4 or features.shape[0] != len(per_image):
            raise ValueError(
                f"features must be [B, C, Hf, Wf] with B = {len(per_image)}, one RoI tensor per image (one image: [1, C, Hf, Wf]), "
                f"got {tuple(features.shape)}"
            )
        if features.shape[1] != self.feature_channels:
            raise ValueError(f"features have {features.shape[1]} channels, the head expects {self.feature_channels}")
        for boxes in per_image:
            if boxes.dim() != 2 or boxes.shape[1] != 4:
                raise ValueError(f"rois must be [R, 4], got {tuple(boxes.shape)}")
        return roi_pool(features, [b.to(features.dtype) for b in per_image], self.pool_size, self.spatial_scale)

    def forward(self, features: Tensor, rois: Tensor | Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``features`` ``[B, C, Hf, Wf]``, ``rois`` in input pixels (see ``pool``) ->
        class logits ``[R, K+1]`` and normalised box deltas ``[R, 4(K+1)]``, R all RoIs; float32
        also under bfloat16 autocast (``model.precision``)."""
        pooled = self.pool(features, rois)
        x = self.top(conv_layout(pooled) if self.conv_top else pooled)
        return as_float32(self.cls_score(x)), as_float32(self.bbox_pred(x))
