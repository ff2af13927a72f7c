"""Checkpoints of a detector (``model.detector.Detector``: ``FasterRCNN`` or
``OneStageDetector``): one state dict per parameter group, config, training state.

File content (only plain types and tensors, so ``torch.load(weights_only=True)`` reads it)::

    {"format": "frcnn/1",                  # the kind's CHECKPOINT_FORMAT
     "config": DetectorConfig.to_dict(),
     "backbone_options": {...},            # keyword options the backbone was built with
     "groups": {"shared": state_dict, "rpn": state_dict, "detector": state_dict},  # the kind's GROUPS
     "extra": {...},                       # caller's metadata (step name, metrics, ...)
     "train_state": {...} | None,          # optimiser / RNG / iteration, for resuming
     "options": {...}}                     # only for kinds with constructor options (one-stage)

Functions that read take ``kind``, the detector class expected (``FasterRCNN`` by default).

Writes are atomic (temporary file in the same folder + ``os.replace``), so an
interrupted save never leaves a truncated checkpoint where a good one was.

A final model of the paper's four-step training is assembled from two checkpoints
(``assemble_model``): shared convs + RPN from step 3, detector from step 4. The shared
group is taken from the first file; step 4 trains with the shared convs frozen at their
step-3 values (which step 3 itself kept frozen from step 2), so both files hold the same
shared weights and nothing is lost by not comparing them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from model.atomic import atomic_torch_save
from model.backbones.base import state_mismatch
from model.config import DetectorConfig
from model.detector import Detector
from model.devices import resolve_device
from model.faster_rcnn import FasterRCNN

FORMAT = FasterRCNN.CHECKPOINT_FORMAT
_TOP_KEYS = ("format", "config", "backbone_options", "groups", "extra", "train_state")
# Settings that fix the shapes of the weights: two checkpoints that differ here cannot be mixed.
_ARCHITECTURE_KEYS = ("backbone", "class_names", "anchors", "rpn")


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and the problem."""


def save_checkpoint(
    path: Path | str,
    model: Detector,
    extra: dict | None = None,
    train_state: dict | None = None,
) -> Path:
    """Write ``model`` (all its groups) to ``path`` atomically; returns the path."""
    path = Path(path)
    content = {
        "format": model.CHECKPOINT_FORMAT,
        "config": model.cfg.to_dict(),
        "backbone_options": dict(model.backbone_options),
        "groups": {
            name: {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            for name, module in model.group_modules().items()
        },
        "extra": dict(extra or {}),
        "train_state": train_state,
    }
    options = model.checkpoint_options()
    if options:
        content["options"] = dict(options)
    atomic_torch_save(content, path)
    return path


def check_finite(state: Mapping[str, Tensor], where: str) -> None:
    """Refuse (``CheckpointError`` starting with ``where``) a state dict holding NaN or inf weights."""
    for key, tensor in state.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise CheckpointError(
                    f"{where} tensor {key!r} has {bad} non-finite value(s) (NaN or inf) of "
                    f"{tensor.numel()}; the training that wrote it diverged"
                )


def read_checkpoint(
    path: Path | str, map_location: str | torch.device = "cpu", kind: type = FasterRCNN
) -> dict[str, Any]:
    """The validated raw content of a ``kind`` checkpoint file (see the module docstring).

    The file is always read onto the CPU and then moved to ``map_location`` (checked
    first, :class:`~model.devices.DeviceError`): a device this machine lacks is then
    reported as such, never as a corrupt file. Weights that are NaN or infinite are
    refused: a model that loads them only gives NaN scores, or none, much later.
    """
    path = Path(path)
    target = resolve_device(map_location, "map_location")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, garbage bytes, disallowed pickle content, ...
        raise CheckpointError(
            f"{path}: not a readable checkpoint (corrupt, truncated or not a torch file): {error}"
        ) from error
    expected = kind.CHECKPOINT_FORMAT
    if not isinstance(content, dict) or content.get("format") != expected:
        found = content.get("format") if isinstance(content, dict) else type(content).__name__
        raise CheckpointError(f"{path}: not a {kind.KIND} checkpoint (format {found!r}, expected {expected!r})")
    missing = [k for k in _TOP_KEYS if k not in content]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    try:
        DetectorConfig.from_dict(content["config"])
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: invalid detector config in checkpoint: {error}") from error
    if not isinstance(content["backbone_options"], dict):
        raise CheckpointError(f"{path}: backbone_options must be a mapping")
    groups = content["groups"]
    if not isinstance(groups, dict) or set(groups) != set(kind.GROUPS):
        found = sorted(groups) if isinstance(groups, dict) else type(groups).__name__
        raise CheckpointError(f"{path}: checkpoint groups are {found}, expected {list(kind.GROUPS)}")
    for name, state in groups.items():
        if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
        ):
            raise CheckpointError(f"{path}: group {name!r} is not a state dict of tensors")
        check_finite(state, f"{path}: group {name!r}")
        if target.type != "cpu":
            groups[name] = {k: v.to(target) for k, v in state.items()}
    if not isinstance(content["extra"], dict):
        raise CheckpointError(f"{path}: 'extra' must be a mapping")
    if content["train_state"] is not None and not isinstance(content["train_state"], dict):
        raise CheckpointError(f"{path}: 'train_state' must be a mapping or None")
    if not isinstance(content.get("options", {}), dict):
        raise CheckpointError(f"{path}: 'options' must be a mapping")
    return content


