"""Stage ``init_weights`` and how every later stage gets its starting network.

``init_weights`` builds the network once: ImageNet weights for the backbone (the
shared convs and the detector's top layers) and seeded N(0, 0.01) / N(0, 0.001)
initialisations for the RPN and the classifier / box regressor. Steps 1 and 2 both
start from this file (the paper's step 2 starts from ImageNet, not from step 1), and
the layers that steps 3 and 4 reset come from it too (``model.alternating`` says which
and why).

A stage loads a checkpoint with ``load_model``: the architecture comes from the file,
the non-architecture settings (RPN labelling, proposal counts, RoI sampling, input
size, ...) from the stage's declared settings.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from model.checkpoint import (
    build_from_content,
    checkpoint_config,
    load_group_state,
    read_checkpoint,
    save_checkpoint,
)
from model.alternating import Reset, reset_state
from model.config import DetectorConfig, RPNConfig
from model.devices import resolve_device
from model.faster_rcnn import FasterRCNN
from tasks import layout
from tasks.data import read_classes
from tasks.lazy_prefect import task
from tasks.settings import Settings, run_seed, with_settings

T = TypeVar("T")


def device() -> torch.device:
    """``FRCNN_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``), else CUDA when available, else CPU.

    Deliberately not a DVC param: the machine that runs a stage is not an input of it.
    """
    wanted = os.environ.get("FRCNN_DEVICE", "").strip()
    if wanted and wanted != "auto":
        return resolve_device(wanted, "FRCNN_DEVICE")  # "no CUDA here" now, not a traceback mid-stage
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def initial_config(settings: Settings, class_names: Sequence[str], backbone: str | None = None) -> DetectorConfig:
    """The architecture settings of ``init_weights`` (on ``backbone`` instead of
    ``model.backbone`` when given); everything else keeps its default."""
    model = settings.model
    return DetectorConfig(
        class_names=tuple(class_names),
        backbone=backbone or model.backbone,
        pretrained=model.pretrained,
        anchors=model.anchors,
        rpn=dataclasses.replace(RPNConfig(), mid_channels=model.rpn.mid_channels),
    )


def seeded(settings: Settings, make: Callable[[], T]) -> T:
    """``make()`` with torch's CPU generator seeded from ``pipeline.init_seed`` (shifted by
    ``pipeline.seed``), so fresh layers are reproducible; the global generator is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run_seed(settings, settings.pipeline.init_seed))
        return make()


def build_initial(settings: Settings, class_names: Sequence[str]) -> FasterRCNN:
    """The network of ``init_weights``; fresh layers drawn from ``pipeline.init_seed``."""
    cfg = initial_config(settings, class_names)
    options = dict(settings.model.backbone_options)
    return seeded(settings, lambda: FasterRCNN(cfg, options))


def build_stronger_rpn(settings: Settings, class_names: Sequence[str]) -> FasterRCNN:
    """A fresh network on ``ablations.stronger_rpn.backbone`` (ImageNet weights as
    ``model.pretrained`` says), with the stage's RPN settings and input size: the start of
    the "stronger RPN" ablation (the paper's RPN on VGG-16 against ZF)."""
    stronger = settings.ablations.stronger_rpn
    cfg = with_settings(initial_config(settings, class_names, backbone=stronger.backbone), settings)
    options = dict(stronger.backbone_options)
    return seeded(settings, lambda: FasterRCNN(cfg, options))


def load_model(path: Path | str, settings: Settings, on: torch.device | str | None = None) -> FasterRCNN:
    """A checkpoint's network with the stage's settings (``tasks.settings.with_settings``)."""
    content = read_checkpoint(path)
    cfg = with_settings(checkpoint_config(content), settings)
    model = build_from_content({**content, "config": cfg.to_dict()}, path)
    return model.to(on if on is not None else device())


def reset_layers(model: FasterRCNN, reset: Reset, source: Path | str) -> list[str]:
    """Apply ``reset`` with the initial weights read from checkpoint ``source``; returns the
    keys replaced. The checkpoint must be of the same architecture."""
    initial = read_checkpoint(source)["groups"][reset.group]
    current = model.group_modules()[reset.group].state_dict()
    state = reset_state(reset, current, initial)
    load_group_state(model, reset.group, state, source)
    return sorted(initial) if reset.prefixes is None else sorted(k for k in initial if k.startswith(reset.prefixes))


def initialise(settings: Settings) -> dict[str, Any]:
    classes = read_classes()
    model = build_initial(settings, classes)
    counts = {name: sum(p.numel() for p in ps) for name, ps in model.parameter_groups().items()}
    save_checkpoint(
        layout.checkpoint("init_weights"),
        model,
        extra={"stage": "init_weights", "init_seed": run_seed(settings, settings.pipeline.init_seed)},
    )
    return {"classes": len(classes), "parameters": counts}


@task(name="init_weights")
def init_weights_task(settings: Settings) -> dict[str, Any]:
    from tasks.atomic import write_json
    from tasks.tracking import stage_run

    with stage_run("init_weights", settings.tracking.experiment, settings) as run:
        metrics = initialise(settings)
        write_json(layout.metrics("init_weights"), metrics)
        run.log_metrics(metrics)
    return metrics
