"""Prefect tasks and flows that import prefect only when orchestrated.

Every stage is a Prefect task in a Prefect flow, but a stage started by DVC without a
Prefect API runs their plain functions (``flows.runtime``), and importing prefect costs
about 2 s per stage process. ``task`` and ``flow`` here wrap the function in a
``Deferred``: ``.fn`` is the plain function and ``.name`` the Prefect name, both free;
the Prefect task or flow is built on first orchestrated use (calling it, ``.submit``,
any other Prefect attribute) and then kept, so every orchestrated call in a process
goes to the same Prefect object, exactly what ``@prefect.task(...)`` would have made.

Every stage task is uncached (``NO_CACHE``): DVC decides what re-runs, not Prefect.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


class Deferred:
    """A Prefect task or flow (``kind``) over ``fn``, built when first used orchestrated."""

    def __init__(self, kind: str, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        self.kind = kind
        self.fn = fn
        self.name: str = options.get("name") or fn.__name__
        self._options = options
        self._built: Any = None
        functools.update_wrapper(self, fn)

    @property
    def prefect(self) -> Any:
        """The Prefect ``Task`` or ``Flow`` (imports prefect the first time)."""
        if self._built is None:
            import prefect

            if self.kind == "task":
                from prefect.cache_policies import NO_CACHE

                self._built = prefect.task(self.fn, cache_policy=NO_CACHE, **self._options)
            else:
                self._built = prefect.flow(self.fn, **self._options)
        return self._built

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.prefect(*args, **kwargs)

    def __getattr__(self, attribute: str) -> Any:
        # Only reached for what this class lacks (submit, map, with_options, ...).
        if attribute.startswith("__") or attribute in ("_built", "_options", "kind", "fn"):
            raise AttributeError(attribute)
        return getattr(self.prefect, attribute)

    def __repr__(self) -> str:
        return f"<deferred Prefect {self.kind} {self.name!r}>"


def task(*, name: str) -> Callable[[Callable[..., Any]], Deferred]:
    """``@task(name=...)``: an uncached Prefect task, prefect imported on first orchestrated use."""
    return lambda fn: Deferred("task", fn, {"name": name})


def flow(**options: Any) -> Callable[[Callable[..., Any]], Deferred]:
    """``@flow(name=..., flow_run_name=...)``: ``prefect.flow(**options)``, built on first use."""
    return lambda fn: Deferred("flow", fn, options)
