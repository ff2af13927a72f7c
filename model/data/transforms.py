"""Turning an image record into the network's input: scale rule, resize, horizontal flip.

Shapes: H x W the original image, h x w the resized network input, G ground-truth boxes.
Boxes are ``(x1, y1, x2, y2)`` 0-based inclusive (see ``model``).

As in py-faster-rcnn the flip is applied to the original image and its boxes, and the
resize comes after; the resize is OpenCV's bilinear ``INTER_LINEAR`` on a float image with
``fx = fy = scale``, exactly the original's ``cv2.resize`` call (the original subtracts the
pixel mean first; bilinear weights sum to one, so doing that later in the backbone gives
the same numbers).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np
import torch
from torch import Tensor

from model.data.images import load_image_rgb
from model.data.records import DatasetError, ImageRecord
from model.data.scale import compute_scale, resized_size  # noqa: F401  (re-exported)
from model.data.voc import training_objects


def prepare_image(
    image: np.ndarray, min_size: int, max_size: int, flip: bool = False
) -> tuple[Tensor, float]:
    """Network input ``[3, h, w]`` float32 RGB in 0..255 and the scale applied.

    ``image`` is ``[H, W, 3]`` uint8 RGB. ``flip`` mirrors it left-right before resizing.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"expected an [H, W, 3] image array, got shape {shape}")
    height, width = int(image.shape[0]), int(image.shape[1])
    scale = compute_scale(height, width, min_size, max_size)
    pixels = image[:, ::-1, :] if flip else image
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    if scale != 1.0:
        pixels = cv2.resize(pixels, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
    return tensor, scale


def flip_boxes(boxes: Tensor, width: int | float) -> Tensor:
    """Mirror ``[N, 4]`` inclusive boxes in an image ``width`` pixels wide.

    Pixel column ``x`` goes to ``W - 1 - x``, so ``x1' = W - x2 - 1`` and ``x2' = W - x1 - 1``.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be [N, 4], got {tuple(boxes.shape)}")
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2] - 1
    flipped[:, 2] = width - boxes[:, 0] - 1
    return flipped


class TrainingSample(NamedTuple):
    """One prepared training image (unpacks as a tuple).

    image ``[3, h, w]`` float32 RGB 0..255; gt_boxes ``[G, 4]`` in input (scaled)
    coordinates; gt_labels ``[G]`` int64 in 1..K; scale = input / original.
    """

    image: Tensor
    gt_boxes: Tensor
    gt_labels: Tensor
    scale: float


def record_boxes_labels(
    record: ImageRecord, class_names: Sequence[str]
) -> tuple[Tensor, Tensor]:
    """Non-difficult objects of ``record`` as boxes ``[G, 4]`` (original coords) and labels ``[G]``."""
    label_of = {name: i + 1 for i, name in enumerate(class_names)}
    objects = training_objects(record)
    boxes = torch.zeros((len(objects), 4), dtype=torch.float32)
    labels = torch.zeros((len(objects),), dtype=torch.int64)
    for i, obj in enumerate(objects):
        if obj.name not in label_of:
            raise DatasetError(
                f"{record.path}: object class {obj.name!r} is not one of the detector's classes "
                f"{list(class_names)}"
            )
        boxes[i] = torch.tensor(obj.box, dtype=torch.float32)
        labels[i] = label_of[obj.name]
    return boxes, labels


def load_training_sample(
    record: ImageRecord,
    class_names: Sequence[str],
    min_size: int,
    max_size: int,
    flip: bool,
) -> TrainingSample:
    """Read, optionally flip, and resize one training image with its non-difficult boxes."""
    image = load_image_rgb(record.path)
    height, width = int(image.shape[0]), int(image.shape[1])
    if (height, width) != (record.height, record.width):
        # Boxes were validated against the annotated size; a different file size would
        # silently misplace them.
        raise DatasetError(
            f"{record.path}: image is {width}x{height} but its annotation says "
            f"{record.width}x{record.height}"
        )
    boxes, labels = record_boxes_labels(record, class_names)
    if flip:
        boxes = flip_boxes(boxes, width)
    tensor, scale = prepare_image(image, min_size, max_size, flip=flip)
    return TrainingSample(tensor, boxes * scale, labels, scale)
