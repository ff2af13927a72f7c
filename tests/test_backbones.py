"""Backbones: stride-16 feature maps, channel counts, input normalisation, weights loading."""
from __future__ import annotations

import math
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.backbones import (
    BACKBONE_NAMES,
    FixedStatsBatchNorm2d,
    WeightsMismatchError,
    WeightsUnavailableError,
    build_backbone,
)
from model.backbones.base import load_state_dict_file, load_strict
from model.backbones.efficientnet_lite import (
    EfficientNetLite,
    SameConv2d,
    VARIANTS,
    pretrained_weights_path,
    round_channels,
)
from model.backbones.vgg16 import weights_cache_path
from model.backbones.zf import WithinChannelLRN

CHANNELS = {"zf": (256, 4096, 6, 256), "vgg16": (512, 4096, 7, 512),
            "efficientnet_lite0": (112, 1280, 14, 256), "efficientnet_lite2": (120, 1280, 14, 256)}


def _caffe_pool(size: int) -> int:
    """Caffe max pool 3x3/2 pad 1 output size (rounds up)."""
    return math.ceil((size + 2 - 3) / 2) + 1


def _expected_size(name: str, size: int) -> int:
    if name == "zf":  # conv1 7/2 p3 -> pool -> conv2 5/2 p2 -> pool, worked as Caffe does
        conv1 = (size + 6 - 7) // 2 + 1
        conv2 = (_caffe_pool(conv1) + 4 - 5) // 2 + 1
        return _caffe_pool(conv2)
    if name == "vgg16":  # four 2x2/2 max pools, rounding down
        return size // 16
    return math.ceil(size / 16)  # TF "SAME": every stride-2 layer rounds up


@pytest.fixture(scope="module")
def backbones():
    torch.manual_seed(0)
    return {name: build_backbone(name, pretrained=False) for name in BACKBONE_NAMES}


def test_zf_sizes_worked_by_hand():
    # 64: conv1 32, pool1 17, conv2 9, pool2 5; 600: 300, 151, 76, 39 (as py-faster-rcnn's ZF)
    assert _expected_size("zf", 64) == 5
    assert _expected_size("zf", 600) == 39


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_feature_stride_and_channels(backbones, name):
    backbone = backbones[name]
    channels, top_channels, pool_size, rpn_mid = CHANNELS[name]
    assert (backbone.feature_channels, backbone.top_channels, backbone.pool_size) == (channels, top_channels, pool_size)
    assert backbone.rpn_mid_channels == rpn_mid and backbone.stride == 16
    images = torch.rand(1, 3, 64, 80) * 255
    with torch.no_grad():
        small = backbone(images)
        # 16 more input pixels per side -> exactly one more feature cell: stride 16
        larger = backbone(torch.rand(1, 3, 80, 96) * 255)
    assert small.shape == (1, channels, _expected_size(name, 64), _expected_size(name, 80))
    assert larger.shape[2:] == (small.shape[2] + 1, small.shape[3] + 1)
    assert torch.isfinite(small).all() and small.abs().sum() > 0


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_top_maps_pooled_rois_to_vectors(backbones, name):
    backbone = backbones[name]
    pooled = torch.randn(3, backbone.feature_channels, backbone.pool_size, backbone.pool_size).relu()
    with torch.no_grad():
        out = backbone.top.eval()(pooled)
    assert out.shape == (3, backbone.top_channels)


def test_lite_top_handles_pool_size_7_option():
    backbone = build_backbone("efficientnet_lite0", pretrained=False, pool_size=7)
    assert backbone.pool_size == 7
    with torch.no_grad():
        assert backbone.top(torch.rand(2, 112, 7, 7)).shape == (2, 1280)


def test_zf_fc_width_option():
    backbone = build_backbone("zf", pretrained=False, fc_width=64)
    assert backbone.top_channels == 64
    assert backbone.top.fc6.in_features == 256 * 6 * 6 and backbone.top.fc7.out_features == 64


