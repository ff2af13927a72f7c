"""Settings are checked where they enter: params.yaml (or a ``-S`` override) at a stage's start.

``check_settings`` walks a stage's selection of params.yaml against ``SCHEMA``, the one
description of every section, and stops at the first problem with one line naming the
file, the dotted key, the value and what is allowed, e.g.::

    params.yaml: train.step1_rpn.iterations = -4: must be >= 0

The schema of a section backed by a dataclass is that dataclass (``DetectorConfig``'s
sections, ``TrainSchedule``, ``SyntheticSpec``): field names give the known keys, field
types the allowed values, and the dataclass's own checks (``__post_init__``) the ranges.
Unknown keys (typos) are refused here, in every section alike.
"""
from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.config import AnchorConfig, ProposalConfig, RoIConfig, RPNConfig, TestConfig
from model.data.loading import LAYOUTS
from model.data.synthetic import SyntheticSpec
from model.evaluation.voc_ap import METRICS
from tasks.params import ParamsError


class SettingsError(ParamsError):
    """A value in params.yaml is not allowed (one line: file, key, value, what is allowed)."""


@dataclass(frozen=True)
class Imported:
    """``module.name``, imported when a value is checked against it.

    For specs whose module imports torch (about 2 s): a stage that checks no such key
    (a report, the data stage) does not import it; the stages that do import it anyway.
    """

    module: str
    name: str

    def resolve(self) -> Any:
        return getattr(importlib.import_module(self.module), self.name)


@dataclass(frozen=True)
class Choice:
    """One of ``values`` (or of the tuple an ``Imported`` names)."""

    values: tuple[str, ...] | Imported

    def allowed(self) -> tuple[str, ...]:
        return self.values.resolve() if isinstance(self.values, Imported) else self.values


@dataclass(frozen=True)
class Bounded:
    """A number of ``kind`` (int or float) in ``[low, high]`` (None: unbounded); ``open`` excludes the ends."""

    kind: type
    low: float | None = None
    high: float | None = None
    open: bool = False


@dataclass(frozen=True)
class OrNone:
    """``spec`` or null."""

    spec: Any


@dataclass(frozen=True)
class Folder:
    """A path that must exist (a dataset's folder, or the generator script)."""


#: A mapping of free keys (backbone options: each backbone checks its own).
FREE = Mapping
PROBABILITY_OPEN = Bounded(float, 0.0, 1.0, open=True)

MODEL: dict[str, Any] = {
    "backbone": str,
    "pretrained": bool,
    "backbone_options": FREE,
    "anchors": AnchorConfig,
    "rpn": RPNConfig,
    "train_proposals": ProposalConfig,
    "cache_proposals": ProposalConfig,
    "test_proposals": ProposalConfig,
    "roi": RoIConfig,
    "test": TestConfig,
    "stronger_rpn": {"backbone": str, "backbone_options": FREE},
}
SCHEMA: dict[str, Any] = {
    "model": MODEL,
    "data": {
        "name": str,
        "layout": Choice(LAYOUTS),
        "source": Folder(),
        "voc_devkit": str,
        "train_split": str,
        "test_split": str,
        "classes": list[str] | None,
        "synthetic": SyntheticSpec | None,
        "input": {"min_size": Bounded(int, 1), "max_size": Bounded(int, 1)},
    },
    "train": {"name": str, **{step: Imported("model.training", "TrainSchedule") for step in
                              ("step1_rpn", "step2_fast_rcnn", "step3_rpn", "step4_fast_rcnn", "one_stage", "joint")}},
    "tracking": {"experiment": str},
    "pipeline": {"init_seed": Bounded(int, 0), "seed": Bounded(int, 0),
                 # Selective-search processes (0: one per core); a runtime setting, no DVC param.
                 "ss_workers": Bounded(int, 0),
                 # Processes per machine of a training stage (torchrun) and its lr rule (tasks.world).
                 "nproc_per_node": Bounded(int, 1),
                 "lr_scaling": Choice(Imported("model.distributed", "LR_SCALINGS"))},
    "evaluate": {
        "metric": Choice(METRICS),
        "recall_top_ns": list[Bounded(int, 1)],  # type: ignore[misc]
        "recall_ious": list[PROBABILITY_OPEN],  # type: ignore[misc]
        # Stage timing: the first test images timed (2 of them warm up, not counted).
        "timing_images": Bounded(int, 2),
    },
    "ablations": {
        "selective_search": {"mode": Choice(Imported("model.selective_search", "MODES")),
                             "max_side": OrNone(Bounded(int, 1)), "upscale": bool, "max_proposals": Bounded(int, 1),
                             "min_size": Bounded(int, 0), "seed": int},
    },
}


def _fail(source: str, key: str, value: Any, allowed: str) -> SettingsError:
    return SettingsError(f"{source}: {key} = {value!r}: {allowed}")


