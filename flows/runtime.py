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
functions, so the same flow code serves both.
"""
from __future__ import annotations

import os
from collections.abc import Callable
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


def api_configured() -> bool:
    """Whether Prefect has an API to report to (env var or active profile)."""
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def prefect_enabled() -> bool:
    chosen = mode()
    if chosen == "auto":
        return api_configured()
    return chosen == "on"


def in_flow_run() -> bool:
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
