"""Table-5 timing: phases billed inside detect(), the same detections with and without a timer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.config import AnchorConfig, DetectorConfig, ProposalConfig
from model.data.transforms import prepare_image
from model.faster_rcnn import FasterRCNN
from model.selective_search import selective_search
from model.timing import PHASES, PhaseTimer, device_name, time_systems


@pytest.fixture(scope="module")
def model() -> FasterRCNN:
    torch.manual_seed(0)
    cfg = DetectorConfig(class_names=("a", "b"), backbone="zf", pretrained=False, min_size=96, max_size=128,
                         anchors=AnchorConfig(scales=(2.0, 4.0, 8.0)))
    return FasterRCNN(cfg, {"fc_width": 32})


def _images(count: int):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        original = rng.integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
        original[20:60, 30:90] = (200, 30, 30)
        image, scale = prepare_image(original, 96, 128)
        out.append((image, scale, original))
    return out


def test_timer_bills_every_phase_and_changes_no_result(model):
    image, scale, _ = _images(1)[0]
    timer = PhaseTimer("cpu")
    timed = model.detect(image, scale, timer=timer)
    plain = model.detect(image, scale)
    assert set(timer.seconds) == set(PHASES) and all(v >= 0 for v in timer.seconds.values())
    torch.testing.assert_close(timed.boxes, plain.boxes)
    torch.testing.assert_close(timed.scores, plain.scores)


def test_detect_takes_a_proposal_config(model):
    image, scale, _ = _images(1)[0]
    few = ProposalConfig(pre_nms_top_n=50, post_nms_top_n=5)
    boxes, _ = model.propose(image, scale, few)
    assert boxes.shape[0] <= 5
    # detect with the same settings sees the same RoIs as propose.
    assert model.detect(image, scale, proposal_cfg=few).boxes.shape[1] == 4


def test_time_systems_counts_images_after_warmup(model):
    ss, rpn = time_systems(model, _images(4), lambda rgb: selective_search(rgb, mode="single"),
                           ProposalConfig(pre_nms_top_n=100, post_nms_top_n=30), warmup=2)
    assert ss.system == "ss" and rpn.system == "rpn" and ss.images == rpn.images == 2
    for timing in (ss, rpn):
        assert timing.total_ms == pytest.approx(timing.conv_ms + timing.proposal_ms + timing.region_ms)
        assert timing.total_ms > 0 and timing.fps == pytest.approx(1000.0 / timing.total_ms)
        assert set(timing.to_dict()) >= {"conv_ms", "proposal_ms", "region_ms", "total_ms", "fps", "images"}
    with pytest.raises(ValueError, match="warmup"):
        time_systems(model, _images(2), lambda rgb: selective_search(rgb), ProposalConfig(), warmup=2)


def test_device_name_names_the_cpu():
    assert "cpu" in device_name("cpu")