def checkpoint_config(content: Mapping[str, Any]) -> DetectorConfig:
    """The ``DetectorConfig`` stored in (validated) checkpoint content."""
    return DetectorConfig.from_dict(content["config"])


def load_group_state(
    model: Detector, group: str, state: Mapping[str, Tensor], source: Path | str
) -> None:
    """Load one group's state dict, requiring the same keys and shapes; errors name ``source``."""
    module = model.group_modules()[group]
    problem = state_mismatch(module.state_dict(), state)
    if problem:
        raise CheckpointError(
            f"{source}: group {group!r} does not fit the architecture "
            f"({model.cfg.backbone}, {model.cfg.num_classes} classes): {problem}"
        )
    module.load_state_dict(dict(state), strict=True)


def build_from_content(content: Mapping[str, Any], source: Path | str, kind: type = FasterRCNN) -> Detector:
    """A ``kind`` model with the checkpoint's architecture and every group's weights from ``content``."""
    cfg = checkpoint_config(content)
    # The weights come from the file: do not fetch pretrained ones (may be offline).
    try:
        model = kind.from_checkpoint_parts(
            dataclasses.replace(cfg, pretrained=False), dict(content["backbone_options"]), dict(content.get("options", {}))
        )
    except (ValueError, TypeError, KeyError) as error:
        raise CheckpointError(f"{source}: cannot build the checkpoint's architecture: {error}") from error
    model.cfg = cfg  # keep the stored config as it was (pretrained flag included)
    for group in kind.GROUPS:
        load_group_state(model, group, content["groups"][group], source)
    return model


def _check_expected(
    cfg: DetectorConfig,
    source: Path | str,
    expected_backbone: str | None,
    expected_classes: Sequence[str] | None,
) -> None:
    if expected_backbone is not None and cfg.backbone != expected_backbone:
        raise CheckpointError(
            f"{source}: checkpoint is for backbone {cfg.backbone!r}, expected {expected_backbone!r}"
        )
    if expected_classes is not None and tuple(cfg.class_names) != tuple(expected_classes):
        raise CheckpointError(
            f"{source}: checkpoint has {cfg.num_classes} classes {list(cfg.class_names)}, "
            f"expected {len(expected_classes)} {list(expected_classes)}"
        )


def load_checkpoint(
    path: Path | str,
    expected_backbone: str | None = None,
    map_location: str | torch.device = "cpu",
    expected_classes: Sequence[str] | None = None,
    kind: type = FasterRCNN,
) -> tuple[Detector, dict]:
    """Rebuild the ``kind`` model saved in ``path``; returns ``(model, extra)``.

    Refuses (``CheckpointError`` naming the file) a missing, corrupt or truncated file, a
    file that is not a checkpoint, one for another backbone or class list than expected,
    one with non-finite weights, and one whose weights do not fit the architecture its
    config describes; a ``map_location`` this machine lacks is a ``DeviceError``.
    """
    device = resolve_device(map_location, "map_location")
    content = read_checkpoint(path, kind=kind)
    _check_expected(checkpoint_config(content), path, expected_backbone, expected_classes)
    model = build_from_content(content, path, kind)
    model.to(device)
    return model, dict(content["extra"])


def _architecture(content: Mapping[str, Any]) -> dict[str, Any]:
    arch = {k: content["config"].get(k) for k in _ARCHITECTURE_KEYS}
    arch["backbone_options"] = content["backbone_options"]
    return arch


def assemble_model(shared_rpn_checkpoint: Path | str, detector_checkpoint: Path | str) -> FasterRCNN:
    """The paper's final model: shared convs + RPN from the first file, detector from the second.

    Both must describe the same architecture (backbone, its options, classes, anchors, RPN);
    the settings that do not shape weights (proposal counts, test thresholds, ...) come
    from the detector checkpoint. See the module docstring for why the shared group is
    taken from the first file without comparing it to the second's.
    """
    first = read_checkpoint(shared_rpn_checkpoint)
    second = read_checkpoint(detector_checkpoint)
    arch_first, arch_second = _architecture(first), _architecture(second)
    differences = [k for k in arch_first if arch_first[k] != arch_second[k]]
    if differences:
        detail = "; ".join(f"{k}: {arch_first[k]!r} vs {arch_second[k]!r}" for k in differences)
        raise CheckpointError(
            f"cannot assemble {shared_rpn_checkpoint} (shared + rpn) with {detector_checkpoint} "
            f"(detector): architectures differ in {detail}"
        )
    model = build_from_content(second, detector_checkpoint)
    load_group_state(model, "shared", first["groups"]["shared"], shared_rpn_checkpoint)
    load_group_state(model, "rpn", first["groups"]["rpn"], shared_rpn_checkpoint)
    return model
