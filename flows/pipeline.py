"""The whole pipeline as one Prefect flow, for a deployment (``prefect.yaml``).

It does what ``dvc repro`` does, in one process, with every stage as a Prefect subflow:
for each stage in dvc.yaml's order it asks DVC whether the stage is out of date
(``dvc status <stage>``: changed code, params, inputs or missing outputs); if so it
runs the stage's flow (the same function the stage's ``cmd`` runs) and then records the
result in dvc.lock with ``dvc commit <stage>`` (hashes of the deps it ran with and the
outs it wrote, outs saved to the DVC cache). Stages are checked one at a time after
their upstream stages were committed, so a change propagates exactly as under
``dvc repro``, and afterwards ``dvc status`` is clean: dvc.lock is true.

Why not run ``dvc repro`` in a subprocess: then every stage would be a separate process
and a separate, unrelated flow run; here the deployment's run shows the stages as its
subflows, with their task runs, and pays the imports once.
A training stage with ``pipeline.nproc_per_node`` > 1 is the exception: it runs as its own
command (``python -m flows.stage <stage>``, which starts its processes under torchrun).

The ablation rows (``ablation@<row>``) are independent evaluations of models trained by
earlier stages. With ``FRCNN_ABLATION_WORKERS`` > 1 the flow runs the stale ones as
concurrent task runs (a thread-pool task runner) once the stages before them are done,
then commits each; with 1 (the default) they run one after another like every stage.

With ``fan_out`` the stages that can run apart (the ablations' extra models, selective
search, the rows, recall, timing...) run instead as flow runs of the per-stage deployment
on the pool's workers, each in its own clone, their outputs brought back through the DVC
remote (``flows.fanout``, ``flows.stage_worker``); the rest runs here meanwhile.

``overrides`` (Hydra, like ``dvc exp run -S``) re-compose params.yaml from conf/ first,
e.g. ``["data=bccd", "train=cpu"]``. ``FRCNN_PIPELINE_RUN_ID`` is set to the flow run's
id so that every stage's MLflow run carries it as ``pipeline_run_id``. At the end the
headline numbers and the ablation report become artifacts of the flow run
(``flows.artifacts``), shown on its page in the Prefect UI.
"""
from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flows  # noqa: F401  (Prefect defaults before prefect is imported)
from flows.artifacts import publish_results
from flows.dvc_ops import FanOutError, commit_stage, should_run, stale_stages
from flows.fanout import STAGE_DEPLOYMENT, run_fanned_out
from flows.runtime import call, in_flow_run, run_flow
from flows.stage import configure_threads, execute_stage, stage_settings
from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from tasks import ablations
from tasks.layout import workspace
from tasks.stages import STAGES, row_key
from tasks.tracking import PIPELINE_RUN_ENV

WORKERS_ENV = "FRCNN_ABLATION_WORKERS"


def ablation_workers() -> int:
    """How many ablation rows the flow evaluates at once (``FRCNN_ABLATION_WORKERS``, default 1).

    The rows are independent tests of trained models; on a GPU worker several fit at
    once. On two CPU cores one at a time is fastest (they would share the cores).
    """
    value = os.environ.get(WORKERS_ENV, "1").strip() or "1"
    workers = int(value)
    if workers < 1:
        raise ValueError(f"{WORKERS_ENV}={value!r}: expected a positive integer")
    return workers


def compose_params(root: Path, overrides: Sequence[str]) -> None:
    """Write params.yaml from conf/ with Hydra ``overrides`` (what ``dvc exp run -S`` does)."""
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(root / "params.yaml", str(root / "conf"), None, "config", str(root), list(overrides))


def _logger() -> Any:
    try:
        return get_run_logger()
    except Exception:  # plain function run, no Prefect context
        import logging

        return logging.getLogger("flows.pipeline")


