"""Settings: declared once as typed, frozen dataclasses; decoded once, at a stage's start.

``Settings`` has params.yaml's shape, one dataclass per section: ``ModelSettings`` is
``model.config.DetectorConfig`` (less the sizes and classes the data decides) plus the
backbone's options; a training schedule is ``model.training.TrainSchedule``; the synthetic
data is ``model.data.synthetic.SyntheticSpec``; the rest is declared below. These
declarations are the only schema: ``decode`` walks a stage's selection of params.yaml
(``tasks.params.select``) against them, checks every value (field names give the known
keys, field types the allowed values, ``Annotated`` marks such as ``Bounded`` the ranges,
a dataclass's own ``__post_init__`` the rest) and returns the typed value the task reads
by attribute. The first problem stops the stage with one line naming the file, the dotted
key, the value and what is allowed, e.g.::

    params.yaml: train.step1_rpn.iterations = -4: must be >= 0

A stage sees only the keys it declares (DVC re-runs it when one of those changes, and
only then). A section it declares in part (``model.rpn.mid_channels`` of ``model.rpn``)
decodes to a ``Partial``: its declared fields read as attributes, an undeclared one
raises ``ParamsError`` naming the key instead of reading a value DVC does not track.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import types
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from model.config import DetectorConfig
from model.data.loading import LAYOUTS
from model.data.synthetic import SyntheticSpec
from model.evaluation.voc_ap import METRICS
from tasks.params import ParamsError

if TYPE_CHECKING:
    from model.training import TrainSchedule

T = TypeVar("T")


class SettingsError(ParamsError):
    """A value in params.yaml is not allowed (one line: file, key, value, what is allowed)."""


# ----------------------------------------------------------------- what a field allows

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
class Folder:
    """A path that must exist (a dataset's folder, or the generator script)."""


@dataclass(frozen=True)
class Free:
    """A mapping of free keys (backbone options: each backbone checks its own); null reads as ``{}``."""


#: Names in the declarations below whose modules import torch: resolved only when a
#: stage decodes a section that uses them.
LAZY = {"TrainSchedule": Imported("model.training", "TrainSchedule")}

BackboneOptions = Annotated[Mapping[str, Any], Free()]
Probability = Annotated[float, Bounded(float, 0.0, 1.0, open=True)]
Positive = Annotated[int, Bounded(int, 1)]
NonNegative = Annotated[int, Bounded(int, 0)]


# ----------------------------------------------------------------- the sections

#: ``DetectorConfig`` fields that the ``data`` section decides, not ``model``.
DATA_FIELDS = ("class_names", "min_size", "max_size")

#: The ``model`` section: every ``DetectorConfig`` field but ``DATA_FIELDS``, then the
#: backbone's options (keyword arguments of its builder, not part of the config).
ModelSettings = dataclasses.make_dataclass(
    "ModelSettings",
    [(f.name, typing.get_type_hints(DetectorConfig)[f.name]) for f in dataclasses.fields(DetectorConfig)
     if f.name not in DATA_FIELDS] + [("backbone_options", BackboneOptions)],
    frozen=True,
)
ModelSettings.__module__ = __name__


@dataclass(frozen=True)
class InputSize:
    """``data.input``: shorter image side after resizing, cap on the longer side (``DetectorConfig``'s)."""

    min_size: Positive
    max_size: Positive


@dataclass(frozen=True)
class DataSettings:
    name: str
    layout: Annotated[str, Choice(LAYOUTS)]
    source: Annotated[str, Folder()]
    train_split: str
    test_split: str
    classes: tuple[str, ...] | None
    synthetic: SyntheticSpec | None
    input: InputSize
    voc_devkit: str | None = None  # what ``source`` is made of (conf/data/voc07.yaml)


@dataclass(frozen=True)
class TrainSettings:
    """One ``TrainSchedule`` per training stage (the profile's ``name`` is a label)."""

    name: str
    step1_rpn: TrainSchedule
    step2_fast_rcnn: TrainSchedule
    step3_rpn: TrainSchedule
    step4_fast_rcnn: TrainSchedule
    one_stage: TrainSchedule
    joint: TrainSchedule


@dataclass(frozen=True)
class TrackingSettings:
    experiment: str  # MLflow experiment; no DVC dependency of any stage


@dataclass(frozen=True)
class PipelineSettings:
    init_seed: NonNegative  # seed of the fresh layers (RPN, classifier, box regressor)
    seed: NonNegative  # run k of a seed study (``run_seed``)
    # Selective-search processes (0: one per core); a runtime setting, no DVC param
    # (``RUNTIME_KEYS``).
    ss_workers: NonNegative
    # Processes per machine of a training stage (torchrun) and its lr rule (``tasks.world``).
    nproc_per_node: Positive
    lr_scaling: Annotated[str, Choice(Imported("model.distributed", "LR_SCALINGS"))]


@dataclass(frozen=True)
class EvaluateSettings:
    metric: Annotated[str, Choice(METRICS)]
    recall_top_ns: tuple[Positive, ...]
    recall_ious: tuple[Probability, ...]
    # Stage timing: the first test images timed (2 of them warm up, not counted).
    timing_images: Annotated[int, Bounded(int, 2)]


@dataclass(frozen=True)
class SelectiveSearchSettings:
    """Keyword arguments of ``model.selective_search.selective_search_dataset`` (in this order)."""

    mode: Annotated[str, Choice(Imported("model.selective_search", "MODES"))]
    max_side: Positive | None
    upscale: bool  # smaller images enlarged to max_side
    max_proposals: Positive
    min_size: NonNegative
    seed: int

    def kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class StrongerRPN:
    """The "stronger RPN" ablation's backbone (the paper: VGG-16's RPN for a ZF detector);
    its options build the detector top that the ablation does not use."""

    backbone: str
    backbone_options: BackboneOptions


@dataclass(frozen=True)
class AblationSettings:
    selective_search: SelectiveSearchSettings
    stronger_rpn: StrongerRPN


@dataclass(frozen=True)
class Settings:
    """params.yaml, typed. A stage gets a ``Partial`` of it: the sections it declared."""

    model: ModelSettings  # type: ignore[valid-type]
    data: DataSettings
    train: TrainSettings
    tracking: TrackingSettings
    pipeline: PipelineSettings
    evaluate: EvaluateSettings
    ablations: AblationSettings


class Partial:
    """The declared fields of dataclass ``cls`` at ``key`` (decoded), read as attributes.

    Reading one of ``cls``'s other fields raises ``ParamsError`` naming its dotted key;
    ``raw`` is the mapping it was decoded from (what the stage logs and keys resumes by).
    """

    __slots__ = ("_cls", "_key", "_values", "_raw")

    def __init__(self, cls: type, key: str, values: Mapping[str, Any], raw: Mapping[str, Any]) -> None:
        for name, value in (("_cls", cls), ("_key", key), ("_values", dict(values)), ("_raw", raw)):
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:  # only for names that are not slots
        if name in self._values:
            return self._values[name]
        if name in _field_names(self._cls):
            where = f"{self._key}.{name}" if self._key else name
            raise ParamsError(f"parameter {where!r} is not among this stage's declared params")
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return Partial, (self._cls, self._key, self._values, self._raw)

    def __repr__(self) -> str:
        return f"Partial[{self._cls.__name__}]({self._values!r})"

    def declares(self, name: str) -> bool:
        return name in self._values


def declares(section: Any, name: str) -> bool:
    """Whether ``section`` (a decoded dataclass or a ``Partial`` of one) holds field ``name``."""
    return section.declares(name) if isinstance(section, Partial) else True


#: Settings of how a stage runs, not of what it makes (like FRCNN_THREADS): every stage
#: reads them, none declares them as a DVC param, and a resume key leaves them out, so a
#: killed stage restarted with another value resumes. ``pipeline.ss_workers``:
#: selective-search processes.
RUNTIME_KEYS: tuple[str, ...] = ("pipeline.ss_workers",)


def without_runtime_keys(chosen: dict[str, Any]) -> dict[str, Any]:
    """``chosen`` (a ``selection``) with the ``RUNTIME_KEYS`` removed, in place; returned."""
    for dotted in RUNTIME_KEYS:
        parts = dotted.split(".")
        sections: list[Any] = [chosen]
        for part in parts[:-1]:
            sections.append(sections[-1].get(part) if isinstance(sections[-1], Mapping) else None)
        if isinstance(sections[-1], dict):
            sections[-1].pop(parts[-1], None)
        # A section left empty goes too: declaring only a runtime key changes nothing.
        for depth in range(len(parts) - 1, 0, -1):
            if sections[depth] == {} and isinstance(sections[depth - 1], dict):
                sections[depth - 1].pop(parts[depth - 1], None)
    return chosen


def selection(settings: Any) -> dict[str, Any]:
    """The params mapping ``settings`` was decoded from (a copy): what the stage logs to
    MLflow and what its resume key digests. A mapping is its own selection."""
    if isinstance(settings, Partial):
        return copy.deepcopy(dict(settings._raw))
    if isinstance(settings, Mapping):
        return copy.deepcopy(dict(settings))
    return _plain(dataclasses.asdict(settings))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ----------------------------------------------------------------- the decoder (= the validator)

@dataclass(frozen=True)
class _Context:
    source: str
    check_paths: bool
    declared: Collection[str] | None  # None: every mapping is whole

    def whole(self, key: str) -> bool:
        """A dataclass at ``key`` is whole when it or a section above it was declared."""
        if self.declared is None:
            return True
        return any(key == d or key.startswith(d + ".") for d in self.declared)


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _hints(cls: type) -> dict[str, Any]:
    names = {name: imported.resolve() for name, imported in LAZY.items()
             if any(name in str(a) for a in getattr(cls, "__annotations__", {}).values())}
    return typing.get_type_hints(cls, localns=names, include_extras=True)


def _fail(source: str, key: str, value: Any, allowed: str) -> SettingsError:
    return SettingsError(f"{source}: {key} = {value!r}: {allowed}")


def _describe(spec: Any) -> str:
    if typing.get_origin(spec) is Annotated:
        return _describe(typing.get_args(spec)[1])
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


def _decode(spec: Any, value: Any, key: str, ctx: _Context) -> Any:
    """``value`` found at ``key`` checked against ``spec`` and returned typed (lists as tuples,
    mappings of a dataclass as that dataclass)."""
    origin = typing.get_origin(spec)
    if origin is Annotated:
        return _decode_marked(typing.get_args(spec)[1], value, key, ctx)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(spec)
        if value is None and type(None) in options:
            return None
        [spec] = [o for o in options if o is not type(None)]
        return _decode(spec, value, key, ctx)
    if isinstance(spec, type) and dataclasses.is_dataclass(spec):
        return _decode_dataclass(spec, value, key, ctx)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(spec) if a is not Ellipsis]
        if not isinstance(value, (list, tuple)):
            raise _fail(ctx.source, key, value, f"expected a list of {_describe(args[0])}")
        fixed = Ellipsis not in typing.get_args(spec)
        if fixed and len(value) != len(args):
            raise _fail(ctx.source, key, value, f"expected a list of {len(args)} values")
        return tuple(_decode(args[i] if fixed else args[0], item, f"{key}[{i}]", ctx) for i, item in enumerate(value))
    if spec in (int, float):
        if not _is_number(value, spec):
            raise _fail(ctx.source, key, value, f"expected {_describe(spec)}")
        return value
    if spec in (bool, str):
        if not isinstance(value, spec):
            raise _fail(ctx.source, key, value, f"expected {_describe(spec)}")
        return value
    raise TypeError(f"no decoder for {spec!r} ({key})")


