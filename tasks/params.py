"""Reading params.yaml, restricted to the keys a stage declares.

DVC re-runs a stage when one of the ``params:`` keys it lists in dvc.yaml changes,
and only then. A stage that read a key it did not declare would silently keep a
stale output when that key changes. So a stage never sees the whole file: it gets
``select(params, keys)``, a copy holding only its declared keys (dotted paths, a key
naming a mapping brings its whole subtree). Reading anything else is a ``KeyError``.
"""
from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from model.config import DetectorConfig

PARAMS_FILE = Path("params.yaml")


class ParamsError(KeyError):
    """A declared key is missing from params.yaml, or a stage read an undeclared one."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def load_params(path: Path | str = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found (run from the repository root)") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return data


def select(params: Mapping[str, Any], keys: Iterable[str], source: str = str(PARAMS_FILE)) -> dict[str, Any]:
    """A nested copy of ``params`` holding only the dotted ``keys`` (each must exist)."""
    selected: dict[str, Any] = {}
    for key in keys:
        node: Any = params
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, Mapping) or part not in node:
                raise ParamsError(f"{source}: missing parameter {'.'.join(parts[: depth + 1])!r} (declared as {key!r})")
            node = node[part]
        target = selected
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = copy.deepcopy(node)
    return selected


def get(params: Mapping[str, Any], key: str) -> Any:
    """``params["a"]["b"]`` for ``key="a.b"``, with an error that names the dotted key."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ParamsError(f"parameter {key!r} is not among this stage's declared params")
        node = node[part]
    return node


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a.b": 1, "a.c": [..]}``: the form MLflow params take."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def digest(params: Mapping[str, Any]) -> str:
    """Stable sha256 of a params mapping (key order does not matter)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode("utf-8")).hexdigest()


# ------------------------------------------------------------------ detector settings

# DetectorConfig sections that do not fix any weight shape: a stage may set them on a
# model loaded from a checkpoint. The architecture (backbone, classes, anchors,
# rpn.mid_channels) comes from the checkpoint and is fixed by init_weights.
SETTING_SECTIONS = ("rpn", "train_proposals", "cache_proposals", "test_proposals", "roi", "test")


def input_size(params: Mapping[str, Any]) -> dict[str, int]:
    """``{"min_size", "max_size"}`` from ``data.input``."""
    size = get(params, "data.input")
    return {"min_size": int(size["min_size"]), "max_size": int(size["max_size"])}


def with_settings(cfg: DetectorConfig, params: Mapping[str, Any]) -> DetectorConfig:
    """``cfg`` with the non-architecture sections present in ``params`` replaced.

    Only sections the stage declared are touched (``select`` removed the rest), so the
    other values stay as the checkpoint recorded them. ``model.rpn.mid_channels``
    shapes the RPN head and must agree with the checkpoint.
    """
    model = params.get("model", {})
    data = cfg.to_dict()
    for section in SETTING_SECTIONS:
        if section not in model:
            continue
        values = dict(model[section])
        if section == "rpn" and "mid_channels" in values and values["mid_channels"] != data["rpn"]["mid_channels"]:
            raise ParamsError(
                f"model.rpn.mid_channels is {values['mid_channels']} in params but "
                f"{data['rpn']['mid_channels']} in the checkpoint: re-run init_weights"
            )
        merged = dict(data[section])
        merged.update(values)
        data[section] = merged
    if "data" in params and "input" in params["data"]:
        data.update(input_size(params))
    return DetectorConfig.from_dict(data)


#: Run ``k`` of a seed study (``pipeline.seed = k``) draws every training seed and the
#: initial layers from ``seed + SEED_STRIDE * k``; ``k = 0`` is the profile's own seeds.
SEED_STRIDE = 1000


def run_seed(params: Mapping[str, Any], base: int) -> int:
    """``base`` (a step's ``seed``, ``pipeline.init_seed``) shifted for this run of a seed study."""
    return int(base) + SEED_STRIDE * int(get(params, "pipeline.seed"))


def training_schedule(params: Mapping[str, Any], key: str) -> Any:
    """``train.<...>`` at ``key`` as a checked ``TrainSchedule``, its seed shifted by ``run_seed``."""
    import dataclasses

    from model.training import TrainSchedule

    schedule = dataclass_from(TrainSchedule, dict(get(params, key)), key)
    return dataclasses.replace(schedule, seed=run_seed(params, schedule.seed))


def dataclass_from(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``values`` (lists made tuples), checked by the one
    settings validator (``tasks.settings``: unknown keys, types, ranges) first."""
    from tasks.settings import check_dataclass

    check_dataclass(cls, values, where)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
