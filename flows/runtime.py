"""Running stage work with or without Prefect orchestration.

Every stage is a Prefect task wrapped in a Prefect flow. ``FRCNN_PREFECT=off`` runs the
same functions as plain Python (no API, no temporary server): useful where Prefect
cannot start a server, and for timing the work alone. Otherwise (the default) the flow
reports to the configured Prefect API (``PREFECT_API_URL``), or, when none is set,
Prefect starts a temporary local server for the flow run (several seconds per run).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

MODE_ENV = "FRCNN_PREFECT"


def prefect_enabled() -> bool:
    return os.environ.get(MODE_ENV, "auto").strip().lower() not in ("off", "0", "false", "no")


def in_flow_run() -> bool:
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


def call(task: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a Prefect task: as a task run inside a flow run, as its plain function otherwise."""
    if in_flow_run():
        return task(*args, **kwargs)
    return task.fn(*args, **kwargs)


def run_flow(flow: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a flow orchestrated by Prefect, or its plain function when ``FRCNN_PREFECT=off``."""
    function: Callable[..., Any] = flow if prefect_enabled() else flow.fn
    return function(*args, **kwargs)