def _decode_marked(mark: Any, value: Any, key: str, ctx: _Context) -> Any:
    if isinstance(mark, Free):
        if value is not None and not isinstance(value, Mapping):
            raise _fail(ctx.source, key, value, "expected a mapping (or null)")
        return dict(value or {})
    if isinstance(mark, Folder):
        if not isinstance(value, str) or (ctx.check_paths and not Path(value).exists()):
            raise _fail(ctx.source, key, value, "no such file or folder (the dataset's folder; see conf/data/)")
        return value
    if isinstance(mark, Choice):
        if value not in mark.allowed():
            raise _fail(ctx.source, key, value, f"expected {_describe(mark)}")
        return value
    if isinstance(mark, Bounded):
        ok = _is_number(value, mark.kind)
        if ok and mark.low is not None:
            ok = value > mark.low if mark.open else value >= mark.low
        if ok and mark.high is not None:
            ok = value < mark.high if mark.open else value <= mark.high
        if not ok:
            raise _fail(ctx.source, key, value, f"expected {_describe(mark)}")
        return value
    raise TypeError(f"no decoder for {mark!r} ({key})")


def _decode_dataclass(cls: type, value: Any, key: str, ctx: _Context) -> Any:
    """Known keys, each of its field's type; then, for a whole section, the required
    fields and the dataclass's own range checks (its ``__post_init__``)."""
    names = _field_names(cls)
    if not isinstance(value, Mapping):
        raise _fail(ctx.source, key or "params", value, f"expected a mapping with keys {sorted(names)}")
    unknown = sorted(set(value) - set(names))
    if unknown:
        if not key:
            raise _fail(ctx.source, unknown[0], value[unknown[0]], f"unknown section; sections are {sorted(names)}")
        raise _fail(ctx.source, f"{key}.{unknown[0]}", value[unknown[0]],
                    f"unknown key; known keys of {key}: {sorted(names)}")
    hints = _hints(cls)
    decoded = {name: _decode(hints[name], item, f"{key}.{name}" if key else name, ctx) for name, item in value.items()}
    if not ctx.whole(key):
        return Partial(cls, key, decoded, value)
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in value]
    if missing:
        raise SettingsError(f"{ctx.source}: {key}.{missing[0]} is missing (required by {key})")
    try:
        return cls(**decoded)
    except ValueError as error:
        field = next((name for name in value if str(error).startswith(name)), None)
        where = f"{key}.{field}" if field else key
        shown = value[field] if field else dict(value)
        raise _fail(ctx.source, where, shown, str(error)) from None


