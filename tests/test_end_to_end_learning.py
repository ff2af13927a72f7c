"""One end-to-end check that the whole detector learns: synthetic data -> RPN step -> cached
proposals -> detector step -> detections -> the project's VOC07 mAP on held-out images.

Steps 1 and 4 of the paper in miniature: the RPN trains with the shared trunk, its
proposals are cached, then the detector trains on them with the trunk frozen (so the RPN
stays valid and the final model is shared). Small enough for the CPU: 60 training images
of 256x192 with 1-2 large shapes (64-120 px) of 3 classes, the ImageNet EfficientNet-Lite0
(shipped in a PyPI package), 192-px inputs, anchors 32-128 px, the paper's fc6/fc7 detector
layers (1024 wide) over a 7x7 RoI pool, 128 RoIs per image, one thread; 100 RPN and 300
detector iterations.

Measured on the 2-core dev box, two runs side by side: VOC07 mAP 0.849 / 0.807 / 0.926 on the
20 held-out images of the datasets with seeds 3 / 5 / 7, about 80 s each when paired and
about 50 s alone. Before (pretrained late MBConv blocks as the detector layers, 16 RoIs, lr
0.002, 150 iterations: the budget those blocks allow) the same check reached 0.65: those
blocks cost ~10 ms per RoI on a CPU core, so they could see too few RoIs per step.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.config import AnchorConfig, DetectorConfig, ProposalConfig
from model.data.synthetic import SyntheticSpec, generate_synthetic_voc
from model.data.voc import load_voc
from model.evaluation.voc_ap import evaluate_voc
from model.faster_rcnn import FasterRCNN
from model.inference import detect_dataset, propose_dataset
from model.training import TrainSchedule, train_detector, train_rpn

# Generator v1 (flat colours chosen to contrast with the background): 0.81-0.93 over three
# datasets. Generator v2 (scene backgrounds, shading, outlines, colours drawn independently of
# the background, as in photographs) measured 0.663 on this spec even with its parts and
# camouflage off. A broken loss, sampler, target normalisation or box decoding gives < 0.2.
MIN_MAP = 0.6


@pytest.mark.slow
def test_detector_learns_synthetic_shapes(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: oversubscription costs more than it gives
    try:
        _run(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _run(tmp_path: Path) -> None:
    spec = SyntheticSpec(
        num_images=80, image_size=(256, 192), seed=3, classes=("circle", "cross", "star"),
        objects_per_image=(1, 2), object_size=(64.0, 120.0), max_aspect_ratio=2.0,
        clutter_per_image=(0, 1), tiny_fraction=0.0, truncation_fraction=0.0, test_fraction=0.25,
        # A learning check, not the VOC-like default: no camouflage, few background structures.
        camouflage_fraction=0.0, part_camouflage_fraction=0.0, max_part_cuts=0, structures_per_image=(0, 0),
    )
    root = generate_synthetic_voc(tmp_path / "voc", spec)
    train = load_voc(root, "trainval")
    test = load_voc(root, "test", classes=train.classes)
    assert len(train) >= 50 and len(test) >= 15

    torch.manual_seed(0)
    cfg = DetectorConfig(
        class_names=train.classes,
        backbone="efficientnet_lite0",
        pretrained=True,
        min_size=192,
        max_size=400,
        anchors=AnchorConfig(scales=(2.0, 4.0, 8.0)),
        cache_proposals=ProposalConfig(pre_nms_top_n=-1, post_nms_top_n=300),
        test_proposals=ProposalConfig(pre_nms_top_n=1000, post_nms_top_n=100),
    )
    cfg.roi.batch_size_per_image = 128
    model = FasterRCNN(cfg, {"pool_size": 7, "top": "fc", "fc_width": 1024})

    rpn_history = train_rpn(
        model, train, TrainSchedule(iterations=100, base_lr=0.01, seed=0), tmp_path / "rpn.pt", progress=False
    )
    assert rpn_history[-1]["total"] < 0.5 * rpn_history[0]["total"]

    proposals = propose_dataset(model, train, cfg.cache_proposals, progress=False)
    det_history = train_detector(
        model, train, proposals,
        TrainSchedule(iterations=300, base_lr=0.01, lr_steps=(225,), seed=0),
        tmp_path / "det.pt", trainable_groups=("detector",), progress=False,
    )
    first = sum(h["total"] for h in det_history[:10]) / 10
    last = sum(h["total"] for h in det_history[-10:]) / 10
    assert last < 0.8 * first, (first, last)

    result = evaluate_voc(test, detect_dataset(model, test, progress=False), metric="voc07")
    print(f"end-to-end VOC07 mAP {result.mAP:.3f}")
    assert result.mAP >= MIN_MAP, result
