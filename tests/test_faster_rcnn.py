"""The assembled detector: parameter groups, the four steps' freezing, inference in original pixels."""
from __future__ import annotations

import pytest
import torch

from model.config import AnchorConfig, DetectorConfig
from model.faster_rcnn import FasterRCNN

# The paper's four steps (sec. 3.2) -> the groups each one trains.
PAPER_STEPS = {
    "step1_rpn": ("shared", "rpn"),
    "step2_detector": ("shared", "detector"),
    "step3_rpn": ("rpn",),
    "step4_detector": ("detector",),
}


def small_config(backbone: str = "zf", classes: tuple[str, ...] = ("a", "b", "c")) -> DetectorConfig:
    return DetectorConfig(
        class_names=classes,
        backbone=backbone,
        pretrained=False,
        min_size=96,
        max_size=160,
        anchors=AnchorConfig(scales=(2.0, 4.0, 8.0)),
    )


@pytest.fixture(scope="module")
def zf_model() -> FasterRCNN:
    torch.manual_seed(0)
    return FasterRCNN(small_config(), {"fc_width": 32})


@pytest.fixture(scope="module")
def lite_model() -> FasterRCNN:
    torch.manual_seed(0)
    return FasterRCNN(small_config("efficientnet_lite0"), {"pool_size": 7})


def _ids(params) -> set[int]:
    return {id(p) for p in params}


@pytest.mark.parametrize("which", ["zf_model", "lite_model"])
def test_every_parameter_in_exactly_one_group(which: str, request: pytest.FixtureRequest) -> None:
    model: FasterRCNN = request.getfixturevalue(which)
    groups = model.parameter_groups()
    assert tuple(groups) == FasterRCNN.GROUPS
    seen: list[int] = [id(p) for params in groups.values() for p in params]
    assert len(seen) == len(set(seen)), "a parameter is in two groups"
    assert set(seen) == _ids(model.parameters()), "a parameter is in no group"
    # The detector group owns the backbone's top and the classifier / regressor.
    assert _ids(model.backbone.top.parameters()) <= _ids(groups["detector"])
    assert _ids(model.roi_head.cls_score.parameters()) <= _ids(groups["detector"])
    assert _ids(model.rpn.parameters()) == _ids(groups["rpn"])
    assert _ids(model.backbone.shared.parameters()) == _ids(groups["shared"])


def test_group_state_dict_keys_are_stable(zf_model: FasterRCNN) -> None:
    states = {k: m.state_dict() for k, m in zf_model.group_modules().items()}
    detector = set(states["detector"])
    assert {"cls_score.weight", "cls_score.bias", "bbox_pred.weight", "bbox_pred.bias",
            "target_means", "target_stds"} <= detector
    assert any(k.startswith("top.") for k in detector)
    assert all(k.startswith("head.") for k in states["rpn"])
    # No tensor appears in two groups' state dicts.
    ptrs = [v.data_ptr() for s in states.values() for v in s.values() if v.numel()]
    assert len(ptrs) == len(set(ptrs))


@pytest.mark.parametrize("step", sorted(PAPER_STEPS))
def test_set_trainable_follows_the_paper_steps(step: str, lite_model: FasterRCNN) -> None:
    model = lite_model
    model.set_trainable(PAPER_STEPS[step])
    groups = model.parameter_groups()
    for name, params in groups.items():
        wanted = name in PAPER_STEPS[step]
        assert all(p.requires_grad == wanted for p in params), f"{step}: group {name} wrong"
    model.train()
    # Frozen groups stay in eval mode, so dropout / drop-connect do not act on them.
    for name, module in model.group_modules().items():
        wanted = name in PAPER_STEPS[step]
        assert all(m.training == wanted for m in module.modules()), f"{step}: {name} training mode"
    model.set_trainable(FasterRCNN.GROUPS)


def test_step3_trains_only_the_rpn_layers(zf_model: FasterRCNN) -> None:
    model = zf_model
    model.set_trainable(("rpn",))
    model.train()
    image = torch.rand(3, 96, 128) * 255
    gt = torch.tensor([[10.0, 10.0, 60.0, 70.0]])
    losses = model.rpn_losses(image, gt, torch.Generator().manual_seed(0))
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.rpn.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())
    model.zero_grad(set_to_none=True)
    model.set_trainable(FasterRCNN.GROUPS)


