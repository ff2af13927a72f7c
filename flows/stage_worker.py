"""One pipeline stage on a fan-out worker, in the worker's own clone: the flow of the
per-stage deployment ``faster-rcnn-stage/stage-<pool>`` (prefect.yaml).

A pipeline flow run with ``fan_out`` (``flows.fanout``) starts one flow run of this
deployment per stage it hands out; any worker on the pool picks it up. The flow run:

1. takes the clone's lock: the checkout is shared, so one stage at a time per clone
   (start the worker with ``--limit 1`` so that it does not take runs it would queue);
2. brings the clone to the parent's state: ``git checkout`` of the parent's commit
   (fetched from ``origin`` when absent), then the parent's params.yaml and dvc.lock
   written over the checked-out ones (the parent composes params and records stages as
   it goes: neither need be committed);
3. ``dvc pull``s the upstream outputs the stage reads (their hashes are in that dvc.lock);
4. runs the stage: ``flows.stage.execute_stage``, what ``python -m flows.stage <stage>`` runs;
5. ``dvc commit``s it and pushes its run-cache entry and outputs to the DVC remote, from
   which the parent takes them (``flows.dvc_ops``).

The deployment's pull step enters ``$FRCNN_STAGE_CLONE``: the clone of the worker that
picked the run up (each worker is started with it set to its own clone).
"""
from __future__ import annotations

import fcntl
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import flows  # noqa: F401  (Prefect defaults before prefect is imported)
from flows.dvc_ops import FanOutError, commit_stage, git, pull_inputs, push_outputs, require_remote
from flows.stage import configure_threads, execute_stage
from prefect import flow, get_run_logger

from tasks.stages import stage_spec
from tasks.tracking import PIPELINE_RUN_ENV

#: The per-stage flow's name: its deployments are ``faster-rcnn-stage/stage-<pool>`` (prefect.yaml).
STAGE_FLOW = "faster-rcnn-stage"
#: The worker's clone, entered by the deployment's pull step.
CLONE_ENV = "FRCNN_STAGE_CLONE"



def _has_commit(root: Path, commit: str) -> bool:
    probe = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=root, capture_output=True)
    return probe.returncode == 0


@contextmanager
def clone_lock(root: Path) -> Iterator[None]:
    """Hold ``root``'s stage lock (``.dvc/tmp/stage-worker.lock``) for one stage run."""
    path = root / ".dvc" / "tmp" / "stage-worker.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sync_clone(root: Path, commit: str, params: str, lock: str) -> None:
    """Check out ``commit`` in ``root`` (fetching ``origin`` if needed), then write the
    parent's params.yaml and dvc.lock (an empty ``lock``: no dvc.lock yet)."""
    if not _has_commit(root, commit):
        git(root, "fetch", "--quiet", "origin")
        if not _has_commit(root, commit):
            raise FanOutError(
                f"{root}: commit {commit} is neither here nor in its origin: push the pipeline's commit to "
                "the git remote the workers clone"
            )
    git(root, "checkout", "--quiet", "--force", "--detach", commit)
    (root / "params.yaml").write_text(params, encoding="utf-8")
    lock_path = root / "dvc.lock"
    if lock:
        lock_path.write_text(lock, encoding="utf-8")
    else:
        lock_path.unlink(missing_ok=True)


def checkout_id(root: Path) -> str:
    """``host:path`` of a checkout, to tell the parent's from a worker's clone."""
    return f"{socket.gethostname()}:{root.resolve()}"


def stage_run_parameters(stage: str, commit: str, params: str, lock: str, pipeline_run_id: str,
                         parent: str) -> dict[str, str]:
    """The parameters of one ``faster-rcnn-stage`` flow run (what the parent passes)."""
    return {"stage": stage, "commit": commit, "params": params, "lock": lock, "pipeline_run_id": pipeline_run_id,
            "parent": parent}


@flow(name=STAGE_FLOW, flow_run_name="{stage}")
def faster_rcnn_stage(
    stage: str, commit: str, params: str, lock: str = "", pipeline_run_id: str = "", parent: str = ""
) -> dict[str, Any]:
    """Run ``stage`` of the parent's state (``commit`` + ``params`` + ``lock``) here and push its outputs."""
    stage_spec(stage)  # an unknown name fails before the clone is touched
    root = Path.cwd()
    if parent == checkout_id(root):
        raise FanOutError(f"{root} is the pipeline's own checkout, not a worker's clone: start the worker with "
                          f"{CLONE_ENV} set to a clone of its own (it checks out commits there)")
    log = get_run_logger()
    configure_threads()
    with clone_lock(root):
        sync_clone(root, commit, params, lock)
        require_remote(root)
        if pipeline_run_id:
            os.environ[PIPELINE_RUN_ENV] = pipeline_run_id  # the stage's MLflow run joins the execution
        log.info("stage %s at %s in %s on %s", stage, commit[:12], root, socket.gethostname())
        pull_inputs(root, stage)
        execute_stage(root, stage)
        commit_stage(root, stage)
        push_outputs(root, stage)
    return {"stage": stage, "clone": str(root), "host": socket.gethostname(), "commit": commit}
