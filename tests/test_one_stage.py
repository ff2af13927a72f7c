"""The one-stage detector (model/one_stage.py): head layout, window labels, loss, detect, training."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from model.config import DetectorConfig, RPNConfig
from model.config import TestConfig as DetTestConfig  # not "Test*": pytest would collect it
from model.data.records import DetectionDataset, ImageRecord, ObjectAnnotation
from model.detections import Detections
from model.training import TrainSchedule
from model.one_stage import (
    OneStageDetector,
    OneStageHead,
    label_windows,
    load_one_stage,
    one_stage_label_config,
    save_one_stage,
    train_one_stage,
)

CLASSES = ("disc", "bar")


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**kwargs) -> DetectorConfig:
    base = dict(class_names=CLASSES, backbone="efficientnet_lite0", pretrained=False, min_size=256, max_size=320)
    base.update(kwargs)
    return DetectorConfig(**base)


def _image() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 256 x 320 input (big enough for the 128-px anchors) with a bright square
    (class 1) and a dark bar (class 2)."""
    image = torch.full((3, 256, 320), 120.0)
    image[:, 40:168, 30:158] = 240.0  # 128 x 128 at (30, 40)
    image[:, 60:236, 200:288] = 10.0  # 88 x 176 at (200, 60)
    boxes = torch.tensor([[30.0, 40.0, 157.0, 167.0], [200.0, 60.0, 287.0, 235.0]])
    return image, boxes, torch.tensor([1, 2])


# ----------------------------------------------------------------------------- labels
def test_label_windows_worked_by_hand():
    anchors = torch.tensor(
        [
            [0.0, 0.0, 19.0, 19.0],  # = gt A: IoU 1 -> class 2
            [50.0, 50.0, 69.0, 69.0],  # gt B covers it, IoU 400 / 600 = 0.667 -> class 1
            [0.0, 0.0, 9.0, 19.0],  # half of gt A: IoU 200 / 400 = 0.5 -> class 2 (>= 0.5)
            [80.0, 0.0, 99.0, 19.0],  # overlaps nothing -> background
            [90.0, 90.0, 120.0, 120.0],  # crosses the border of the 100 x 100 image -> ignored
        ]
    )
    gt_boxes = torch.tensor([[0.0, 0.0, 19.0, 19.0], [50.0, 50.0, 69.0, 79.0]])
    gt_labels = torch.tensor([2, 1])
    cfg = RPNConfig(positive_iou=0.5, negative_iou=0.5, batch_size_per_image=1000, positive_fraction=1.0)
    labels, targets = label_windows(anchors, gt_boxes, gt_labels, 100, 100, cfg)
    assert labels.tolist() == [2, 1, 2, 0, -1]
    expected = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 5.0 / 20.0, 0.0, math.log(30.0 / 20.0)],  # centre y 60 -> 65, height 20 -> 30
            [5.0 / 10.0, 0.0, math.log(2.0), 0.0],  # centre x 5 -> 10, width 10 -> 20
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(targets, expected)


def test_window_overlapping_no_gt_is_background():
    # The gt overlaps no anchor: label_anchors makes every zero-IoU anchor "positive" (the
    # original's quirk); as a class label that must be background, not the gt's class.
    anchors = torch.tensor([[0.0, 0.0, 19.0, 19.0], [30.0, 30.0, 49.0, 49.0]])
    cfg = RPNConfig(positive_iou=0.5, negative_iou=0.5, batch_size_per_image=1000, positive_fraction=1.0)
    labels, _ = label_windows(anchors, torch.tensor([[80.0, 80.0, 95.0, 95.0]]), torch.tensor([2]), 100, 100, cfg)
    assert labels.tolist() == [0, 0]


def test_label_config_is_fast_rcnn_s():
    cfg = one_stage_label_config(_cfg())
    assert (cfg.positive_iou, cfg.negative_iou) == (0.5, 0.5)
    assert (cfg.batch_size_per_image, cfg.positive_fraction, cfg.sigma) == (64, 0.25, 1.0)


