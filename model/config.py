"""Every setting of the detector, with the paper's (py-faster-rcnn's) values as defaults.

A ``DetectorConfig`` round-trips through plain dicts (``to_dict`` / ``from_dict``)
so that it can live inside a checkpoint loaded with ``weights_only=True`` and
inside ``params.yaml``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any


@dataclass
class AnchorConfig:
    """Reference anchors: ratio = h / w; box side = base_size * scale (paper: 128, 256, 512)."""

    base_size: int = 16
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    scales: tuple[float, ...] = (8.0, 16.0, 32.0)

    @property
    def num_anchors(self) -> int:
        return len(self.ratios) * len(self.scales)


@dataclass
class RPNConfig:
    """Anchor labelling, sampling and loss of the RPN (paper sec. 3.1.2-3.1.3)."""

    mid_channels: int | None = None  # None: the backbone's choice (256 ZF, 512 VGG)
    positive_iou: float = 0.7
    negative_iou: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    allowed_border: int = 0  # cross-boundary anchors are ignored in training
    sigma: float = 3.0


@dataclass
class ProposalConfig:
    """Turning RPN outputs into proposals; every switch is one of the paper's ablations.

    ``pre_nms_top_n`` / ``post_nms_top_n`` <= 0 mean "keep all".
    ``ranking``: "score" (the RPN's cls score) or "random" (the "no cls" ablation).
    ``use_regression`` False returns the anchors themselves (the "no reg" ablation).
    """

    pre_nms_top_n: int = 6000
    post_nms_top_n: int = 300
    nms_threshold: float = 0.7
    use_nms: bool = True
    min_size: float = 16.0  # in original-image pixels; scaled by the input scale
    ranking: str = "score"
    use_regression: bool = True


@dataclass
class RoIConfig:
    """Fast R-CNN RoI sampling and loss (Fast R-CNN paper, py-faster-rcnn)."""

    batch_size_per_image: int = 64  # 128 RoIs per 2-image batch
    foreground_fraction: float = 0.25
    foreground_iou: float = 0.5
    background_iou_low: float = 0.0  # 0.1 in the Fast R-CNN paper, 0.0 in py-faster-rcnn
    background_iou_high: float = 0.5
    sigma: float = 1.0
    normalize_targets: bool = True
    # Used when targets are normalised but no dataset statistics were computed.
    target_means: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    target_stds: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)


@dataclass
class TestConfig:
    score_threshold: float = 0.05
    nms_threshold: float = 0.3
    max_detections_per_image: int = 100


@dataclass
class DetectorConfig:
    """The whole detector. ``class_names`` excludes the background (label 0)."""

    class_names: tuple[str, ...] = ()
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    min_size: int = 600  # shorter image side after resizing
    max_size: int = 1000  # cap on the longer side
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    train_proposals: ProposalConfig = field(
        default_factory=lambda: ProposalConfig(pre_nms_top_n=12000, post_nms_top_n=2000)
    )
    cache_proposals: ProposalConfig = field(
        default_factory=lambda: ProposalConfig(pre_nms_top_n=-1, post_nms_top_n=2000)
    )
    test_proposals: ProposalConfig = field(default_factory=ProposalConfig)
    roi: RoIConfig = field(default_factory=RoIConfig)
    test: TestConfig = field(default_factory=TestConfig)

    @property
    def num_classes(self) -> int:
        """Foreground classes K; the classifier has K + 1 outputs."""
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of str/int/float/bool/list, safe for ``weights_only`` checkpoints."""
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DetectorConfig":
        """Inverse of ``to_dict``; unknown keys are an error so typos do not pass silently."""
        return _build(cls, data, "DetectorConfig")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(cls(), name) if name != "class_names" else ()
        if is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)