def test_frozen_detector_has_no_dropout_in_train_mode(zf_model: FasterRCNN) -> None:
    model = zf_model
    features = torch.rand(1, 256, 6, 8)
    rois = torch.tensor([[0.0, 0.0, 60.0, 60.0], [10.0, 20.0, 90.0, 80.0]])
    model.set_trainable(("rpn",))
    model.train()
    a = model.roi_head(features, rois)[0]
    b = model.roi_head(features, rois)[0]
    assert torch.equal(a, b)
    model.set_trainable(("shared", "detector"))
    model.train()
    torch.manual_seed(1)
    c = model.roi_head(features, rois)[0]
    d = model.roi_head(features, rois)[0]
    assert not torch.equal(c, d), "trainable detector should apply dropout in train mode"
    model.set_trainable(FasterRCNN.GROUPS)
    model.eval()


def test_set_trainable_rejects_unknown_group(zf_model: FasterRCNN) -> None:
    with pytest.raises(ValueError, match="backbone"):
        zf_model.set_trainable(("backbone",))


def test_vgg16_conv1_conv2_never_train() -> None:
    model = FasterRCNN(small_config("vgg16", ("a",)))
    for step, groups in PAPER_STEPS.items():
        model.set_trainable(groups)
        for name, param in model.backbone.shared.named_parameters():
            never = name.startswith(model.backbone.never_train)
            if never or "shared" not in groups:
                assert not param.requires_grad, f"{step}: {name}"
            else:
                assert param.requires_grad, f"{step}: {name}"
    assert len(model.never_train_parameters()) == 8  # 4 convs x (weight, bias)


def test_features_losses_and_empty_sample(lite_model: FasterRCNN) -> None:
    model = lite_model
    image = torch.rand(3, 100, 130) * 255
    assert model.features(image).shape == (1, model.backbone.feature_channels, 7, 9)
    gt = torch.tensor([[10.0, 10.0, 60.0, 70.0], [70.0, 20.0, 120.0, 90.0]])
    labels = torch.tensor([1, 3])
    g = torch.Generator().manual_seed(0)
    rpn = model.rpn_losses(image, gt, g)
    assert set(rpn) == {"rpn_cls", "rpn_reg"} and all(torch.isfinite(v) for v in rpn.values())
    proposals = torch.tensor([[12.0, 8.0, 58.0, 66.0], [0.0, 0.0, 30.0, 30.0]])
    det = model.detector_losses(image, gt, labels, proposals, g)
    assert set(det) == {"det_cls", "det_reg"} and all(torch.isfinite(v) for v in det.values())
    assert float(det["det_reg"].detach()) > 0  # the first proposal and the gt boxes are foreground
    empty = model.detector_losses(image, torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64),
                                  torch.zeros((0, 4)), g)
    assert empty == {}


def test_propose_and_detect_work_in_original_pixels(lite_model: FasterRCNN) -> None:
    model = lite_model
    model.train()
    torch.manual_seed(3)
    image = torch.rand(3, 96, 128) * 255  # an original 48 x 64 image resized by 2
    scale = 2.0
    boxes, scores = model.propose(image, scale)
    assert model.training, "propose must restore the training mode"
    assert boxes.shape[0] == scores.shape[0] > 0
    # Clipped to the 128 x 96 input, then divided by the scale: x <= 127 / 2, y <= 95 / 2.
    assert float(boxes[:, 2].max()) == 63.5 and float(boxes[:, 3].max()) <= 47.5
    assert float(boxes.min()) >= 0.0
    assert torch.all(scores[:-1] >= scores[1:])  # rank order by score

    # Feeding the RPN's own proposals back (original pixels) gives the same detections.
    model.roi_head.cls_score.bias.data[1] = 5.0  # make class 1 fire so there is something to compare
    own = model.detect(image, scale)
    fed = model.detect(image, scale, proposals=boxes)
    model.roi_head.cls_score.bias.data.zero_()
    assert len(own) > 0
    assert torch.allclose(own.boxes, fed.boxes, atol=1e-3)
    assert torch.allclose(own.scores, fed.scores, atol=1e-5)
    assert torch.equal(own.labels, fed.labels)
    assert float(own.boxes[:, 2].max()) <= 63.5
    assert len(model.detect(image, scale, proposals=torch.zeros((0, 4)))) == 0
    model.eval()


def test_config_without_target_normalisation_uses_identity_stats() -> None:
    cfg = small_config()
    cfg.roi.normalize_targets = False
    model = FasterRCNN(cfg, {"fc_width": 16})
    assert torch.equal(model.roi_head.target_means, torch.zeros(4))
    assert torch.equal(model.roi_head.target_stds, torch.ones(4))
