"""What training, checkpoints and inference ask of a detector, whichever its kind.

Two kinds implement it: the two-stage ``model.faster_rcnn.FasterRCNN`` and the one-stage
``model.one_stage.OneStageDetector``. ``model.training`` trains either through one loop (with
resume), ``model.checkpoint`` saves and rebuilds either, ``model.inference`` runs either.

Shapes: one image ``[3, h, w]`` RGB float 0..255 already resized by ``scale``; proposals
``[P, 4]`` and detections in original-image pixels.

A detector's parameters fall into named groups (``GROUPS``), each saved as one state dict and
switched on or off for training as a whole (the paper's alternating steps freeze groups);
``ParameterGroups`` gives the switching to any module that lists its groups.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from model.config import DetectorConfig
from model.detections import Detections


@runtime_checkable
class Detector(Protocol):
    """The detector protocol (see the module doc)."""

    GROUPS: ClassVar[tuple[str, ...]]
    CHECKPOINT_FORMAT: ClassVar[str]
    KIND: ClassVar[str]  # the kind's name in messages ("Faster R-CNN", "one-stage")
    cfg: DetectorConfig
    backbone_options: dict

    def group_modules(self) -> dict[str, nn.Module]:
        """Group name -> the module whose state dict is that group."""

    def set_trainable(self, groups: Iterable[str]) -> None:
        """Train exactly ``groups``, freeze the others."""

    @property
    def trainable_groups(self) -> frozenset[str]: ...

    def checkpoint_options(self) -> dict[str, Any]:
        """Plain-typed constructor options beyond ``cfg`` and ``backbone_options`` ({} if none)."""

    @classmethod
    def from_checkpoint_parts(
        cls, cfg: DetectorConfig, backbone_options: dict, options: dict[str, Any]
    ) -> "Detector":
        """An untrained detector of the saved architecture (no pretrained weights fetched)."""

    def detect(
        self, image: Tensor, scale: float, proposals: Tensor | None = None, *, test_cfg: Any = None
    ) -> Detections:
        """Detections of one image in original-image pixels; ``proposals`` (original pixels)
        replace a two-stage detector's own, a one-stage detector refuses them."""

    def detect_batch(
        self,
        images: Sequence[Tensor],
        scales: Sequence[float],
        proposals: Sequence[Tensor] | None = None,
    ) -> list[Detections]:
        """``detect`` over several images at once (one padded batch through the trunk)."""


class ParameterGroups:
    """Mixin for an ``nn.Module`` with ``GROUPS`` and ``group_modules()``: freezing by group.

    Frozen groups are also kept in eval mode (see ``train``) so that a frozen detector's
    dropout does not act on them. ``never_train_parameters()`` (VGG-16 conv1-conv2) stay
    frozen whatever the groups.
    """

    GROUPS: ClassVar[tuple[str, ...]]
    _trainable: frozenset[str]

    def never_train_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.backbone.never_train_parameters()]  # type: ignore[attr-defined]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Every parameter in exactly one group (``never_train`` ones in the group holding them)."""
        return {name: list(module.parameters()) for name, module in self.group_modules().items()}  # type: ignore[attr-defined]

    @property
    def trainable_groups(self) -> frozenset[str]:
        return self._trainable

    def set_trainable(self, groups: Iterable[str]) -> None:
        """Train exactly ``groups``; freeze the rest (and ``never_train`` always)."""
        wanted = frozenset(groups)
        unknown = wanted - set(self.GROUPS)
        if unknown:
            raise ValueError(f"unknown parameter group(s) {sorted(unknown)}; groups are {self.GROUPS}")
        self._trainable = wanted
        for name, module in self.group_modules().items():  # type: ignore[attr-defined]
            for p in module.parameters():
                p.requires_grad_(name in wanted)
        for p in self.never_train_parameters():
            p.requires_grad_(False)
        self.train(self.training)  # type: ignore[attr-defined]

    def train(self, mode: bool = True):
        """``nn.Module.train`` that leaves frozen groups in eval mode."""
        nn.Module.train(self, mode)  # type: ignore[arg-type]
        if mode:
            for name, module in self.group_modules().items():  # type: ignore[attr-defined]
                if name not in self._trainable:
                    module.eval()
        return self


class evaluating:
    """Context: eval mode and no grad, restoring the previous mode (and frozen groups) after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.was_training = model.training
        self.no_grad = torch.no_grad()

    def __enter__(self) -> None:
        self.was_training = self.model.training
        self.model.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)
