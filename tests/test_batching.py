"""Mini-batches (model/batching.py, FasterRCNN.*_batch, RegionProposalNetwork.forward_batch).

A batch of one image must give exactly the per-image path's numbers; in a batch of two
differently sized images each image gets its own targets and nothing of the padding is ever
labelled positive or proposed.
"""
from __future__ import annotations

import pytest
import torch

from model.anchors import anchors_inside
from model.batching import chunks, pad_images
from model.config import ProposalConfig
from model.faster_rcnn import FasterRCNN
from model.roi.sampling import sample_rois
from model.rpn.targets import label_anchors
from tiny_lite0 import tiny_lite0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> FasterRCNN:
    return tiny_lite0()


def _image(height: int, width: int, seed: int) -> torch.Tensor:
    return torch.rand((3, height, width), generator=torch.Generator().manual_seed(seed)) * 255


BIG = (_image(112, 160, 1), torch.tensor([[10.0, 12.0, 60.0, 70.0], [90.0, 30.0, 150.0, 100.0]]), torch.tensor([1, 2]))
SMALL = (_image(80, 96, 2), torch.tensor([[20.0, 10.0, 70.0, 60.0]]), torch.tensor([2]))


def _equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------- batch of one
def test_batch_of_one_equals_the_per_image_path(model: FasterRCNN):
    image, gt, labels = BIG
    model.train()
    features = model.features(image)
    single = model.rpn(features, 112, 160, 1.0, model.cfg.train_proposals, gt_boxes=gt,
                       generator=torch.Generator().manual_seed(5))
    batch_features, sizes = model.features_batch([image])
    assert torch.equal(batch_features, features) and sizes == [(112, 160)]
    (batched,) = model.rpn_outputs_batch(batch_features, sizes, [1.0], model.cfg.train_proposals, [gt],
                                  torch.Generator().manual_seed(5))
    assert torch.equal(batched.labels, single.labels)  # anchor labels
    assert torch.equal(batched.proposals, single.proposals) and torch.equal(batched.scores, single.scores)
    assert _equal(batched.losses.values(), single.losses.values())

    # Losses of the training paths: RPN, detector (sampled RoIs and their terms), joint.
    rpn_single = model.rpn_losses(image, gt, torch.Generator().manual_seed(1))
    rpn_batch = model.rpn_losses_batch([image], [gt], torch.Generator().manual_seed(1))
    assert rpn_single.keys() == rpn_batch.keys() and _equal(rpn_single.values(), rpn_batch.values())

    proposals = single.proposals
    torch.manual_seed(3)  # the detector's dropout
    terms_single = model.detector_terms(image, gt, labels, proposals, torch.Generator().manual_seed(2))
    torch.manual_seed(3)
    terms_batch = model.detector_terms_batch([image], [gt], [labels], [proposals], torch.Generator().manual_seed(2))
    assert _equal(terms_single, terms_batch)
    sample = sample_rois(proposals, gt, labels, model.cfg.roi, torch.Generator().manual_seed(2))
    assert torch.equal(terms_batch[2], sample.labels)  # the same RoIs sampled, same order

    torch.manual_seed(4)
    joint_rpn, joint_terms = model.joint_losses(image, gt, labels, torch.Generator().manual_seed(6), scale=1.0)
    torch.manual_seed(4)
    batch_rpn, batch_terms = model.joint_losses_batch([image], [gt], [labels], [1.0], torch.Generator().manual_seed(6))
    assert _equal(joint_rpn.values(), batch_rpn.values()) and _equal(joint_terms, batch_terms)


def test_batch_of_one_inference_equals_the_per_image_path(model: FasterRCNN):
    image = BIG[0]
    boxes, scores = model.propose(image, 0.5)
    ((batch_boxes, batch_scores),) = model.propose_batch([image], [0.5])
    assert torch.equal(boxes, batch_boxes) and torch.equal(scores, batch_scores)
    single = model.detect(image, 0.5)
    (batched,) = model.detect_batch([image], [0.5])
    assert _equal((single.boxes, single.scores, single.labels), (batched.boxes, batched.scores, batched.labels))