def test_sampling_follows_the_batch_size():
    image, boxes, labels = _image()
    model = OneStageDetector(_cfg())
    logits, deltas, classes, targets = model.loss_terms(image, boxes, labels, torch.Generator().manual_seed(0))
    assert logits.shape[0] == deltas.shape[0] == classes.shape[0] == targets.shape[0] <= 64
    assert 0 < int((classes > 0).sum()) <= 16  # at most 25 % foreground
    assert set(classes.tolist()) == {0, 1, 2}


# ----------------------------------------------------------------------------- shapes
def test_head_layout_matches_anchor_order():
    head = OneStageHead(in_channels=4, mid_channels=8, num_anchors=3, num_classes=2)
    features = torch.randn(1, 4, 2, 5)
    logits, deltas = head(features)
    assert logits.shape == (2 * 5 * 3, 3) and deltas.shape == (2 * 5 * 3, 12)
    hidden = torch.relu(head.conv(features))
    raw_cls, raw_reg = head.cls(hidden)[0], head.reg(hidden)[0]
    y, x, a, c = 1, 3, 2, 1
    row = (y * 5 + x) * 3 + a
    torch.testing.assert_close(logits[row, c], raw_cls[a * 3 + c, y, x])
    for j in range(4):
        torch.testing.assert_close(deltas[row, c * 4 + j], raw_reg[(a * 3 + c) * 4 + j, y, x])


def test_forward_shapes_and_no_top():
    model = OneStageDetector(_cfg())
    image, _, _ = _image()
    anchors, logits, deltas = model(image)
    features = model.features(image)
    n = features.shape[2] * features.shape[3] * 9
    assert anchors.shape == (n, 4) and logits.shape == (n, 3) and deltas.shape == (n, 12)
    assert not any(name.startswith("backbone.top") for name, _ in model.named_parameters())


# ----------------------------------------------------------------------------- loss and detect
def test_loss_finite_and_decreasing_on_one_image():
    torch.manual_seed(0)
    image, boxes, labels = _image()
    model = OneStageDetector(_cfg())
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    totals = []
    for _ in range(12):
        # The same windows every step, so the loss compares like with like.
        losses = model.losses(image, boxes, labels, torch.Generator().manual_seed(3))
        assert set(losses) == {"one_stage_cls", "one_stage_reg"}
        total = losses["one_stage_cls"] + losses["one_stage_reg"]
        assert math.isfinite(float(total.detach()))
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    assert totals[0] > 0.5  # an untrained 3-way classifier and regressor
    assert sum(totals[-3:]) / 3 < 0.6 * totals[0]


def test_no_gt_gives_background_only():
    image, _, _ = _image()
    model = OneStageDetector(_cfg())
    _, _, classes, _ = model.loss_terms(image, torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64))
    assert classes.numel() == 64 and (classes == 0).all()


def test_detect_returns_detections_in_original_pixels():
    model = OneStageDetector(_cfg())
    image, _, _ = _image()
    scale = 0.5  # the input is the original at half size: original 640 x 512
    test_cfg = DetTestConfig(score_threshold=0.0, nms_threshold=0.3, max_detections_per_image=20)
    dets = model.detect(image, scale, test_cfg=test_cfg)
    assert isinstance(dets, Detections)
    assert 0 < len(dets) <= 20
    assert dets.boxes.shape == (len(dets), 4) and dets.labels.dtype == torch.int64
    assert set(dets.labels.tolist()) <= {1, 2}
    assert (dets.boxes >= 0).all() and (dets.boxes[:, 2] <= 319 / scale).all() and (dets.boxes[:, 3] <= 255 / scale).all()
    assert (dets.scores[:-1] >= dets.scores[1:]).all()
    model.train()
    model.detect(image, 1.0)
    assert model.training


# ----------------------------------------------------------------------------- training and files
def _tiny_dataset(root) -> DetectionDataset:
    records = []
    for i in range(2):
        pixels = np.full((256, 320, 3), 120, np.uint8)
        x = 30 + 20 * i
        pixels[40:168, x : x + 128] = 240
        pixels[60:236, 200:288] = 10
        path = root / f"img{i}.png"
        Image.fromarray(pixels).save(path)
        objects = (
            ObjectAnnotation("disc", (float(x), 40.0, float(x + 127), 167.0)),
            ObjectAnnotation("bar", (200.0, 60.0, 287.0, 235.0)),
        )
        records.append(ImageRecord(f"img{i}", path, 320, 256, objects))
    return DetectionDataset(root, CLASSES, records)


