"""The CPU speed levers: channels-last activations (model.memory_format) and opt-in bfloat16
(model.precision). Float32 stays float32 and the layout changes no result beyond rounding;
bfloat16 runs the convolutions in bfloat16 and keeps every box in float32."""
from __future__ import annotations

import pytest
import torch

from model import memory_format
from model.faster_rcnn import FasterRCNN
from model.precision import ENV, as_float32, autocast, check_precision, default_precision
from tiny_lite0 import tiny_lite0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> FasterRCNN:
    """Lite0 with its convolutional top (late MBConv blocks), the layout-sensitive one."""
    net = tiny_lite0(pool_size=7)
    net.roi_head.cls_score.bias.data[1] = 4.0  # detections to compare on an untrained net
    return net


IMAGE = torch.rand((3, 112, 160), generator=torch.Generator().manual_seed(1)) * 255
GT = torch.tensor([[10.0, 12.0, 60.0, 70.0], [90.0, 30.0, 150.0, 100.0]])
LABELS = torch.tensor([1, 2])


@pytest.fixture
def nchw():
    """Run with NCHW activations, restoring the default after."""
    memory_format.CPU_CHANNELS_LAST = False
    yield
    memory_format.CPU_CHANNELS_LAST = True


def test_cpu_convolutions_run_channels_last(model: FasterRCNN):
    assert memory_format.CPU_CHANNELS_LAST
    features = model.features(IMAGE)
    assert features.is_contiguous(memory_format=torch.channels_last) and features.dtype == torch.float32
    assert model.roi_head.conv_top  # Lite's blocks: pooled RoIs go channels-last too
    # A fully connected top flattens in NCHW order: no conversion for it.
    assert not memory_format.has_convolutions(torch.nn.Sequential(torch.nn.Flatten(1), torch.nn.Linear(4, 2)))
    # Weights keep their layout: state dicts and checkpoints are unchanged.
    assert all(p.is_contiguous() for p in model.parameters())


def test_layout_changes_nothing_beyond_rounding(model: FasterRCNN, nchw):
    memory_format.CPU_CHANNELS_LAST = True
    fast = model.features(IMAGE)
    fast_det = model.detect(IMAGE, 0.5)
    memory_format.CPU_CHANNELS_LAST = False
    plain = model.features(IMAGE)
    plain_det = model.detect(IMAGE, 0.5)
    assert plain.is_contiguous() and not fast.is_contiguous()
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    assert fast_det.scores.numel() > 0 and torch.equal(fast_det.labels, plain_det.labels)
    torch.testing.assert_close(fast_det.boxes, plain_det.boxes, rtol=1e-3, atol=1e-2)
    torch.testing.assert_close(fast_det.scores, plain_det.scores, rtol=1e-3, atol=1e-4)


def test_layout_reruns_are_bit_identical(model: FasterRCNN):
    first, second = model.detect(IMAGE, 0.5), model.detect(IMAGE, 0.5)
    assert torch.equal(first.boxes, second.boxes) and torch.equal(first.scores, second.scores)


def test_precision_names_are_checked(monkeypatch: pytest.MonkeyPatch):
    assert check_precision("bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="precision must be one of"):
        check_precision("fp16")
    monkeypatch.delenv(ENV, raising=False)
    assert default_precision() == "float32"
    monkeypatch.setenv(ENV, "bfloat16")
    assert default_precision() == "bfloat16"
    monkeypatch.setenv(ENV, "half")
    with pytest.raises(ValueError, match=ENV):
        default_precision()


def test_float32_is_no_autocast_and_no_copy():
    x = torch.ones(3)
    assert as_float32(x) is x
    with autocast("cpu", "float32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "bfloat16"):
        assert torch.is_autocast_enabled("cpu")


def test_bfloat16_keeps_boxes_in_float32(model: FasterRCNN):
    reference = model.detect(IMAGE, 0.5)
    with autocast("cpu", "bfloat16"):
        features = model.features(IMAGE)
        logits, deltas = model.rpn.head(features)
        detections = model.detect(IMAGE, 0.5)
        proposals, scores = model.propose(IMAGE, 0.5)
    assert features.dtype == logits.dtype == deltas.dtype == torch.float32
    assert detections.boxes.dtype == detections.scores.dtype == proposals.dtype == scores.dtype == torch.float32
    # Same weights, 8 significant bits in the convolutions: the same objects, boxes within a few pixels.
    assert detections.scores.numel() > 0 and reference.scores.numel() > 0
    best = torch.argmax(reference.scores)
    closest = torch.cdist(reference.boxes[best][None], detections.boxes).min()
    assert closest < 8.0, f"the float32 top detection has no bfloat16 counterpart within 8 px ({closest:.1f})"


def test_bfloat16_training_step_gives_float32_losses_and_gradients(model: FasterRCNN):
    model.train()
    try:
        with autocast("cpu", "bfloat16"):
            losses, terms = model.joint_losses_batch([IMAGE], [GT], [LABELS], [1.0], torch.Generator().manual_seed(0))
        assert terms is not None and all(t.dtype == torch.float32 for t in terms[:2])
        total = sum(losses.values()) + terms[0].sum() * 0.0
        assert total.dtype == torch.float32 and torch.isfinite(total)
        model.zero_grad(set_to_none=True)
        total.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@pytest.mark.parametrize("kernel, stride, groups", [(1, 1, 1), (3, 1, 8), (5, 2, 8), (3, 2, 1)])
def test_folded_batch_norm_is_bn_after_conv(kernel: int, stride: int, groups: int):
    """``conv_bn`` folds the fixed-statistics BN into the convolution: the same outputs up to
    rounding, and the same gradients for the conv weight and the BN's affine parameters."""
    from model.backbones.base import FixedStatsBatchNorm2d
    from model.backbones.efficientnet_lite import SameConv2d, conv_bn

    g = torch.Generator().manual_seed(kernel * 10 + stride)
    conv = SameConv2d(8, 16 if groups == 1 else 8, kernel, stride=stride, groups=groups)
    bn = FixedStatsBatchNorm2d(conv.out_channels, eps=1e-3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(conv.out_channels, generator=g))
        bn.running_var.copy_(torch.rand(conv.out_channels, generator=g) + 0.5)
        bn.weight.copy_(torch.randn(conv.out_channels, generator=g))
        bn.bias.copy_(torch.randn(conv.out_channels, generator=g))
    x = torch.randn(2, 8, 11, 10, generator=g)
    grads = []
    for fn in (lambda: bn(conv(x)), lambda: conv_bn(x, conv, bn)):
        conv.zero_grad(set_to_none=True)
        bn.zero_grad(set_to_none=True)
        out = fn()
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        grads.append((out.detach(), conv.weight.grad, bn.weight.grad, bn.bias.grad))
    for plain, folded in zip(*grads, strict=True):
        torch.testing.assert_close(folded, plain, rtol=1e-4, atol=1e-4)
