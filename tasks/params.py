"""Reading params.yaml, restricted to the keys a stage declares.

DVC re-runs a stage when one of the ``params:`` keys it lists in dvc.yaml changes,
and only then. A stage that read a key it did not declare would silently keep a
stale output when that key changes. So a stage never sees the whole file: it gets
``select(params, keys)``, a copy holding only its declared keys (dotted paths, a key
naming a mapping brings its whole subtree), which ``tasks.settings.decode`` turns into
typed settings: reading anything else is a ``ParamsError``.
"""
from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

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
