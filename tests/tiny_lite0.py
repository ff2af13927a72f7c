"""A small EfficientNet-Lite0 Faster R-CNN for tests (random weights, 96/160 input, two classes)."""
from __future__ import annotations

import torch

from model.config import AnchorConfig, DetectorConfig
from model.faster_rcnn import FasterRCNN

CLASSES = ("disc", "bar")


def tiny_lite0(**backbone_options) -> FasterRCNN:  # noqa: ANN003 - the backbone's own options
    """Seed 0, anchors 32-128 px, 16 RoIs per image; ``backbone_options`` as FasterRCNN takes them."""
    torch.manual_seed(0)
    cfg = DetectorConfig(
        class_names=CLASSES, backbone="efficientnet_lite0", pretrained=False, min_size=96, max_size=160,
        anchors=AnchorConfig(scales=(2.0, 4.0, 8.0)),
    )
    cfg.roi.batch_size_per_image = 16
    return FasterRCNN(cfg, backbone_options or None)
