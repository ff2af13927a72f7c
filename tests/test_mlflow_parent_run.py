"""One MLflow parent run per pipeline execution, every stage's run nested under it (real SQLite store)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks import tracking


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # mlflow.set_tracking_uri exports it


def _runs(experiment: str) -> list:
    import mlflow

    client = mlflow.MlflowClient()
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_stages_of_one_execution_nest_under_one_parent(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tracking.PIPELINE_RUN_ENV, "exec-1")
    with tracking.stage_run("step1_rpn", "nest", {"train": {"lr": 0.1}, "data": {"input": "x"}}, step=1):
        pass
    with tracking.stage_run("evaluate", "nest", {"evaluate": {"metric": "voc07"}, "data": {"input": "x"}}):
        pass
    monkeypatch.setenv(tracking.PIPELINE_RUN_ENV, "exec-2")  # another execution: another parent
    with tracking.stage_run("step1_rpn", "nest", {"train": {"lr": 0.2}}, step=1):
        pass
    runs = _runs("nest")
    parents = {r.data.tags["pipeline_run_id"]: r for r in runs if r.data.tags.get(tracking.PARENT_TAG) == "true"}
    assert sorted(parents) == ["exec-1", "exec-2"]
    children = [r for r in runs if r.info.run_id not in {p.info.run_id for p in parents.values()}]
    assert len(children) == 3
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[child.data.tags["pipeline_run_id"]].info.run_id
    # The parent holds the union of the params its stages read.
    assert parents["exec-1"].data.params == {"train.lr": "0.1", "data.input": "x", "evaluate.metric": "voc07"}
    assert parents["exec-1"].info.run_name == "pipeline exec-1" and parents["exec-1"].info.status == "RUNNING"


def test_finish_parent_run_logs_the_numbers_and_files_and_ends_it(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.setenv(tracking.PIPELINE_RUN_ENV, "exec-3")
    with tracking.stage_run("summary", "finish", {}):
        pass
    report = store / "reports" / "ablations.md"
    report.parent.mkdir()
    report.write_text("| row | mAP |\n")
    run_id = tracking.finish_parent_run("finish", {"mAP": 0.5, "signs_agree": 9}, [report])
    parent = mlflow.MlflowClient().get_run(run_id)
    assert parent.data.tags[tracking.PARENT_TAG] == "true" and parent.info.status == "FINISHED"
    assert parent.data.metrics == {"mAP": 0.5, "signs_agree": 9.0}
    assert [a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "reports")] == ["reports/ablations.md"]
    # The stage run that preceded it is its child; no second parent was made.
    [child] = [r for r in _runs("finish") if r.info.run_id != run_id]
    assert child.data.tags["mlflow.parentRunId"] == run_id
