"""Approximate joint training (model/joint.py): one loss, every group trains, resume, checkpoint."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from model.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from model.config import AnchorConfig, DetectorConfig
from model.data.records import DetectionDataset
from model.data.synthetic import SyntheticSpec, generate_synthetic_voc
from model.data.voc import load_voc
from model.faster_rcnn import FasterRCNN
from model.joint import train_joint
from model.training import TrainSchedule, train_rpn

CLASSES = ("circle", "square")


class Interrupt(Exception):
    pass


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> DetectionDataset:
    spec = SyntheticSpec(
        num_images=4, image_size=(128, 96), seed=1, classes=CLASSES, objects_per_image=(1, 2),
        object_size=(24.0, 48.0), clutter_per_image=(0, 1), tiny_fraction=0.0,
        truncation_fraction=0.0, test_fraction=0.0, val_fraction=0.0,
    )
    root = generate_synthetic_voc(tmp_path_factory.mktemp("syn") / "voc", spec)
    return load_voc(root, "trainval", classes=CLASSES)


def make_model(seed: int = 0) -> FasterRCNN:
    torch.manual_seed(seed)
    cfg = DetectorConfig(
        class_names=CLASSES, backbone="zf", pretrained=False, min_size=96, max_size=160,
        anchors=AnchorConfig(scales=(2.0, 4.0, 8.0)),
    )
    cfg.roi.batch_size_per_image = 16
    cfg.train_proposals.pre_nms_top_n = 600  # a small image: 12000 -> 2000 would keep all
    cfg.train_proposals.post_nms_top_n = 100
    return FasterRCNN(cfg, {"fc_width": 32})


def weights(model: FasterRCNN) -> dict[str, dict[str, torch.Tensor]]:
    return {g: {k: v.clone() for k, v in m.state_dict().items()} for g, m in model.group_modules().items()}


def test_one_loss_trains_every_group(dataset: DetectionDataset, tmp_path: Path) -> None:
    model = make_model()
    model.roi_head.set_target_stats((0.5, 0.5, 0.5, 0.5), (1.0, 1.0, 1.0, 1.0))  # replaced by the fixed ones
    before = weights(model)
    history = train_joint(model, dataset, TrainSchedule(iterations=3, base_lr=0.005, seed=3), tmp_path / "j.pt",
                          progress=False)
    assert len(history) == 3
    assert set(history[0]) == {"rpn_cls", "rpn_reg", "det_cls", "det_reg", "total", "lr"}
    for h in history:
        assert math.isfinite(h["total"])
        assert h["total"] == pytest.approx(h["rpn_cls"] + h["rpn_reg"] + h["det_cls"] + h["det_reg"], rel=1e-6)
    after = weights(model)
    for group in FasterRCNN.GROUPS:  # shared convs get both losses; RPN and detector their own
        assert any(not torch.equal(before[group][k], after[group][k]) for k in before[group] if "target" not in k), group
    torch.testing.assert_close(model.roi_head.target_means, torch.zeros(4))
    torch.testing.assert_close(model.roi_head.target_stds, torch.tensor([0.1, 0.1, 0.2, 0.2]))
    # The checkpoint is an ordinary Faster R-CNN checkpoint: it loads and detects.
    loaded, extra = load_checkpoint(tmp_path / "j.pt")
    assert extra["step"] == "joint"
    image = torch.rand(3, 96, 128) * 255
    torch.testing.assert_close(loaded.detect(image, 1.0).boxes, model.detect(image, 1.0).boxes)


def test_proposals_are_not_differentiated_through(dataset: DetectionDataset) -> None:
    model = make_model()
    model.train()
    image = torch.rand(3, 96, 128) * 255
    features, sizes = model.features_batch([image])
    (out,) = model.rpn_outputs_batch(features, sizes, [1.0], model.cfg.train_proposals,
                              [torch.tensor([[10.0, 10.0, 60.0, 50.0]])], torch.Generator().manual_seed(0))
    assert not out.proposals.requires_grad and out.losses["rpn_cls"].requires_grad


def test_resume_matches_a_straight_run(dataset: DetectionDataset, tmp_path: Path) -> None:
    schedule = TrainSchedule(iterations=4, base_lr=0.005, checkpoint_every=2, seed=5)
    straight = make_model()
    h_straight = train_joint(straight, dataset, schedule, tmp_path / "a.pt", progress=False)

    def stop_at_3(iteration: int, _: dict[str, float]) -> None:
        if iteration == 3:
            raise Interrupt

    path = tmp_path / "b.pt"
    with pytest.raises(Interrupt):
        train_joint(make_model(), dataset, schedule, path, progress=False, on_log=stop_at_3)
    assert read_checkpoint(path)["train_state"]["iteration"] == 2
    resumed = make_model(seed=9)
    assert train_joint(resumed, dataset, schedule, path, progress=False) == h_straight
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[g][k], b[g][k]) for g in a for k in a[g])
    with pytest.raises(CheckpointError, match=r"b\.pt.*'joint' training step"):
        train_rpn(make_model(), dataset, schedule, path, progress=False)
