"""How stage flows decide on Prefect orchestration, and what params a stage flow sees."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows import runtime
from flows.stage import RUNTIME_PARAMS, STAGE_PARAMS, stage_settings
from tasks.params import ParamsError
from tasks.settings import selection

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
    settings = stage_settings("step3_rpn")
    params = selection(settings)
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
    # Decoded once, typed: the task reads attributes; an undeclared one is refused by name.
    assert settings.train.step3_rpn.iterations == full["train"]["step3_rpn"]["iterations"]
    assert settings.train.step3_rpn.lr_steps == tuple(full["train"]["step3_rpn"]["lr_steps"])
    assert settings.pipeline.seed == full["pipeline"]["seed"]
    with pytest.raises(ParamsError, match="'pipeline.init_seed' is not among this stage's declared params"):
        settings.pipeline.init_seed
    assert "tracking.experiment" not in STAGE_PARAMS["step3_rpn"]


def test_data_parallel_settings_are_typed_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A training stage reads ``pipeline.nproc_per_node`` / ``lr_scaling`` as typed settings;
    a stage that does not declare them runs as one process."""
    from flows.stage import data_parallel_processes
    from model.training import TrainSchedule
    from tasks.settings import decode
    from tasks.world import data_parallel

    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert data_parallel_processes(stage_settings("ss_proposals")) == 1
    assert stage_settings("ss_proposals").pipeline.ss_workers == 0  # runtime: read, not a DVC param
    declared = ["pipeline.nproc_per_node", "pipeline.lr_scaling"]
    two = decode({"pipeline": {"nproc_per_node": 2, "lr_scaling": "linear"}}, declared)
    assert data_parallel_processes(two) == 2
    # One process started for a 2-process setting: refused by name, not trained at the wrong lr.
    with pytest.raises(ParamsError, match="pipeline.nproc_per_node = 2 but this stage runs with 1"):
        data_parallel(TrainSchedule(iterations=1, base_lr=0.01), two)
    one = decode({"pipeline": {"nproc_per_node": 1, "lr_scaling": "linear"}}, declared)
    assert data_parallel(TrainSchedule(iterations=1, base_lr=0.01), one).base_lr == pytest.approx(0.01)
