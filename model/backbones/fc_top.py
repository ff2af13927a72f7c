"""The paper's detector layers: fc6 and fc7 with ReLU and dropout over the flattened RoI pool.

Used by ZF (as in the paper) and, as the ``top="fc"`` option, by EfficientNet-Lite, where
it replaces the late MBConv blocks: those cost ~10 ms per RoI on a CPU core, while two
fully connected layers over a 7x7 pool cost well under 1 ms.
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn


def fully_connected_top(in_channels: int, pool_size: int, width: int) -> nn.Sequential:
    """``[R, in_channels, pool_size, pool_size]`` pooled RoIs -> ``[R, width]`` features."""
    if width < 1:
        raise ValueError(f"fc_width must be positive, got {width}")
    return nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten(1)),
        ("fc6", nn.Linear(in_channels * pool_size * pool_size, width)),
        ("relu6", nn.ReLU(inplace=True)),
        ("drop6", nn.Dropout(0.5)),
        ("fc7", nn.Linear(width, width)),
        ("relu7", nn.ReLU(inplace=True)),
        ("drop7", nn.Dropout(0.5)),
    ]))
