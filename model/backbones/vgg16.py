"""VGG-16 (Simonyan & Zisserman) split as in Faster R-CNN, on torchvision's architecture and weights.

``shared`` = ``features`` up to conv5_3 + ReLU (the last max pool dropped): stride 16,
512 channels; parameter names ``features.<i>.weight`` as in torchvision. ``top`` = fc6,
fc7 (torchvision's ``classifier.0`` / ``classifier.3``) with ReLU and dropout 0.5, after
RoIPool 7x7. conv1_1-conv2_2 (``features.0/2/5/7``) never train, as in the paper.

Weights: torchvision's ``IMAGENET1K_V1`` (trained on RGB in 0..1 with ImageNet
mean/std), fetched through torch.hub's download/cache mechanism into
``torch.hub.get_dir()/checkpoints/``. The paper's Caffe VGG-16 expected BGR minus the
mean pixel instead; the normalisation here is the one of the weights actually loaded,
and is kept for random initialisation too so that a model never changes its input
convention with ``pretrained``.
"""
from __future__ import annotations

import contextlib
import socket
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import VGG16_Weights, vgg16

from model.backbones.base import Backbone, WeightsUnavailableError, load_strict

IMAGENET_RGB_MEAN = (0.485, 0.456, 0.406)
IMAGENET_RGB_STD = (0.229, 0.224, 0.225)
# A stalled connection must not hang a pipeline stage forever.
DOWNLOAD_TIMEOUT_S = 30.0
NEVER_TRAIN = ("features.0.", "features.2.", "features.5.", "features.7.")  # conv1_1 .. conv2_2


def weights_cache_path(weights: VGG16_Weights = VGG16_Weights.IMAGENET1K_V1) -> Path:
    """Where torch.hub keeps (or would keep) the downloaded weights file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torch.hub opens its connection with the process-wide default timeout (none by
    # default); set one only for the duration of the download and only if unset.
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def load_imagenet_state_dict(timeout_s: float = DOWNLOAD_TIMEOUT_S) -> dict[str, torch.Tensor]:
    """torchvision's VGG-16 ImageNet state_dict from the hub cache, downloading it if absent."""
    weights = VGG16_Weights.IMAGENET1K_V1
    cached = weights_cache_path(weights)
    if cached.is_file():
        try:
            return torch.load(cached, map_location="cpu", weights_only=True)
        except Exception as error:
            raise WeightsUnavailableError(
                f"vgg16: cached weights file {cached} cannot be read ({error}); delete it so that it is "
                "downloaded again, or replace it with a good copy"
            ) from error
    try:
        with _socket_timeout(timeout_s):
            return torch.hub.load_state_dict_from_url(
                weights.url, map_location="cpu", progress=False, check_hash=True, weights_only=True
            )
    except (OSError, RuntimeError) as error:  # URLError, socket timeout, DNS failure, bad hash
        raise WeightsUnavailableError(
            f"vgg16: could not download the ImageNet weights {weights.url} "
            f"({type(error).__name__}: {error}); the network could not be reached or the download failed. "
            f"Copy the file {cached.name} by hand to {cached} (torch.hub.get_dir()/checkpoints/, "
            "set TORCH_HOME to move it), or use pretrained: false to start from random weights"
        ) from error


def build_vgg16(pretrained: bool = True) -> Backbone:
    """VGG-16 backbone: 512-channel stride-16 conv5_3 features, fc6/fc7 top (4096)."""
    state = load_imagenet_state_dict() if pretrained else None  # fail before the costly init
    net = vgg16(weights=None)  # torchvision's own random init when not pretrained
    if state is not None:
        load_strict(net, state, weights_cache_path(), "vgg16")
    shared = nn.Sequential(OrderedDict([("features", net.features[:30])]))  # drop pool5
    top = nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten(1)),
        ("fc6", net.classifier[0]),
        ("relu6", nn.ReLU(inplace=True)),
        ("drop6", nn.Dropout(0.5)),
        ("fc7", net.classifier[3]),
        ("relu7", nn.ReLU(inplace=True)),
        ("drop7", nn.Dropout(0.5)),
    ]))
    return Backbone(
        name="vgg16",
        shared=shared,
        top=top,
        feature_channels=512,
        top_channels=4096,
        pool_size=7,
        rpn_mid_channels=512,
        pixel_mean=tuple(255.0 * m for m in IMAGENET_RGB_MEAN),
        pixel_std=tuple(255.0 * s for s in IMAGENET_RGB_STD),
        never_train=NEVER_TRAIN,
    )
