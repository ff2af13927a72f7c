"""MLflow plumbing against a real SQLite store: stage runs, their tags, losses, resume, failure."""
from __future__ import annotations

from pathlib import Path

import pytest

from tasks import tracking


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow-repo")


@pytest.fixture()
def in_store(store: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(store))
    monkeypatch.setenv(tracking.PIPELINE_RUN_ENV, "pipeline-abc")
    monkeypatch.chdir(store)
    yield store
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; do not leak it into other tests.
    import os

    os.environ.pop("MLFLOW_TRACKING_URI", None)


def test_default_store_is_sqlite_at_the_dvc_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.default_artifact_location() == (tmp_path.resolve() / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"
    assert tracking.default_artifact_location() is None


def test_pipeline_run_id_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(tracking.PIPELINE_RUN_ENV, raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    (tmp_path / "params.yaml").write_text("a: 1\n")
    first = tracking.pipeline_run_id()
    assert first.startswith("repro-") and first == tracking.pipeline_run_id()
    (tmp_path / "params.yaml").write_text("a: 2\n")
    assert tracking.pipeline_run_id() != first
    monkeypatch.setenv("DVC_EXP_NAME", "sappy-bats")
    assert tracking.pipeline_run_id() == "exp-sappy-bats"
    monkeypatch.setenv(tracking.PIPELINE_RUN_ENV, "flow-run-1")
    assert tracking.pipeline_run_id() == "flow-run-1"


def test_stage_run_logs_params_losses_metrics_and_artifacts(in_store: Path) -> None:
    import mlflow

    artifact = in_store / "metrics.json"
    artifact.write_text('{"mAP": 0.5}\n')
    with tracking.stage_run("step1_rpn", "unit-exp", {"train": {"step1_rpn": {"iterations": 3}}}, step=1) as run:
        for i in range(1, 4):
            run.log_loss(i, {"rpn_cls": 1.0 / i, "total": 2.0 / i, "lr": 0.001})
        run.log_metrics({"recall": {"300": {"0.5": 0.9}}, "flag": True, "nan": float("nan")})
        run.log_artifact(artifact, "metrics")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{in_store.resolve()}/mlflow.db")
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.tags["pipeline_run_id"] == "pipeline-abc"
    assert got.data.tags["stage"] == "step1_rpn" and got.data.tags["step"] == "1"
    assert got.data.params["train.step1_rpn.iterations"] == "3"
    assert got.data.metrics["recall/300/0.5"] == pytest.approx(0.9)
    assert "flag" not in got.data.metrics and "nan" not in got.data.metrics
    history = client.get_metric_history(run.run_id, "train/total")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0), (3, pytest.approx(2.0 / 3))]
    assert [a.path for a in client.list_artifacts(run.run_id, "metrics")] == ["metrics/metrics.json"]
    experiment = client.get_experiment(got.info.experiment_id)
    assert experiment.artifact_location == (in_store.resolve() / "mlartifacts").as_uri()


def test_failed_stage_marks_run_failed_and_resume_reuses_the_run(in_store: Path) -> None:
    import mlflow

    with pytest.raises(RuntimeError, match="killed"):
        with tracking.stage_run("step3_rpn", "unit-exp", {"x": 1}, step=3) as run:
            run.log_loss(1, {"total": 1.0})
            run_id = run.run_id
            raise RuntimeError("killed")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{in_store.resolve()}/mlflow.db")
    assert client.get_run(run_id).info.status == "FAILED"
    # The buffered loss was still sent before the run ended.
    assert [m.step for m in client.get_metric_history(run_id, "train/total")] == [1]
    with tracking.stage_run("step3_rpn", "unit-exp", {"x": 1}, step=3, resume_run_id=run_id) as resumed:
        # Iterations 2 and 3 were trained before the kill but never sent: the checkpoint's
        # history fills them in; iteration 1, already logged, is not sent twice.
        sent = resumed.backfill_losses([{"total": 9.0}, {"total": 0.7}, {"total": 0.6}])
        resumed.log_loss(4, {"total": 0.5})
    assert sent == 2
    assert resumed.run_id == run_id
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED" and got.data.tags["resumed"] == "true"
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "train/total")]
    assert sorted(history) == [(1, 1.0), (2, 0.7), (3, 0.6), (4, 0.5)]
