"""The Zeiler-Fergus net as py-faster-rcnn's ZF prototxt builds it (the paper's small model).

conv1 96 7x7/2 pad 3 -> ReLU -> LRN -> max pool 3x3/2 pad 1 -> conv2 256 5x5/2 pad 2 -> ReLU
-> LRN -> max pool 3x3/2 pad 1 -> conv3 384 -> conv4 384 -> conv5 256 (3x3 pad 1, each + ReLU).
Caffe pools round their output size up (``ceil_mode``), so a 600-pixel side gives
300 -> 151 -> 76 -> 39 cells, i.e. about H / 16 + 1: the stride is 16 but the map is one
or two cells larger than ``H / 16``. Detector top: RoIPool 6x6 -> fc6 -> ReLU -> dropout
0.5 -> fc7 -> ReLU -> dropout 0.5.

No ImageNet ZF weights exist here, so the net always starts from random weights (He
normal). The input is only mean-subtracted (Caffe style, pixel values keep a spread of
about 58), so conv1 is scaled down by that spread to start the activations near unit
variance; otherwise the RPN and detector scores would start far outside the
softmax's useful range.
"""
from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

from model.backbones.fc_top import fully_connected_top
from model.backbones.base import Backbone, WeightsUnavailableError

# Caffe ImageNet mean in BGR order (py-faster-rcnn's PIXEL_MEANS), in 0..255.
CAFFE_BGR_MEAN = (102.9801, 115.9465, 122.7717)
_IMAGENET_PIXEL_STD = 58.0  # typical std of ImageNet pixels in 0..255 units


class WithinChannelLRN(nn.Module):
    """Caffe LRN with ``norm_region: WITHIN_CHANNEL``: ``x / (1 + alpha * mean_{k x k}(x^2))^beta``.

    Caffe averages the squares over a ``k x k`` window padded with zeros and always
    divides by ``k^2`` (the window never leaves the padded map at stride 1).
    """

    def __init__(self, local_size: int = 3, alpha: float = 5e-5, beta: float = 0.75):
        super().__init__()
        self.local_size, self.alpha, self.beta = local_size, alpha, beta

    def forward(self, x: Tensor) -> Tensor:
        mean_sq = F.avg_pool2d(x * x, self.local_size, stride=1, padding=(self.local_size - 1) // 2,
                               count_include_pad=True)
        return x * (1.0 + self.alpha * mean_sq).pow(-self.beta)


def _zf_convs() -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 96, 7, stride=2, padding=3)),
        ("relu1", nn.ReLU(inplace=True)),
        ("norm1", WithinChannelLRN()),
        ("pool1", nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)),
        ("conv2", nn.Conv2d(96, 256, 5, stride=2, padding=2)),
        ("relu2", nn.ReLU(inplace=True)),
        ("norm2", WithinChannelLRN()),
        ("pool2", nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)),
        ("conv3", nn.Conv2d(256, 384, 3, padding=1)),
        ("relu3", nn.ReLU(inplace=True)),
        ("conv4", nn.Conv2d(384, 384, 3, padding=1)),
        ("relu4", nn.ReLU(inplace=True)),
        ("conv5", nn.Conv2d(384, 256, 3, padding=1)),
        ("relu5", nn.ReLU(inplace=True)),
    ]))


def _init_random(shared: nn.Sequential, top: nn.Sequential) -> None:
    for module in list(shared.modules()) + list(top.modules()):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    shared.conv1.weight.data.div_(_IMAGENET_PIXEL_STD)


def build_zf(pretrained: bool = True, *, fc_width: int = 4096) -> Backbone:
    """ZF backbone; ``fc_width`` narrows fc6/fc7 (4096 in the paper) for CPU-sized runs.

    ``pretrained`` is accepted for a uniform interface but there are no ZF ImageNet
    weights to load: asking for them is an error rather than a silent random start.
    """
    if pretrained:
        raise WeightsUnavailableError(
            "zf: no ImageNet-pretrained ZF weights are available (the original Caffe model "
            "cannot be had here); build it with pretrained=False to start from random weights"
        )
    if fc_width < 1:
        raise ValueError(f"zf: fc_width must be positive, got {fc_width}")
    pool_size = 6
    shared, top = _zf_convs(), fully_connected_top(256, pool_size, fc_width)
    _init_random(shared, top)
    return Backbone(
        name="zf",
        shared=shared,
        top=top,
        feature_channels=256,
        top_channels=fc_width,
        pool_size=pool_size,
        rpn_mid_channels=256,
        pixel_mean=CAFFE_BGR_MEAN,
        pixel_std=(1.0, 1.0, 1.0),
        channel_order=(2, 1, 0),  # RGB -> BGR
    )