def test_train_one_stage_is_deterministic_and_round_trips(tmp_path):
    dataset = _tiny_dataset(tmp_path)
    histories, models = [], []
    for _ in range(2):
        torch.manual_seed(1)
        model = OneStageDetector(_cfg())
        histories.append(train_one_stage(model, dataset, TrainSchedule(iterations=3, base_lr=1e-3, seed=7, ims_per_batch=2), progress=False))
        models.append(model)
    assert histories[0] == histories[1]
    assert len(histories[0]) == 3 and set(histories[0][0]) == {"one_stage_cls", "one_stage_reg", "total", "lr"}
    assert all(math.isfinite(h["total"]) for h in histories[0])
    assert not models[0].training

    path = tmp_path / "one_stage.pt"
    save_one_stage(path, models[0])
    loaded = load_one_stage(path)
    image, _, _ = _image()
    a = models[0].detect(image, 1.0, test_cfg=DetTestConfig(score_threshold=0.0))
    b = loaded.detect(image, 1.0, test_cfg=DetTestConfig(score_threshold=0.0))
    torch.testing.assert_close(a.boxes, b.boxes)
    torch.testing.assert_close(a.scores, b.scores)


def test_load_refuses_other_files(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(ValueError, match="other.pt.*not a one-stage checkpoint"):
        load_one_stage(other)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_one_stage(garbage)


def test_train_one_stage_resumes_through_the_shared_loop(tmp_path):
    from model.checkpoint import read_checkpoint

    dataset = _tiny_dataset(tmp_path)
    schedule = TrainSchedule(iterations=4, base_lr=1e-3, seed=7, ims_per_batch=1, checkpoint_every=2)
    torch.manual_seed(1)
    straight = OneStageDetector(_cfg())
    h_straight = train_one_stage(straight, dataset, schedule, tmp_path / "a.pt", progress=False)

    def stop_at_3(iteration, _):
        if iteration == 3:
            raise KeyboardInterrupt

    path = tmp_path / "b.pt"
    torch.manual_seed(1)
    with pytest.raises(KeyboardInterrupt):
        train_one_stage(OneStageDetector(_cfg()), dataset, schedule, path, progress=False, on_log=stop_at_3)
    assert read_checkpoint(path, kind=OneStageDetector)["train_state"]["iteration"] == 2
    torch.manual_seed(2)  # another init: everything must come from the checkpoint
    resumed = OneStageDetector(_cfg())
    assert train_one_stage(resumed, dataset, schedule, path, progress=False) == h_straight
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    # The in-progress file is an ordinary checkpoint of the one-stage kind.
    assert isinstance(load_one_stage(path), OneStageDetector)


def test_batched_terms_equal_per_image_for_one_image_and_stay_inside_each_image():
    image, boxes, labels = _image()
    model = OneStageDetector(_cfg())
    model.train()
    single = model.loss_terms(image, boxes, labels, torch.Generator().manual_seed(4))
    batched = model.loss_terms_batch([image], [boxes], [labels], torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(single, batched))
    # Two sizes: the small image's windows are those of its own map, labelled for its own gt.
    small = image[:, :160, :192]
    small_boxes, small_labels = torch.tensor([[30.0, 20.0, 157.0, 147.0]]), torch.tensor([1])
    logits, _, classes, _ = model.loss_terms_batch([image, small], [boxes, small_boxes], [labels, small_labels],
                                                   torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)
    first = model.loss_terms(image, boxes, labels, generator)
    second = model.loss_terms(small, small_boxes, small_labels, generator)
    assert torch.equal(classes, torch.cat([first[2], second[2]]))  # same windows sampled and labelled
    assert set(second[2].tolist()) <= {0, 1} and logits.shape[0] == first[0].shape[0] + second[0].shape[0]
