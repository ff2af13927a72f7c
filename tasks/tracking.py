"""MLflow helpers: one run per stage, tagged with the pipeline execution it belongs to.

Store: ``MLFLOW_TRACKING_URI`` when set (a tracking server, another database), else
``sqlite:///<repo>/mlflow.db`` with artifacts in ``<repo>/mlartifacts``. The path is
absolute and taken from ``DVC_ROOT`` when DVC sets it, so experiments that run in a
temporary copy (``dvc exp run --temp``, the queue) log into the repository's store.
MLflow 3 refuses the old ``./mlruns`` file store, hence SQLite.

Every run carries the tags ``pipeline_run_id`` (see ``pipeline_run_id``), ``stage``
and ``step`` (1-4 for the alternating steps), so the UI can filter one execution of
the pipeline (``tags.pipeline_run_id = '...'``) and compare steps across executions.

One execution is also one parent run (tag ``pipeline_parent = true``, named
``pipeline <id>``) with every stage's run nested under it (``mlflow.parentRunId``). Each
stage is its own process under ``dvc repro``, so there is no parent process to open it:
the first stage run of an execution creates it, later ones find it by its
``pipeline_run_id`` (``parent_run``). Each stage adds the params it read to it (the parent
holds the union, one value per key as params.yaml has one); the ``summary`` stage logs
the headline numbers, the report and the recall plot on it and ends it (``finish_parent_run``).

Also: the ``device`` tag is the device the stage resolved (``cpu``, ``cuda:0``) and
``device_name`` the GPU's name (``cpu`` on the CPU); the training stages log system
metrics (CPU, memory; GPU with ``nvidia-ml-py``); a run that reads a
split of the prepared dataset logs it as an MLflow dataset (``log_dataset_read``); the
final model is registered in the Model Registry (``register_detector``), and the joint
model beside it (``joint_model_name``).

``mlflow`` is imported lazily: importing this module stays cheap.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tasks import layout
from tasks.params import flatten

# MLflow 3 reports usage telemetry by default; these machines are offline and the
# pipeline should not phone home. An explicit setting wins.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

PIPELINE_RUN_ENV = "FRCNN_PIPELINE_RUN_ID"
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
# MLflow refuses longer param values.
_MAX_PARAM_CHARS = 6000
_BATCH = 200


def tracking_uri() -> str:
    explicit = os.environ.get("MLFLOW_TRACKING_URI")
    if explicit:
        return explicit
    return f"sqlite:///{layout.tracking_root() / DB_NAME}"


def default_artifact_location() -> str | None:
    """Artifacts beside the default SQLite store; None (MLflow's choice) for an explicit store.

    Call before ``mlflow.set_tracking_uri``, which itself sets ``MLFLOW_TRACKING_URI``.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (layout.tracking_root() / ARTIFACTS_DIR).as_uri()


def git_commit(root: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root or layout.workspace(), capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def pipeline_run_id() -> str:
    """The id shared by the runs of one pipeline execution.

    1. ``FRCNN_PIPELINE_RUN_ID`` (the whole-pipeline Prefect flow sets it to its flow run id);
    2. under ``dvc exp run``: ``exp-<experiment name>`` (DVC sets ``DVC_EXP_NAME`` for every
       stage of one experiment);
    3. otherwise (``dvc repro``, a stage run by hand): ``repro-`` + a digest of the git
       commit and the bytes of params.yaml and dvc.yaml. Every stage of one ``dvc repro``
       sees the same inputs and so the same id; a later repro after any parameter or
       pipeline change gets a new one. (A forced re-run with identical inputs joins the
       earlier id: same inputs, same pipeline state.)
    """
    explicit = os.environ.get(PIPELINE_RUN_ENV)
    if explicit:
        return explicit
    exp_name = os.environ.get("DVC_EXP_NAME")
    if exp_name:
        return f"exp-{exp_name}"
    hasher = hashlib.sha256()
    hasher.update((git_commit() or "no-commit").encode("utf-8"))
    for name in ("params.yaml", "dvc.yaml"):
        path = Path(name)
        hasher.update(path.read_bytes() if path.is_file() else b"")
    return f"repro-{hasher.hexdigest()[:12]}"


def _experiment_id(mlflow: Any, name: str, location: str | None) -> str:
    """Id of experiment ``name``, created with artifacts at ``location`` if it does not exist."""
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


#: Tag that marks the parent run of a pipeline execution.
PARENT_TAG = "pipeline_parent"
# One parent per execution also when stages of one process start runs from several threads.
_parent_lock = threading.Lock()


def parent_run(mlflow: Any, experiment_id: str, run_id: str | None = None) -> str:
    """The id of the parent run of execution ``run_id`` (default ``pipeline_run_id()``), created if absent."""
    run_id = run_id or pipeline_run_id()
    client = mlflow.MlflowClient()
    query = f"tags.pipeline_run_id = '{run_id}' and tags.{PARENT_TAG} = 'true'"
    with _parent_lock:
        found = client.search_runs([experiment_id], filter_string=query, max_results=1,
                                   order_by=["attributes.start_time ASC"])
        if found:
            return found[0].info.run_id
        tags = {"pipeline_run_id": run_id, PARENT_TAG: "true", "git_commit": git_commit() or "",
                "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "")}
        return client.create_run(experiment_id, tags=tags, run_name=f"pipeline {run_id}").info.run_id


def _add_params(client: Any, run_id: str, params: Mapping[str, Any]) -> None:
    """Log the keys of ``params`` (flattened) that run ``run_id`` does not have yet."""
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params
    fresh = [Param(k, _param_value(v)) for k, v in flatten(params).items() if k not in existing]
    for start in range(0, len(fresh), 90):
        client.log_batch(run_id, params=fresh[start : start + 90])


def finish_parent_run(experiment: str, metrics: Mapping[str, Any], artifacts: list[Path]) -> str:
    """Log ``metrics`` and ``artifacts`` on this execution's parent run and mark it FINISHED; returns its id."""
    import mlflow
    from mlflow.entities import Metric

    location = default_artifact_location()
    mlflow.set_tracking_uri(tracking_uri())
    client = mlflow.MlflowClient()
    run_id = parent_run(mlflow, _experiment_id(mlflow, experiment, location))
    timestamp = int(time.time() * 1000)
    flat = _flatten_metrics(metrics)
    client.log_batch(run_id, metrics=[Metric(k, v, timestamp, 0) for k, v in flat.items()])
    for path in artifacts:
        client.log_artifact(run_id, str(path), artifact_path=Path(path).parent.name)
    client.set_terminated(run_id, status="FINISHED")
    return run_id


class StageRun:
    """The MLflow run of one stage (a thin layer over ``mlflow``'s fluent API)."""

    def __init__(self, mlflow: Any, run: Any) -> None:
        self._mlflow = mlflow
        self.run = run
        self.run_id: str = run.info.run_id
        self._pending: list[Any] = []

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = {k: _param_value(v) for k, v in flatten(params).items()}
        existing = self._mlflow.MlflowClient().get_run(self.run_id).data.params
        # A resumed run already has its params; MLflow refuses to change a logged value.
        fresh = {k: v for k, v in flat.items() if k not in existing}
        items = list(fresh.items())
        for start in range(0, len(items), 90):
            self._mlflow.log_params(dict(items[start : start + 90]))

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, prefix: str = "") -> None:
        """Log every finite number of a (nested) mapping, keys joined with ``/``."""
        flat = {}
        for key, value in _flatten_metrics(metrics, prefix).items():
            flat[key] = value
        if flat:
            self._mlflow.log_metrics(flat, step=step)

    def log_loss(self, iteration: int, losses: Mapping[str, float]) -> None:
        """Buffer one iteration's losses (``on_log`` callback of model.training); sent in batches."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        for key, value in losses.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._pending.append(Metric(f"train/{key}", float(value), timestamp, int(iteration)))
        if len(self._pending) >= _BATCH:
            self.flush()

    def backfill_losses(self, history: list[Mapping[str, float]]) -> int:
        """Log ``history[i]`` as iteration ``i + 1`` where the run lacks it; returns how many were sent."""
        client = self._mlflow.MlflowClient()
        logged = {m.step for m in client.get_metric_history(self.run_id, "train/total")}
        missing = [(i + 1, losses) for i, losses in enumerate(history) if i + 1 not in logged]
        for iteration, losses in missing:
            self.log_loss(iteration, losses)
        self.flush()
        return len(missing)

    def flush(self) -> None:
        if self._pending:
            client = self._mlflow.MlflowClient()
            for start in range(0, len(self._pending), 1000):
                client.log_batch(self.run_id, metrics=self._pending[start : start + 1000])
            self._pending = []

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        if Path(path).is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_stage_outputs(self, stage: str, metrics: Mapping[str, Any], plot: str | None = None) -> None:
        """What every stage's run records at its end: ``metrics`` as values, the stage's metrics
        file (``layout.metrics(stage)``) and, when given, its plot ``layout.plot(stage, plot)``."""
        self.log_metrics(metrics)
        self.log_artifact(layout.metrics(stage), "metrics")
        if plot is not None:
            self.log_artifact(layout.plot(stage, plot), "plots")

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def register_detector(self, checkpoint: Path | str, registered_name: str, metrics: Mapping[str, Any]) -> str:
        """Log ``checkpoint`` as a code-defined pyfunc model and register it; returns the version.

        No pickle anywhere: the weights are the checkpoint file itself (plain tensors and
        types, read with ``torch.load(weights_only=True)``), the model class is the source
        file ``tasks/registered_detector.py`` (MLflow's "models from code") and ``model/``
        ships as code. One version per pipeline execution: a version tagged with this
        execution's ``pipeline_run_id`` is returned instead of registering another.
        ``metrics`` go on the logged model, and the top-level numbers on the version's tags.
        """
        import mlflow.pyfunc
        import torch
        import torchvision

        run_id = pipeline_run_id()
        client = self._mlflow.MlflowClient()
        existing = client.search_model_versions(
            f"name = '{registered_name}' and tags.pipeline_run_id = '{run_id}'"
        )
        if existing:
            return str(existing[0].version)
        info = mlflow.pyfunc.log_model(
            name="detector",
            python_model=str(layout.code_root() / "tasks" / "registered_detector.py"),
            artifacts={"checkpoint": str(checkpoint)},
            code_paths=[str(layout.code_root() / "model")],
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"torchvision=={torchvision.__version__.split('+')[0]}",
                "numpy",
                "pillow",
                "opencv-contrib-python-headless",
                "tqdm",
            ],
        )
        flat = _flatten_metrics(metrics)
        if flat:
            self._mlflow.log_metrics(flat, model_id=info.model_id)
        version = self._mlflow.register_model(info.model_uri, registered_name)
        tags = {"pipeline_run_id": run_id, "checkpoint_file": Path(checkpoint).name, "run_id": self.run_id}
        # The headline numbers where the registry lists versions; the rest on the model.
        tags.update({k: f"{v:.6g}" for k, v in flat.items() if "/" not in k})
        for key, value in tags.items():
            client.set_model_version_tag(registered_name, str(version.version), key, value)
        return str(version.version)


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."


def _flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(_flatten_metrics(value, name))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, (int, float)) and math.isfinite(float(value)):
            flat[_metric_key(name)] = float(value)
    return flat


def _metric_key(name: str) -> str:
    """MLflow keys allow alphanumerics and ``_ - . space : /``; anything else becomes ``_``."""
    return "".join(ch if ch.isalnum() or ch in "_-. :/" else "_" for ch in name)


def registered_model_name(experiment: str) -> str:
    """The Model Registry name of the pipeline's final model in ``experiment``."""
    return f"{experiment}-final"


def joint_model_name(experiment: str) -> str:
    """The Model Registry name of the approximate-joint-training model (``joint_evaluate``)."""
    return f"{experiment}-joint"


def device_tags() -> dict[str, str]:
    """``device`` (``cpu``, ``cuda:0``: what ``tasks.weights.device`` resolves) and ``device_name``."""
    import torch

    from tasks.weights import device

    resolved = device()
    if resolved.type != "cuda":
        return {"device": str(resolved), "device_name": resolved.type}
    index = resolved.index if resolved.index is not None else torch.cuda.current_device()
    return {"device": f"cuda:{index}", "device_name": torch.cuda.get_device_name(index)}


# Splits read while no run was active in this thread (a stage that loads its data before it
# opens its run); the next stage run of the thread logs them.
_unlogged_reads = threading.local()


def log_dataset_read(manifest: Mapping[str, Any], role: str, root: Path) -> None:
    """Log split ``role`` of the prepared dataset as an MLflow dataset input of the run reading it.

    Name ``<data name>/<split>``, digest the first 16 hex digits of the SHA-256 of the
    manifest's content (key-sorted compact JSON: the split's image ids and content digest,
    the classes, the root), source the dataset's folder ``root``; context ``role`` (train /
    test). With no active run in this thread the read is kept for the thread's next
    ``stage_run``.
    """
    read = (
        f"{manifest.get('name') or Path(root).name}/{manifest['splits'][role]['name']}",
        hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()[:16],
        Path(root).resolve().as_uri(),
        role,
    )
    import mlflow

    if mlflow.active_run() is None:
        pending = getattr(_unlogged_reads, "reads", [])
        if read not in pending:
            _unlogged_reads.reads = [*pending, read]
        return
    _log_input(mlflow, *read)


def _log_input(mlflow: Any, name: str, digest: str, source: str, role: str) -> None:
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        # A file:// URI matches MLflow's local-artifact source twice over; either is that class.
        warnings.simplefilter("ignore", UserWarning)
        dataset_source = resolve_dataset_source(source)
    mlflow.log_input(MetaDataset(dataset_source, name=name, digest=digest), context=role)


@contextlib.contextmanager
def stage_run(
    stage: str,
    experiment: str,
    settings: Any,
    step: int | None = None,
    resume_run_id: str | None = None,
    system_metrics: bool = False,
) -> Iterator[StageRun]:
    """Start (or resume) the MLflow run of ``stage``; ends it FINISHED, or FAILED on an exception.

    ``settings``: the stage's (``tasks.settings.Settings``, or a params mapping); the run
    logs the params they were decoded from.

    ``system_metrics`` (the training stages set it) samples CPU and memory use (GPU with
    ``nvidia-ml-py``) into the run while it is open.
    """
    import mlflow

    from tasks.settings import selection

    params = selection(settings)
    location = default_artifact_location()
    mlflow.set_tracking_uri(tracking_uri())
    experiment_id = _experiment_id(mlflow, experiment, location)
    tags = {
        "pipeline_run_id": pipeline_run_id(),
        "stage": stage,
        "dvc_stage": os.environ.get("DVC_STAGE", ""),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "git_commit": git_commit() or "",
        **device_tags(),
    }
    if step is not None:
        tags["step"] = str(step)
    parent = parent_run(mlflow, experiment_id, tags["pipeline_run_id"])
    tags["mlflow.parentRunId"] = parent
    flow_run = _prefect_flow_run_id()
    if flow_run:
        tags["prefect_flow_run_id"] = flow_run
    run = None
    if resume_run_id:
        with contextlib.suppress(Exception):
            existing = mlflow.MlflowClient().get_run(resume_run_id)
            if existing.info.experiment_id == experiment_id:
                run = mlflow.start_run(run_id=resume_run_id, log_system_metrics=system_metrics)
    if run is None:
        run = mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=tags, log_system_metrics=system_metrics)
    else:
        mlflow.set_tags({**tags, "resumed": "true"})
    handle = StageRun(mlflow, run)
    status = "FAILED"
    try:
        for read in getattr(_unlogged_reads, "reads", []):
            _log_input(mlflow, *read)
        _unlogged_reads.reads = []
        handle.log_params(params)
        _add_params(mlflow.MlflowClient(), parent, params)
        yield handle
        handle.flush()
        status = "FINISHED"
    finally:
        with contextlib.suppress(Exception):
            handle.flush()
        mlflow.end_run(status=status)


def _prefect_flow_run_id() -> str | None:
    """The id of the Prefect flow run this stage runs in, if any."""
    if "prefect" not in sys.modules:  # never imported: no flow run (and none to import it for)
        return None
    try:
        from prefect.context import FlowRunContext
    except ImportError:
        return None
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    return str(context.flow_run.id)