# ------------------------------------------------------------- two differently sized images
def test_two_sizes_each_image_gets_its_own_targets(model: FasterRCNN):
    (big, big_gt, _), (small, small_gt, _) = BIG, SMALL
    model.train()
    features, sizes = model.features_batch([big, small])
    assert features.shape[0] == 2 and sizes == [(112, 160), (80, 96)]
    cfg = ProposalConfig(pre_nms_top_n=-1, post_nms_top_n=-1, use_nms=False, min_size=0.0)
    outputs = model.rpn_outputs_batch(features, sizes, [1.0, 1.0], cfg, [big_gt, small_gt], torch.Generator().manual_seed(9))

    # Each image's anchors are those of its own map (what the trunk gives it alone) ...
    generator = torch.Generator().manual_seed(9)
    for out, image, gt in zip(outputs, (big, small), (big_gt, small_gt)):
        own = model.features(image)
        alone = model.rpn.anchors_for(own.shape[2], own.shape[3])
        assert torch.equal(out.anchors, alone)
        # ... and its labels are label_anchors' for its own gt boxes and size, in batch order.
        expected, _ = label_anchors(alone, gt, image.shape[1], image.shape[2], model.cfg.rpn, generator)
        assert torch.equal(out.labels, expected)
        assert int((out.labels == 1).sum()) > 0

    small_out = outputs[1]
    positive = small_out.anchors[small_out.labels == 1]
    assert anchors_inside(positive, 80, 96).all()  # no anchor reaching into the padding is positive
    labelled = small_out.anchors[small_out.labels >= 0]
    assert (labelled[:, 2] < 96).all() and (labelled[:, 3] < 80).all()
    # No proposal lies in the padding (beyond 96 x 80): every box is clipped to the image.
    boxes = small_out.proposals
    assert boxes.shape[0] > 0
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 95).all() and (boxes[:, 3] <= 79).all()


def test_two_sizes_rois_and_detections_per_image(model: FasterRCNN):
    (big, big_gt, big_labels), (small, small_gt, small_labels) = BIG, SMALL
    proposals = [torch.tensor([[5.0, 5.0, 50.0, 50.0], [100.0, 40.0, 140.0, 90.0]]), torch.tensor([[10.0, 10.0, 60.0, 50.0]])]
    model.train()
    torch.manual_seed(0)
    terms = model.detector_terms_batch([big, small], [big_gt, small_gt], [big_labels, small_labels], proposals,
                                       torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)
    samples = [sample_rois(p, g, lab, model.cfg.roi, generator)
               for p, g, lab in zip(proposals, (big_gt, small_gt), (big_labels, small_labels))]
    assert torch.equal(terms[2], torch.cat([s.labels for s in samples]))
    assert set(samples[1].labels.tolist()) <= {0, 2}  # the small image's RoIs know only its own gt
    assert terms[0].shape[0] == sum(s.rois.shape[0] for s in samples)

    detections = model.detect_batch([big, small], [1.0, 0.5])
    assert len(detections) == 2
    # Original pixels: the small input at scale 0.5 is a 192 x 160 original.
    assert (detections[1].boxes[:, 2] <= 191).all() and (detections[1].boxes[:, 3] <= 159).all()


# ------------------------------------------------------------------------------ helpers
def test_pad_images_pads_after_normalising():
    images = [torch.full((3, 2, 3), 10.0), torch.full((3, 4, 1), 20.0)]
    batch, sizes = pad_images(images, lambda x: x - 5.0)
    assert batch.shape == (2, 3, 4, 3) and sizes == [(2, 3), (4, 1)]
    assert (batch[0, :, :2, :3] == 5.0).all() and (batch[0, :, 2:, :] == 0).all() and (batch[0, :, :, 3:] == 0).all()
    assert (batch[1, :, :, :1] == 15.0).all() and (batch[1, :, :, 1:] == 0).all()
    with pytest.raises(ValueError, match="at least one image"):
        pad_images([], lambda x: x)


def test_chunks():
    assert chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    with pytest.raises(ValueError, match="batch size"):
        chunks([1], 0)


@pytest.mark.parametrize("name", ["zf", "efficientnet_lite0"])
def test_feature_size_is_what_the_trunk_gives_one_image(name: str):
    from model.backbones import build_backbone

    backbone = build_backbone(name, pretrained=False)
    for height, width in ((96, 128), (97, 131), (50, 83)):  # ZF's pools round up, Lite's "SAME" convs too
        real = backbone.shared(torch.zeros(1, 3, height, width))
        assert backbone.feature_size(height, width) == tuple(real.shape[2:])
    assert "_feature_sizes" not in dict(backbone.named_modules()) and len(backbone.state_dict()) > 0
