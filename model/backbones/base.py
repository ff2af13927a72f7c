"""What every backbone hands the detector: shared convs, detector-only top, input normalisation.

Shapes: N images, R RoIs, C = ``feature_channels``, D = ``top_channels``,
p = ``pool_size``; feature maps ``[N, C, Hf, Wf]`` with Hf about H / 16.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from model.memory_format import conv_layout
from model.precision import as_float32


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be obtained (no network, missing package, unreadable file)."""


class WeightsMismatchError(RuntimeError):
    """A weights file does not fit the architecture (missing, unexpected or mis-shaped keys)."""


class FixedStatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with its stored running statistics and never updates them.

    Detection trains on 1-2 images per batch, far too few for batch statistics, so
    pretrained BN layers keep their ImageNet statistics in training as in evaluation
    (what Detectron calls FrozenBatchNorm). Unlike a fully frozen BN the affine
    ``weight`` / ``bias`` stay ordinary parameters: whether they train is decided by the
    same ``requires_grad`` switches that freeze or train the convolutions around them.
    The state dict is exactly ``nn.BatchNorm2d``'s, so pretrained files load strictly.
    """

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - see class docstring
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            training=False, momentum=0.0, eps=self.eps,
        )

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        """``(scale [C], shift [C])`` with ``forward(x) = x * scale + shift`` per channel
        (up to rounding), differentiable in ``weight`` and ``bias``: what a preceding
        convolution can fold in (``model.backbones.efficientnet_lite.conv_bn``)."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale


class Backbone(nn.Module):
    """A feature extractor split the Faster R-CNN way.

    ``shared``: normalised images ``[N, 3, H, W]`` -> features ``[N, C, Hf, Wf]`` at
    ``stride`` 16, used by both the RPN and the detector. ``top``: pooled RoI features
    ``[R, C, p, p]`` -> ``[R, D]``, the layers only the detector uses (fc6/fc7 for
    ZF and VGG). ``never_train`` lists parameter-name prefixes inside ``shared`` that
    stay frozen in every training step (VGG-16 conv1-conv2, as in the paper).

    ``normalize`` maps RGB float images in 0..255 to what the weights expect:
    ``(images[:, channel_order] - pixel_mean) / pixel_std`` per channel, with
    mean and std given in 0..255 units and in the order after reordering.
    """

    def __init__(
        self,
        *,
        name: str,
        shared: nn.Module,
        top: nn.Module,
        feature_channels: int,
        top_channels: int,
        pool_size: int,
        rpn_mid_channels: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        channel_order: Sequence[int] = (0, 1, 2),
        never_train: tuple[str, ...] = (),
        stride: int = 16,
    ) -> None:
        super().__init__()
        self.name = name
        self.shared = shared
        self.top = top
        self.feature_channels = feature_channels
        self.top_channels = top_channels
        self.pool_size = pool_size
        self.rpn_mid_channels = rpn_mid_channels
        self.never_train = tuple(never_train)
        self.stride = stride
        self.channel_order = tuple(int(c) for c in channel_order)
        # Non-persistent: they follow .to(device) but are fixed by the backbone's
        # name, so they do not belong in checkpoints.
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        unknown = [p for p in self.never_train if not any(n.startswith(p) for n, _ in shared.named_parameters())]
        if unknown:
            raise ValueError(f"{name}: never_train prefixes {unknown} match no parameter of `shared`")

    def normalize(self, images: Tensor) -> Tensor:
        """RGB float ``[N, 3, H, W]`` in 0..255 -> the network's input ``[N, 3, H, W]``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W], got {tuple(images.shape)}")
        if self.channel_order != (0, 1, 2):
            images = images[:, list(self.channel_order)]
        return (images - self.pixel_mean) / self.pixel_std

    def trunk(self, normalized: Tensor) -> Tensor:
        """``shared`` on normalised images ``[N, 3, H, W]`` -> float32 ``[N, C, Hf, Wf]``, run in
        the device's fast activation layout (``model.memory_format``: channels-last on the CPU;
        under bfloat16 autocast, ``model.precision``, the features come back in float32)."""
        return as_float32(self.shared(conv_layout(normalized)))

    def forward(self, images: Tensor) -> Tensor:
        """Convenience: ``trunk(normalize(images))``, RGB 0..255 ``[N, 3, H, W]`` -> ``[N, C, Hf, Wf]``."""
        return self.trunk(self.normalize(images))

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """``(Hf, Wf)`` that ``shared`` gives one ``height`` x ``width`` input, found by running
        ``shared`` on "meta" tensors (shapes only: no arithmetic, no copy of the weights);
        cached per size.

        In a padded batch an image's own features are this top-left part of the batch's map.
        """
        cache = self.__dict__.setdefault("_feature_sizes", {})
        key = (int(height), int(width))
        if key not in cache:
            tensors = dict(self.shared.named_parameters())
            tensors.update(self.shared.named_buffers())
            meta = {name: torch.empty_like(t, device="meta") for name, t in tensors.items()}
            with torch.no_grad():
                out = functional_call(self.shared, meta, (torch.empty((1, 3, *key), device="meta"),))
            cache[key] = (int(out.shape[2]), int(out.shape[3]))
        return cache[key]

    def never_train_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name inside shared, parameter)`` for every parameter under a ``never_train`` prefix."""
        return [(n, p) for n, p in self.shared.named_parameters() if n.startswith(self.never_train)]


def load_state_dict_file(path: Path, what: str) -> dict[str, Tensor]:
    """``torch.load(weights_only=True)`` with an error that names the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt / truncated / not a tensor file
        raise WeightsUnavailableError(f"{what}: cannot read weights file {path}: {error}") from error
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsMismatchError(f"{what}: {path} does not hold a state_dict of tensors")
    return state


def state_mismatch(own: Mapping[str, Tensor], state: Mapping[str, Tensor], limit: int = 5) -> str | None:
    """None when ``state`` has exactly ``own``'s keys and shapes, else one line saying what
    differs (missing keys, unexpected keys, shape mismatches; the first ``limit`` of each)."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if not (missing or unexpected or mis_shaped):
        return None

    def head(items: list[str]) -> str:
        more = f" and {len(items) - limit} more" if len(items) > limit else ""
        return f"[{', '.join(items[:limit])}{more}] ({len(items)})"

    return f"missing keys {head(missing)}, unexpected keys {head(unexpected)}, shape mismatches {head(mis_shaped)}"


def load_strict(model: nn.Module, state: dict[str, Tensor], path: Path | str, what: str) -> None:
    """Load ``state`` into ``model`` requiring the same keys and shapes; errors name the file."""
    problem = state_mismatch(model.state_dict(), state)
    if problem:
        raise WeightsMismatchError(f"{what}: {path} does not match the architecture: {problem}")
    model.load_state_dict(state, strict=True)
