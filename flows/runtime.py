"""Running stage work with or without Prefect orchestration.

Every stage is a Prefect task wrapped in a Prefect flow. Whether a stage started by
DVC (``python -m flows.stage <stage>``) runs orchestrated is set by ``FRCNN_PREFECT``:

- ``auto`` (default): orchestrated when a Prefect API is configured (``PREFECT_API_URL``
  in the environment or the active Prefect profile: a ``prefect server start``, Prefect
  Cloud, or the worker running a deployment); otherwise the flow's plain function runs,
  same code, same files, no Prefect bookkeeping. Without an API Prefect would start a
  temporary server for every flow run, about 8-10 s each here, 10 times per ``dvc
  repro``; ``auto`` avoids that so ``dvc repro`` needs no server and stays fast.
- ``on``: always orchestrated; with no API configured Prefect starts its temporary
  server for each stage.
- ``off``: never orchestrated.

Inside a flow run, ``call`` runs tasks as Prefect task runs; outside one, as plain
functions, so the same flow code serves both. The plain path imports no prefect: the
tasks and stage flows are ``tasks.lazy_prefect`` wrappers, and ``auto`` reads the
settings files itself when nothing could name an API (``no_api_anywhere``).
"""
from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODE_ENV = "FRCNN_PREFECT"
MODES = ("auto", "on", "off")


def mode() -> str:
    value = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    aliases = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}
    value = aliases.get(value, value)
    if value not in MODES:
        raise ValueError(f"{MODE_ENV}={value!r}: expected one of {MODES}")
    return value


def no_api_anywhere(cwd: Path | None = None) -> bool:
    """True when no place Prefect reads settings from can name an API, read without
    importing prefect (about 2 s): no ``PREFECT_API*`` or ``PREFECT_PROFILE`` variable, no
    ``.env`` or ``prefect.toml`` and no ``[tool.prefect]`` in ``pyproject.toml`` in ``cwd``,
    and an active profile (``$PREFECT_HOME/profiles.toml``, or Prefect's default
    ``ephemeral``) without ``PREFECT_API_URL``. False means "maybe": ask Prefect.
    """
    if any(key.startswith("PREFECT_API") or key == "PREFECT_PROFILE" for key in os.environ):
        return False
    cwd = cwd or Path.cwd()
    if (cwd / ".env").exists() or (cwd / "prefect.toml").exists():
        return False
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file() and "tool.prefect" in pyproject.read_text(encoding="utf-8", errors="replace"):
        return False
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    profiles_path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    if not profiles_path.exists():
        return True  # Prefect's built-in profiles: the active one, ephemeral, has no API
    try:
        profiles = tomllib.loads(profiles_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    active = profiles.get("active", "ephemeral")
    profile = profiles.get("profiles", {}).get(active)
    if profile is None:
        return active == "ephemeral"
    return isinstance(profile, dict) and not any(str(key).startswith("PREFECT_API") for key in profile)


def api_configured() -> bool:
    """Whether Prefect has an API to report to (env var, settings file or active profile)."""
    if "prefect" not in sys.modules and no_api_anywhere():
        return False
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def prefect_enabled() -> bool:
    chosen = mode()
    if chosen == "auto":
        return api_configured()
    return chosen == "on"


def in_flow_run() -> bool:
    if "prefect" not in sys.modules:  # never imported: no flow run can be active
        return False
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


def call(task: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a Prefect task: as a task run inside a flow run, as its plain function otherwise."""
    if in_flow_run():
        return task(*args, **kwargs)
    return task.fn(*args, **kwargs)


def call_flow(flow: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a flow from another: a subflow inside a flow run, its plain function otherwise."""
    if in_flow_run():
        return flow(*args, **kwargs)
    return flow.fn(*args, **kwargs)


def run_flow(flow: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a flow orchestrated by Prefect, or its plain function (see the module docstring)."""
    if prefect_enabled():
        return flow(*args, **kwargs)
    print(f"[{MODE_ENV}={mode()}] no Prefect API configured: running flow {flow.name!r} without orchestration")
    function: Callable[..., Any] = flow.fn
    return function(*args, **kwargs)
