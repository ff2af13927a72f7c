"""Stage start-up without prefect: deferred Prefect tasks and flows, the cheap "no API" check."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows import runtime
from tasks import lazy_prefect

ROOT = Path(__file__).resolve().parents[1]


def _double(x: int) -> int:
    return 2 * x


def test_deferred_task_is_one_uncached_prefect_task_built_on_use() -> None:
    from prefect import Task
    from prefect.cache_policies import NO_CACHE

    deferred = lazy_prefect.task(name="double")(_double)
    assert deferred.fn is _double and deferred.name == "double" and deferred.__doc__ == _double.__doc__
    assert deferred.fn(21) == 42
    built = deferred.prefect
    assert isinstance(built, Task) and built.name == "double" and built.fn is _double
    assert built.cache_policy is NO_CACHE
    assert deferred.prefect is built  # one Prefect object per task, whatever runs it
    assert deferred.submit.__self__ is built  # Prefect's own API reaches the built task


def test_deferred_flow_keeps_the_prefect_options() -> None:
    from prefect import Flow

    deferred = lazy_prefect.flow(name="row", flow_run_name="row@{x}")(_double)
    assert deferred.name == "row" and deferred.fn(2) == 4
    assert isinstance(deferred.prefect, Flow)
    assert deferred.prefect.name == "row" and deferred.prefect.flow_run_name == "row@{x}"


def test_plain_stage_start_imports_no_prefect_nor_mlflow(tmp_path: Path) -> None:
    """A stage process without a Prefect API: the runner, every stage's task module and a
    plain task call, and neither prefect nor mlflow was imported (about 2 s + 1 s each)."""
    script = (
        "import importlib, sys\n"
        "import flows.stage\n"
        "from flows import runtime\n"
        "from tasks.lazy_prefect import Deferred, task\n"
        "from tasks.stages import STAGES, stage_spec\n"
        "for name in STAGES:\n"
        "    module, function = stage_spec(name).task.split(':')\n"
        "    assert isinstance(getattr(importlib.import_module(module), function), Deferred), name\n"
        "    assert isinstance(flows.stage.stage_call(name)[0], Deferred), name\n"
        "assert not runtime.prefect_enabled()\n"
        "assert runtime.run_flow(flows.stage.flow(name='f')(lambda: runtime.call(task(name='t')(len), 'abc'))) == 3\n"
        "print(sorted(m for m in ('prefect', 'mlflow') if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(ROOT), FRCNN_PREFECT="auto")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.fixture
def no_prefect_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for key in list(os.environ):
        if key.startswith("PREFECT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    return work


def test_no_api_anywhere_reads_the_places_prefect_reads(no_prefect_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    work = no_prefect_env
    assert runtime.no_api_anywhere(work)  # no profiles file: Prefect's default profile, no API
    (work / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert runtime.no_api_anywhere(work)
    profiles = tmp_path / "home" / "profiles.toml"
    profiles.parent.mkdir()
    profiles.write_text('active = "ephemeral"\n[profiles.ephemeral]\nPREFECT_SERVER_EPHEMERAL_ENABLED = "true"\n'
                        '[profiles.local]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n')
    assert runtime.no_api_anywhere(work)
    profiles.write_text(profiles.read_text().replace('active = "ephemeral"', 'active = "local"'))
    assert not runtime.no_api_anywhere(work)
    profiles.write_text('active = "mine"\n')  # a profile the file does not define: ask Prefect
    assert not runtime.no_api_anywhere(work)
    profiles.unlink()
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert not runtime.no_api_anywhere(work)
    monkeypatch.delenv("PREFECT_API_URL")
    for name, text in ((".env", "PREFECT_API_URL=x\n"), ("prefect.toml", "[api]\nurl = 'x'\n")):
        (work / name).write_text(text)
        assert not runtime.no_api_anywhere(work)
        (work / name).unlink()
    (work / "pyproject.toml").write_text("[tool.prefect.api]\nurl = 'x'\n")
    assert not runtime.no_api_anywhere(work)