def run_rows_concurrently(root: Path, rows: list[str], log: Any) -> None:
    """Evaluate the stale ablation rows as concurrent Prefect task runs, then commit each."""
    futures = {}
    for stage in rows:
        futures[stage] = ablations.ablation_row_task.submit(row_key(stage), stage_settings(stage))
    log.info("evaluating %d ablation rows, %d at a time", len(rows), ablation_workers())
    for stage, future in futures.items():
        future.result()
        commit_stage(root, stage)


def run_in_process(root: Path, wanted: list[str], force: bool, log: Any) -> tuple[list[str], list[str]]:
    """Bring ``wanted`` up to date in this process, in dvc.yaml's order (rows concurrently
    with ``FRCNN_ABLATION_WORKERS`` > 1); returns the stages run and skipped."""
    ran, skipped = [], []
    concurrent_rows = in_flow_run() and ablation_workers() > 1
    pending_rows: list[str] = []
    for stage in STAGES:
        if stage not in wanted:
            continue
        if pending_rows and row_key(stage) is None:
            run_rows_concurrently(root, pending_rows, log)
            pending_rows = []
        if not should_run(root, stage, force, log):
            skipped.append(stage)
            continue
        ran.append(stage)
        if concurrent_rows and row_key(stage) is not None:
            pending_rows.append(stage)  # every row's inputs are ready: the model stages came first
            continue
        execute_stage(root, stage)
        commit_stage(root, stage)
    if pending_rows:
        run_rows_concurrently(root, pending_rows, log)
    return ran, skipped


@flow(name="faster-rcnn-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=ablation_workers()))
def pipeline_flow(
    repo: str | None = None,
    overrides: list[str] | None = None,
    force: bool = False,
    stages: list[str] | None = None,
    fan_out: bool = False,
    stage_deployment: str = STAGE_DEPLOYMENT,
) -> dict[str, Any]:
    """Bring every stage (or ``stages``) up to date; returns which ran and the final metrics.

    ``fan_out``: the stages outside ``flows.fanout.LOCAL_STAGES`` run as flow runs of
    ``stage_deployment`` on its pool's workers, their outputs brought back through the
    DVC remote (``flows.fanout``); needs a Prefect API, workers and a DVC remote.
    """
    root = Path(repo).resolve() if repo else workspace()
    os.chdir(root)
    log = _logger()
    if not os.environ.get(PIPELINE_RUN_ENV):
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        os.environ[PIPELINE_RUN_ENV] = str(context.flow_run.id) if context else f"local-{uuid.uuid4().hex[:12]}"
    if fan_out and not in_flow_run():
        raise FanOutError("fan_out hands stages to Prefect workers: run the flow against a Prefect API "
                          "(PREFECT_API_URL, a server with workers on the stage deployment's pool)")
    if overrides:
        compose_params(root, overrides)
        log.info("params.yaml composed with %s", overrides)
    wanted = list(stages) if stages else list(STAGES)
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    if fan_out:
        ran, skipped = run_fanned_out(root, wanted, force, stage_deployment, os.environ[PIPELINE_RUN_ENV], log)
    else:
        ran, skipped = run_in_process(root, wanted, force, log)
    leftover: dict[str, Any] = {}
    for stage in wanted:
        leftover.update(stale_stages(root, stage))
    if leftover:
        raise RuntimeError(f"dvc status not clean after the pipeline ran: {leftover}")
    artifacts = call(publish_results, str(root)) if in_flow_run() else []
    return {"ran": ran, "skipped": skipped, "pipeline_run_id": os.environ[PIPELINE_RUN_ENV], "artifacts": artifacts}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=tiny train=tiny")
    parser.add_argument("--force", action="store_true", help="run every stage even if up to date")
    parser.add_argument("--fan-out", action="store_true",
                        help="hand the stages that can run apart to workers of the stage deployment (flows.fanout)")
    parser.add_argument("--stage-deployment", default=STAGE_DEPLOYMENT, help=f"default: {STAGE_DEPLOYMENT}")
    args = parser.parse_args(argv)
    configure_threads()
    result = run_flow(pipeline_flow, overrides=args.overrides or None, force=args.force, fan_out=args.fan_out,
                      stage_deployment=args.stage_deployment)
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
