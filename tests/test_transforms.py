"""Scale rule, resize and flip of training inputs (model/data/transforms.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from model.data.records import DatasetError, ImageRecord, ObjectAnnotation
from model.data.transforms import (
    compute_scale,
    flip_boxes,
    load_training_sample,
    prepare_image,
    resized_size,
)


@pytest.mark.parametrize(
    "height, width, expected",
    [
        (375, 500, 1.6),  # VOC-typical: shorter side -> 600, longer 800 <= 1000
        (480, 640, 1.25),  # BCCD: 600 x 800
        (500, 375, 1.6),  # portrait: same rule on the shorter side
        (100, 1000, 1.0),  # 600 / 100 = 6 would make the long side 6000: capped to 1000 / 1000
        (300, 600, 1000 / 600),  # 2.0 would give 1200 > 1000
        (600, 1000, 1.0),
        # round(0.12 * 8334) = round(1000.08) = 1000, not > 1000: the original keeps 0.12
        (5000, 8334, 0.12),
        # round(0.12 * 8338) = round(1000.56) = 1001 > 1000: capped to 1000 / 8338
        (5000, 8338, 1000 / 8338),
    ],
)
def test_compute_scale_follows_the_original_rule(height: int, width: int, expected: float) -> None:
    assert compute_scale(height, width, 600, 1000) == pytest.approx(expected, rel=1e-12)


def test_compute_scale_rejects_empty_images() -> None:
    with pytest.raises(ValueError):
        compute_scale(0, 10, 600, 1000)


def test_flip_boxes_worked_by_hand() -> None:
    # Image 10 px wide: columns 0..3 become 6..9, column 9 becomes 0.
    boxes = torch.tensor([[0.0, 2.0, 3.0, 5.0], [9.0, 0.0, 9.0, 1.0], [2.5, 1.0, 6.5, 4.0]])
    flipped = flip_boxes(boxes, 10)
    expected = torch.tensor([[6.0, 2.0, 9.0, 5.0], [0.0, 0.0, 0.0, 1.0], [2.5, 1.0, 6.5, 4.0]])
    assert torch.equal(flipped, expected)
    assert torch.equal(flip_boxes(flipped, 10), boxes)  # an involution
    assert torch.equal(boxes[0], torch.tensor([0.0, 2.0, 3.0, 5.0]))  # input untouched


def test_prepare_image_size_scale_and_bilinear_values() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    tensor, scale = prepare_image(image, min_size=12, max_size=100)
    assert scale == 2.0
    assert tensor.shape == (3, 12, 16) and tensor.dtype == torch.float32
    # cv2 INTER_LINEAR on float = half-pixel-centre bilinear = torch's align_corners=False.
    reference = F.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].float(), scale_factor=2, mode="bilinear",
        align_corners=False,
    )[0]
    assert torch.allclose(tensor, reference, atol=1e-3)
    assert 0.0 <= float(tensor.min()) and float(tensor.max()) <= 255.0


def test_prepare_image_rgb_order_and_identity_scale() -> None:
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    image[..., 0] = 200  # red
    tensor, scale = prepare_image(image, min_size=4, max_size=10)
    assert scale == 1.0
    assert torch.all(tensor[0] == 200) and torch.all(tensor[1:] == 0)


def test_prepare_image_flip_mirrors_before_resizing() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    flipped, _ = prepare_image(image, 10, 100, flip=True)
    mirrored, _ = prepare_image(np.ascontiguousarray(image[:, ::-1]), 10, 100)
    assert torch.equal(flipped, mirrored)
    plain, _ = prepare_image(image, 10, 100)
    assert torch.allclose(flipped, plain.flip(-1), atol=1e-3)


def test_resized_size_matches_prepare_image() -> None:
    image = np.zeros((375, 500, 3), dtype=np.uint8)
    tensor, scale = prepare_image(image, 600, 1000)
    assert tuple(tensor.shape[1:]) == resized_size(375, 500, scale) == (600, 800)


def _record(tmp_path: Path) -> ImageRecord:
    path = tmp_path / "img.png"
    Image.fromarray(np.full((20, 40, 3), 90, dtype=np.uint8)).save(path)
    objects = (
        ObjectAnnotation("cat", (0.0, 0.0, 9.0, 4.0)),
        ObjectAnnotation("dog", (10.0, 5.0, 19.0, 19.0), difficult=True),
        ObjectAnnotation("dog", (30.0, 2.0, 39.0, 12.0)),
    )
    return ImageRecord("img", path, width=40, height=20, objects=objects)


def test_load_training_sample_drops_difficult_scales_and_flips(tmp_path: Path) -> None:
    record = _record(tmp_path)
    image, boxes, labels, scale = load_training_sample(record, ("cat", "dog"), 40, 1000, flip=False)
    assert scale == 2.0 and image.shape == (3, 40, 80)
    assert torch.equal(labels, torch.tensor([1, 2]))  # the difficult dog is gone
    assert torch.equal(boxes, torch.tensor([[0.0, 0.0, 18.0, 8.0], [60.0, 4.0, 78.0, 24.0]]))

    _, fboxes, flabels, _ = load_training_sample(record, ("cat", "dog"), 40, 1000, flip=True)
    # Flipped in the 40-px original: cat x 0..9 -> 30..39, dog 30..39 -> 0..9; then x 2.
    assert torch.equal(flabels, labels)
    assert torch.equal(fboxes, torch.tensor([[60.0, 0.0, 78.0, 8.0], [0.0, 4.0, 18.0, 24.0]]))


def test_load_training_sample_unknown_class_names_the_file(tmp_path: Path) -> None:
    record = _record(tmp_path)
    with pytest.raises(DatasetError, match="img.png.*'dog'"):
        load_training_sample(record, ("cat",), 40, 1000, flip=False)


def test_load_training_sample_size_mismatch_is_refused(tmp_path: Path) -> None:
    record = _record(tmp_path)
    wrong = ImageRecord(record.image_id, record.path, width=41, height=20, objects=record.objects)
    with pytest.raises(DatasetError, match="img.png"):
        load_training_sample(wrong, ("cat", "dog"), 40, 1000, flip=False)
