"""MLflow beyond plain runs, against a real SQLite store: device tags, system metrics, dataset
inputs, the Model Registry (code-defined model, one version per execution, ``models:/`` in
``python -m model.detect``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.checkpoint import save_checkpoint
from model.config import AnchorConfig, DetectorConfig
from model.faster_rcnn import FasterRCNN
from tasks import tracking

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("FRCNN_DEVICE", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv(tracking.PIPELINE_RUN_ENV, "pipeline-one")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # set by mlflow.set_tracking_uri


def _client(store: Path):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{store.resolve()}/mlflow.db")


def test_device_tag_is_the_resolved_device(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRCNN_DEVICE", "auto")
    with tracking.stage_run("evaluate", "unit-exp", {}) as run:
        pass
    tags = _client(store).get_run(run.run_id).data.tags
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert tags["device"] == expected and tags["device"] != "auto"
    assert tags["device_name"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")


def test_training_steps_log_system_metrics(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    with tracking.stage_run("step1_rpn", "unit-exp", {}, step=1, system_metrics=True) as training:
        time.sleep(2.5)
    with tracking.stage_run("step1_proposals", "unit-exp", {}, step=1) as other:  # not training
        time.sleep(1.5)
    client = _client(store)
    logged = client.get_run(training.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in logged and "system/system_memory_usage_megabytes" in logged
    assert not [k for k in client.get_run(other.run_id).data.metrics if k.startswith("system/")]


def test_runs_log_the_dataset_splits_they_read(store: Path) -> None:
    manifest = {
        "version": 1, "name": "shapes", "root": str(store / "data"), "layout": "voc", "classes": ["a"],
        "splits": {"train": {"name": "trainval", "image_ids": ["1"]}, "test": {"name": "test", "image_ids": ["2"]}},
    }
    # Read before the run opens (as a training stage does): logged when it opens.
    tracking.log_dataset_read(manifest, "train", store / "data")
    with tracking.stage_run("step2_fast_rcnn", "unit-exp", {}) as run:
        tracking.log_dataset_read(manifest, "test", store / "data")
    with tracking.stage_run("assemble", "unit-exp", {}) as later:
        pass
    client = _client(store)
    inputs = client.get_run(run.run_id).inputs.dataset_inputs
    got = {(i.dataset.name, [t.value for t in i.tags if t.key == "mlflow.data.context"][0]) for i in inputs}
    assert got == {("shapes/trainval", "train"), ("shapes/test", "test")}
    digests = {i.dataset.digest for i in inputs}
    assert len(digests) == 1 and len(digests.pop()) == 16
    assert {i.dataset.source for i in inputs} == {json.dumps({"uri": (store / "data").resolve().as_uri()})}
    assert client.get_run(later.run_id).inputs.dataset_inputs == []  # the pending read went to one run
    manifest["splits"]["test"]["image_ids"] = ["3"]  # other content, other digest
    with tracking.stage_run("evaluate", "unit-exp", {}) as changed:
        tracking.log_dataset_read(manifest, "test", store / "data")
    assert client.get_run(changed.run_id).inputs.dataset_inputs[0].dataset.digest not in digests | {None}


def test_final_model_registered_once_per_execution_and_loaded_by_uri(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    cfg = DetectorConfig(class_names=("cat", "dog"), backbone="zf", pretrained=False, min_size=96, max_size=160,
                         anchors=AnchorConfig(scales=(2.0, 4.0, 8.0)))
    model = FasterRCNN(cfg, {"fc_width": 16})
    model.roi_head.cls_score.bias.data[2] = 6.0  # untrained: let "dog" win, so there is output
    checkpoint = save_checkpoint(store / "final.pt", model)
    name = tracking.registered_model_name("unit-exp")
    with tracking.stage_run("evaluate", "unit-exp", {}) as run:
        first = run.register_detector(checkpoint, name, {"mAP": 0.25, "ap": {"cat": 0.1, "dog": 0.4}})
        again = run.register_detector(checkpoint, name, {"mAP": 0.25})
    monkeypatch.setenv(tracking.PIPELINE_RUN_ENV, "pipeline-two")
    with tracking.stage_run("evaluate", "unit-exp", {}) as second_run:
        second = second_run.register_detector(checkpoint, name, {"mAP": 0.3})
    assert (first, again, second) == ("1", "1", "2")

    import mlflow

    client = _client(store)
    version = client.get_model_version(name, first)
    assert version.tags["pipeline_run_id"] == "pipeline-one" and version.tags["mAP"] == "0.25"
    assert "ap/cat" not in version.tags  # details stay on the logged model
    logged = mlflow.get_logged_model(version.source.rsplit("/", 1)[-1])
    assert {m.key: m.value for m in logged.metrics} == {"mAP": 0.25, "ap/cat": 0.1, "ap/dog": 0.4}
    files = {a.path for a in client.list_logged_model_artifacts(logged.model_id)}
    assert "registered_detector.py" in files and not [f for f in files if f.endswith(".pkl")]

    picture = store / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)).save(picture)

    def detect(source: str) -> list:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store.resolve()}/mlflow.db",
               "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-m", "model.detect", "--checkpoint", source, "--image", str(picture)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    by_uri = detect(f"models:/{name}/{first}")
    assert by_uri and by_uri == detect(str(checkpoint))
    missing = subprocess.run(
        [sys.executable, "-m", "model.detect", "--checkpoint", f"models:/{name}/9", "--image", str(picture)],
        cwd=REPO, env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store.resolve()}/mlflow.db", "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=300,
    )
    assert missing.returncode == 2 and f"models:/{name}/9" in missing.stderr
    # The same version through MLflow's own API: the code-defined pyfunc.
    loaded = mlflow.pyfunc.load_model(f"models:/{name}/{first}")
    assert loaded.predict([str(picture)], params={"score_threshold": 0.5})[0] == by_uri


def test_the_library_imports_no_mlflow() -> None:
    code = ("import sys, model.detect, model.registry_uri, model.export.graph, model.export.__main__; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'prefect', 'dvc')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