def test_normalisation_per_backbone(backbones):
    pixel = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)  # R, G, B
    # ZF: Caffe style, BGR minus the BGR mean pixel
    zf = backbones["zf"].normalize(pixel).flatten()
    assert torch.allclose(zf, torch.tensor([30 - 102.9801, 20 - 115.9465, 10 - 122.7717]))
    # VGG-16: torchvision's ImageNet weights expect RGB in 0..1 with mean/std
    vgg = backbones["vgg16"].normalize(pixel).flatten()
    expected = (torch.tensor([10.0, 20.0, 30.0]) / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    assert torch.allclose(vgg, expected, atol=1e-5)
    # EfficientNet-Lite: TF style (x - 127) / 128
    lite = backbones["efficientnet_lite0"].normalize(pixel).flatten()
    assert torch.allclose(lite, torch.tensor([-117.0, -107.0, -97.0]) / 128)


def test_vgg16_never_train_is_conv1_and_conv2(backbones):
    backbone = backbones["vgg16"]
    names = sorted(n for n, _ in backbone.never_train_parameters())
    assert names == sorted(f"features.{i}.{p}" for i in (0, 2, 5, 7) for p in ("weight", "bias"))
    # conv3_1 (features.10) and later train
    assert not any(n.startswith("features.1") for n in names)
    assert backbones["zf"].never_train == () and backbones["efficientnet_lite0"].never_train == ()


def test_vgg16_shared_ends_at_conv5_3_relu(backbones):
    features = backbones["vgg16"].shared.features
    assert len(features) == 30 and isinstance(features[28], torch.nn.Conv2d) and isinstance(features[29], torch.nn.ReLU)


def test_unknown_name_and_option_are_clear():
    with pytest.raises(ValueError, match="valid names: zf, vgg16, efficientnet_lite0, efficientnet_lite2"):
        build_backbone("resnet50")
    with pytest.raises(ValueError, match="unknown option"):
        build_backbone("vgg16", pretrained=False, fc_width=16)


def test_zf_has_no_pretrained_weights():
    with pytest.raises(WeightsUnavailableError, match="pretrained=False"):
        build_backbone("zf", pretrained=True)


def _network_reachable(host: str = "download.pytorch.org") -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def test_vgg16_pretrained_offline_error_is_clear_and_fast(tmp_path, monkeypatch):
    if _network_reachable():
        pytest.skip("download.pytorch.org is reachable; the offline error cannot be provoked without a 528 MB download")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    socket.setdefaulttimeout(5)  # a stalled connection must fail the test, not hang it
    try:
        start = time.monotonic()
        with pytest.raises(WeightsUnavailableError) as info:
            build_backbone("vgg16", pretrained=True)
        elapsed = time.monotonic() - start
    finally:
        socket.setdefaulttimeout(None)
    message = str(info.value)
    assert "vgg16-397923af.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "network could not be reached" in message and "pretrained: false" in message
    assert elapsed < 20


def test_vgg16_corrupt_cached_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = weights_cache_path()
    assert cached == tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="vgg16-397923af.pth.*cannot be read"):
        build_backbone("vgg16", pretrained=True)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_lite_pretrained_loads_package_weights_strictly(name):
    path = pretrained_weights_path(name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    backbone = build_backbone(name, pretrained=True)
    shared, top = backbone.shared.state_dict(), backbone.top.state_dict()
    # The split keeps the file's key names; together they are the file minus the classifier.
    assert set(shared) | set(top) == set(state) - {"_fc.weight", "_fc.bias"}
    assert not set(shared) & set(top)
    last_shared = 10 if name == "efficientnet_lite0" else 14
    assert f"_blocks.{last_shared}._project_conv.weight" in shared
    assert f"_blocks.{last_shared + 1}._expand_conv.weight" in top
    for key in ("_conv_stem.weight", "_bn0.running_var", f"_blocks.{last_shared}._bn2.running_mean"):
        assert torch.equal(shared[key], state[key])
    for key in ("_conv_head.weight", "_bn1.running_mean"):
        assert torch.equal(top[key], state[key])


def test_lite_strict_loading_reports_missing_and_unexpected_keys(tmp_path):
    state = torch.load(pretrained_weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    del state["_blocks.3._bn1.running_var"]
    state["_blocks.3._se_reduce.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    net = EfficientNetLite(1.0, 1.0)
    with pytest.raises(WeightsMismatchError) as info:
        load_strict(net, load_state_dict_file(bad, "efficientnet_lite0"), bad, "efficientnet_lite0")
    message = str(info.value)
    assert "bad.pth" in message and "_blocks.3._bn1.running_var" in message and "_blocks.3._se_reduce.weight" in message
    # Lite0's file in the Lite2 architecture: wrong shapes and block counts
    lite0 = pretrained_weights_path("efficientnet_lite0")
    with pytest.raises(WeightsMismatchError, match="does not match the architecture.*shape mismatches"):
        load_strict(EfficientNetLite(1.1, 1.2), load_state_dict_file(lite0, "lite0"), lite0, "efficientnet_lite2")


def test_lite_widths_follow_tf_rounding():
    # Lite2 = width 1.1: 16 -> 16, 24 -> 24, 40 -> 48, 80 -> 88, 112 -> 120, 192 -> 208, 320 -> 352
    assert [round_channels(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == [16, 24, 48, 88, 120, 208, 352]
    assert EfficientNetLite(1.1, 1.2).shared_block_count == 15
    assert EfficientNetLite(1.0, 1.0).shared_block_count == 11


def test_pretrained_lite_classifies_a_photo():
    """End-to-end check of architecture, TF padding and (x - 127) / 128 on a real photo.

    Grace Hopper in uniform (matplotlib's sample image): ImageNet 652 "military uniform"
    must be among the top 3 of both variants.
    """
    photo = Path(__import__("matplotlib").get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not photo.is_file():
        pytest.skip(f"sample photo {photo} not installed")
    image = Image.open(photo).convert("RGB")
    scale = 256 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float()[None]
    for name, (width, depth) in ((n, VARIANTS[n][:2]) for n in VARIANTS):
        net = EfficientNetLite(width, depth).eval()
        path = pretrained_weights_path(name)
        load_strict(net, load_state_dict_file(path, name), path, name)
        with torch.no_grad():
            top3 = net((pixels - 127) / 128).topk(3).indices[0].tolist()
        assert 652 in top3, (name, top3)


def test_same_conv_pads_like_tensorflow():
    conv = SameConv2d(1, 1, 3, stride=2)
    torch.nn.init.ones_(conv.weight)
    out = conv(torch.ones(1, 1, 4, 4))
    # ceil(4 / 2) = 2; TF pads 0 before and 1 after: the first window sits fully inside
    assert out.shape == (1, 1, 2, 2)
    assert out[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]
    assert SameConv2d(1, 1, 5, stride=2)(torch.ones(1, 1, 7, 9)).shape == (1, 1, 4, 5)


def test_fixed_stats_batchnorm_ignores_batch_statistics():
    bn = FixedStatsBatchNorm2d(2, eps=0.0)
    bn.running_mean.copy_(torch.tensor([1.0, -1.0]))
    bn.running_var.copy_(torch.tensor([4.0, 1.0]))
    bn.train()
    x = torch.randn(2, 2, 3, 3) * 10
    y = bn(x)
    assert torch.allclose(y[:, 0], (x[:, 0] - 1.0) / 2.0) and torch.allclose(y[:, 1], x[:, 1] + 1.0)
    assert bn.running_mean.tolist() == [1.0, -1.0] and bn.running_var.tolist() == [4.0, 1.0]
    assert int(bn.num_batches_tracked) == 0
    assert set(bn.state_dict()) == set(torch.nn.BatchNorm2d(2).state_dict())


def test_lite_bn_is_fixed_in_train_mode(backbones):
    backbone = backbones["efficientnet_lite0"]
    assert all(isinstance(m, FixedStatsBatchNorm2d) for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    images = torch.rand(1, 3, 48, 48) * 255
    with torch.no_grad():
        backbone.eval()
        expected = backbone(images)
        backbone.train()
        got = backbone(images)
    assert torch.allclose(expected, got)


def test_within_channel_lrn_by_hand():
    lrn = WithinChannelLRN(local_size=3, alpha=0.9, beta=0.75)
    x = torch.full((1, 1, 3, 3), 2.0)
    y = lrn(x)[0, 0]
    # centre: mean of 9 squares = 4; corner: 4 of the 9 window cells inside -> 16 / 9
    assert math.isclose(y[1, 1].item(), 2.0 * (1 + 0.9 * 4.0) ** -0.75, rel_tol=1e-6)
    assert math.isclose(y[0, 0].item(), 2.0 * (1 + 0.9 * 16.0 / 9.0) ** -0.75, rel_tol=1e-6)


def test_lite_fc_top_option_gives_the_papers_fc6_fc7():
    backbone = build_backbone("efficientnet_lite0", pretrained=False, pool_size=7, top="fc", fc_width=64)
    assert backbone.top_channels == 64
    pooled = torch.randn(5, backbone.feature_channels, 7, 7)
    assert backbone.top(pooled).shape == (5, 64)
    names = [name for name, _ in backbone.top.named_children()]
    assert names == ["flatten", "fc6", "relu6", "drop6", "fc7", "relu7", "drop7"]
    with pytest.raises(ValueError, match="top must be"):
        build_backbone("efficientnet_lite0", pretrained=False, top="resnet")