def decode(params: Mapping[str, Any], declared: Collection[str] | None = None, source: str = "params.yaml",
           check_paths: bool = True) -> Settings:
    """``params`` (a stage's selection: the ``declared`` dotted keys) checked and typed.

    ``declared`` None: ``params`` is the whole file (every section whole). ``check_paths``
    False: paths need not exist (checking a profile away from its data).
    """
    return _decode_dataclass(Settings, params, "", _Context(source, check_paths, declared))


def decode_dataclass(cls: type[T], values: Mapping[str, Any], key: str, source: str = "params.yaml") -> T:
    """``values`` found at ``key`` decoded as the whole settings of dataclass ``cls``."""
    return _decode_dataclass(cls, values, key, _Context(source, True, None))


# ----------------------------------------------------------------- settings applied

#: DetectorConfig sections that do not fix any weight shape: a stage may set them on a
#: model loaded from a checkpoint. The architecture (backbone, classes, anchors,
#: rpn.mid_channels) comes from the checkpoint and is fixed by init_weights.
SETTING_SECTIONS = ("rpn", "train_proposals", "cache_proposals", "test_proposals", "roi", "test")


def with_settings(cfg: DetectorConfig, settings: Settings) -> DetectorConfig:
    """``cfg`` with the non-architecture sections the stage declared replaced (the fields
    declared of a section declared in part), and the input size when declared.

    The other values stay as the checkpoint recorded them. ``model.rpn.mid_channels``
    shapes the RPN head and must agree with the checkpoint.
    """
    data = cfg.to_dict()
    if declares(settings, "model"):
        for section in SETTING_SECTIONS:
            if not declares(settings.model, section):
                continue
            given = getattr(settings.model, section)
            values = dict(given._values) if isinstance(given, Partial) else dataclasses.asdict(given)
            if section == "rpn" and "mid_channels" in values and values["mid_channels"] != data["rpn"]["mid_channels"]:
                raise ParamsError(
                    f"model.rpn.mid_channels is {values['mid_channels']} in params but "
                    f"{data['rpn']['mid_channels']} in the checkpoint: re-run init_weights"
                )
            data[section] = {**data[section], **_plain(values)}
    if declares(settings, "data") and declares(settings.data, "input"):
        data.update(min_size=settings.data.input.min_size, max_size=settings.data.input.max_size)
    return DetectorConfig.from_dict(data)


#: Run ``k`` of a seed study (``pipeline.seed = k``) draws every training seed and the
#: initial layers from ``seed + SEED_STRIDE * k``; ``k = 0`` is the profile's own seeds.
SEED_STRIDE = 1000


def run_seed(settings: Settings, base: int) -> int:
    """``base`` (a step's ``seed``, ``pipeline.init_seed``) shifted for this run of a seed study."""
    return int(base) + SEED_STRIDE * int(settings.pipeline.seed)


def training_schedule(settings: Settings, step: str) -> TrainSchedule:
    """``train.<step>``, its seed shifted by ``run_seed``."""
    schedule = getattr(settings.train, step)
    return dataclasses.replace(schedule, seed=run_seed(settings, schedule.seed))
