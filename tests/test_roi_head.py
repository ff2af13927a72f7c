"""Detector head: shapes, RoIPool geometry (spatial scale), init, target normalisation."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from model.backbones import build_backbone
from model.roi import DetectorHead


def _coordinate_features(height: int = 8, width: int = 8) -> torch.Tensor:
    """``[1, 2, H, W]``: channel 0 holds each cell's x index, channel 1 its y index."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    return torch.stack([xs, ys])[None]


def test_forward_shapes():
    torch.manual_seed(0)
    top = nn.Sequential(nn.Flatten(1), nn.Linear(8 * 3 * 3, 16), nn.ReLU())
    head = DetectorHead(top, feature_channels=8, top_channels=16, pool_size=3, num_classes=3)
    rois = torch.tensor([[0.0, 0.0, 63.0, 63.0], [16.0, 16.0, 100.0, 90.0], [5.0, 5.0, 5.0, 5.0]])
    logits, deltas = head(torch.randn(1, 8, 10, 10), rois)
    assert logits.shape == (3, 4) and deltas.shape == (3, 16)
    empty_logits, empty_deltas = head(torch.randn(1, 8, 10, 10), torch.zeros((0, 4)))
    assert empty_logits.shape == (0, 4) and empty_deltas.shape == (0, 16)


def test_rois_pool_the_right_feature_cells():
    head = DetectorHead(nn.Flatten(1), feature_channels=2, top_channels=8, pool_size=2, num_classes=1)
    # x: 32..79 px -> cells round(2.0)=2 .. round(4.94)=5, two bins {2,3} {4,5} -> max x 3, 5
    # y: 48..79 px -> cells 3 .. 5 (3 cells, bin 1.5): bins {3,4} and {4,5} -> max y 4, 5
    pooled = head.pool(_coordinate_features(), torch.tensor([[32.0, 48.0, 79.0, 79.0]]))
    assert pooled.shape == (1, 2, 2, 2)
    assert pooled[0, 0].tolist() == [[3.0, 5.0], [3.0, 5.0]]
    assert pooled[0, 1].tolist() == [[4.0, 4.0], [5.0, 5.0]]
    # the same pixels at stride 8 land on cells twice as far out
    half = DetectorHead(nn.Flatten(1), 2, 8, 2, 1, spatial_scale=1 / 8)
    assert half.pool(_coordinate_features(16, 16), torch.tensor([[32.0, 48.0, 79.0, 79.0]]))[0, 0].max() == 10.0


def test_init_and_layer_names():
    head = DetectorHead(nn.Identity(), feature_channels=1, top_channels=1024, pool_size=1, num_classes=20)
    assert head.cls_score.weight.shape == (21, 1024) and head.bbox_pred.weight.shape == (84, 1024)
    assert abs(head.cls_score.weight.std().item() - 0.01) < 0.001
    assert abs(head.bbox_pred.weight.std().item() - 0.001) < 0.0001
    assert head.cls_score.bias.abs().sum() == 0 and head.bbox_pred.bias.abs().sum() == 0


def test_target_normalisation_round_trip_and_state_dict():
    head = DetectorHead(nn.Identity(), 1, 4, 1, num_classes=2)
    # defaults: mean 0, std (0.1, 0.1, 0.2, 0.2)
    targets = torch.tensor([[0.1, -0.2, 0.4, 0.0]])
    assert torch.allclose(head.normalize_targets(targets), torch.tensor([[1.0, -2.0, 2.0, 0.0]]))
    head.set_target_stats([0.01, 0.02, 0.03, 0.04], [0.5, 0.25, 2.0, 4.0])
    normalised = head.normalize_targets(targets)
    assert torch.allclose(normalised, torch.tensor([[0.18, -0.88, 0.185, -0.01]]))
    # every class's 4-group is un-normalised the same way
    per_class = normalised.repeat(1, 3)
    assert torch.allclose(head.unnormalize_deltas(per_class), targets.repeat(1, 3))
    # the statistics travel with the weights
    fresh = DetectorHead(nn.Identity(), 1, 4, 1, num_classes=2)
    fresh.load_state_dict(head.state_dict())
    assert torch.equal(fresh.target_stds, torch.tensor([0.5, 0.25, 2.0, 4.0]))
    with pytest.raises(ValueError, match="positive"):
        head.set_target_stats([0, 0, 0, 0], [0.1, 0.0, 0.2, 0.2])
    with pytest.raises(ValueError, match="4 values"):
        head.set_target_stats([0, 0, 0], [0.1, 0.1, 0.2])


def test_rejects_wrong_feature_map():
    head = DetectorHead(nn.Flatten(1), 2, 8, 2, 1)
    with pytest.raises(ValueError, match="channels"):
        head(torch.zeros(1, 3, 4, 4), torch.zeros((1, 4)))
    with pytest.raises(ValueError, match="one image"):
        head(torch.zeros(2, 2, 4, 4), torch.zeros((1, 4)))


def test_with_a_real_backbone_top_and_gradients():
    torch.manual_seed(0)
    backbone = build_backbone("zf", pretrained=False, fc_width=32)
    head = DetectorHead(backbone.top, backbone.feature_channels, backbone.top_channels, backbone.pool_size,
                        num_classes=3)
    features = backbone(torch.rand(1, 3, 96, 128) * 255)
    logits, deltas = head(features, torch.tensor([[0.0, 0.0, 63.0, 47.0], [30.0, 20.0, 127.0, 95.0]]))
    assert logits.shape == (2, 4) and deltas.shape == (2, 16)
    (logits.sum() + deltas.sum()).backward()
    assert backbone.top.fc6.weight.grad is not None and backbone.shared.conv5.weight.grad is not None