def _describe(spec: Any) -> str:
    if spec is bool:
        return "true or false"
    if spec in (int, float, str):
        return {"int": "an integer", "float": "a number", "str": "a string"}[spec.__name__]
    if isinstance(spec, Choice):
        return f"one of {list(spec.allowed())}"
    if isinstance(spec, Bounded):
        what = "an integer" if spec.kind is int else "a number"
        lo, hi = ("(", ")") if spec.open else ("[", "]")
        if spec.high is None:
            return f"{what} {'>' if spec.open else '>='} {spec.low:g}"
        return f"{what} in {lo}{spec.low:g}, {spec.high:g}{hi}"
    return str(spec)


def _is_number(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if kind is int else isinstance(value, (int, float))


def _check(spec: Any, value: Any, key: str, source: str, check_paths: bool = True) -> None:
    if isinstance(spec, Imported):
        return _check(spec.resolve(), value, key, source, check_paths)
    if isinstance(spec, OrNone):
        return None if value is None else _check(spec.spec, value, key, source, check_paths)
    origin = typing.get_origin(spec)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(spec)
        if value is None and type(None) in options:
            return
        [spec] = [o for o in options if o is not type(None)]
        return _check(spec, value, key, source, check_paths)
    if isinstance(spec, dict):
        if not isinstance(value, Mapping):
            raise _fail(source, key, value, f"expected a mapping with keys {sorted(spec)}")
        unknown = sorted(set(value) - set(spec))
        if unknown:
            raise _fail(source, f"{key}.{unknown[0]}", value[unknown[0]], f"unknown key; known keys of {key}: {sorted(spec)}")
        for name, item in value.items():
            _check(spec[name], item, f"{key}.{name}", source, check_paths)
        return
    if isinstance(spec, type) and dataclasses.is_dataclass(spec):
        return _check_dataclass(spec, value, key, source, check_paths)
    if spec is FREE:
        if value is not None and not isinstance(value, Mapping):
            raise _fail(source, key, value, "expected a mapping (or null)")
        return
    if origin in (list, tuple):
        args = [a for a in typing.get_args(spec) if a is not Ellipsis]
        if not isinstance(value, (list, tuple)):
            raise _fail(source, key, value, f"expected a list of {_describe(args[0])}")
        fixed = origin is tuple and Ellipsis not in typing.get_args(spec)
        if fixed and len(value) != len(args):
            raise _fail(source, key, value, f"expected a list of {len(args)} values")
        for i, item in enumerate(value):
            _check(args[i] if fixed else args[0], item, f"{key}[{i}]", source, check_paths)
        return
    if isinstance(spec, Folder):
        if not isinstance(value, str) or (check_paths and not Path(value).exists()):
            raise _fail(source, key, value, "no such file or folder (the dataset's folder; see conf/data/)")
        return
    if isinstance(spec, Choice):
        if value not in spec.allowed():
            raise _fail(source, key, value, f"expected {_describe(spec)}")
        return
    if isinstance(spec, Bounded):
        ok = _is_number(value, spec.kind)
        if ok and spec.low is not None:
            ok = value > spec.low if spec.open else value >= spec.low
        if ok and spec.high is not None:
            ok = value < spec.high if spec.open else value <= spec.high
        if not ok:
            raise _fail(source, key, value, f"expected {_describe(spec)}")
        return
    if spec in (int, float):
        if not _is_number(value, spec):
            raise _fail(source, key, value, f"expected {_describe(spec)}")
        return
    if spec in (bool, str):
        if not isinstance(value, spec):
            raise _fail(source, key, value, f"expected {_describe(spec)}")
        return
    raise TypeError(f"no check for {spec!r} ({key})")


def _check_dataclass(cls: type, value: Any, key: str, source: str, check_paths: bool) -> None:
    """Known keys, each of its field's type, then the dataclass's own range checks."""
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    _check({name: hints[name] for name in fields}, value, key, source, check_paths)
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in value]
    if missing:
        raise SettingsError(f"{source}: {key}.{missing[0]} is missing (required by {key})")
    try:
        cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
    except ValueError as error:
        field = next((name for name in value if str(error).startswith(name)), None)
        where = f"{key}.{field}" if field else key
        shown = value[field] if field else dict(value)
        raise _fail(source, where, shown, str(error)) from None


def check_settings(params: Mapping[str, Any], source: str = "params.yaml", check_paths: bool = True) -> None:
    """Check every key present in ``params`` (a stage's selection) against ``SCHEMA``.

    ``check_paths`` False: paths need not exist (checking a profile away from its data).
    """
    for section, value in params.items():
        if section not in SCHEMA:
            raise _fail(source, section, value, f"unknown section; sections are {sorted(SCHEMA)}")
        _check(SCHEMA[section], value, section, source, check_paths)


def check_dataclass(cls: type, values: Mapping[str, Any], key: str, source: str = "params.yaml") -> None:
    """``values`` checked as the settings of dataclass ``cls`` found at ``key``."""
    _check_dataclass(cls, values, key, source, True)
