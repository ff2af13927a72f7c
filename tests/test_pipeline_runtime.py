"""How stage flows decide on Prefect orchestration, and what params a stage flow sees."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows import runtime
from flows.stage import RUNTIME_PARAMS, STAGE_PARAMS, stage_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "value,expected", [("", "auto"), ("auto", "auto"), ("ON", "on"), ("1", "on"), ("off", "off"), ("false", "off")]
)
def test_mode_parsing(monkeypatch: pytest.MonkeyPatch, value: str, expected: str) -> None:
    monkeypatch.setenv(runtime.MODE_ENV, value)
    assert runtime.mode() == expected


def test_unknown_mode_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runtime.MODE_ENV, "sometimes")
    with pytest.raises(ValueError, match="FRCNN_PREFECT='sometimes'"):
        runtime.mode()


def test_auto_orchestrates_only_with_a_configured_api(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv(runtime.MODE_ENV, "auto")
    with temporary_settings({PREFECT_API_URL: None}):
        assert not runtime.prefect_enabled()
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        assert runtime.prefect_enabled()
    monkeypatch.setenv(runtime.MODE_ENV, "off")
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        assert not runtime.prefect_enabled()
    monkeypatch.setenv(runtime.MODE_ENV, "on")
    with temporary_settings({PREFECT_API_URL: None}):
        assert runtime.prefect_enabled()


def test_plain_run_calls_the_functions_without_prefect(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import flow, task

    calls = []

    @task
    def work(x: int) -> int:
        calls.append(x)
        return x + 1

    @flow
    def pipeline(x: int) -> int:
        return runtime.call(work, x)

    monkeypatch.setenv(runtime.MODE_ENV, "off")
    assert runtime.run_flow(pipeline, 41) == 42
    assert calls == [41]


def test_stage_flow_sees_declared_params_and_tracking_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    params = stage_params("step3_rpn")
    assert set(params) == {"data", "model", "train", "pipeline", "tracking"}
    # The run's place in a seed study (not init_seed), its processes and lr rule, and the
    # runtime settings every stage reads.
    assert set(params["pipeline"]) == {"seed", "ss_workers", "nproc_per_node", "lr_scaling"}
    assert "pipeline.ss_workers" in RUNTIME_PARAMS and "pipeline.ss_workers" not in STAGE_PARAMS["ss_proposals"]
    assert set(params["model"]) == {"rpn"}
    assert set(params["train"]) == {"step3_rpn"}
    assert set(params["data"]) == {"input"}
    full = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["train"]["step3_rpn"] == full["train"]["step3_rpn"]
    assert params["tracking"]["experiment"] == full["tracking"]["experiment"]
    assert "tracking.experiment" not in STAGE_PARAMS["step3_rpn"]
