"""Fan-out: the pipeline flow (``pipeline_flow(fan_out=True)``) hands stages to workers.

Every stage outside ``LOCAL_STAGES`` (the ablations' extra models, selective search, the
score and joint stages, the ablation rows, recall, timing) becomes a flow run of the
per-stage deployment (``faster-rcnn-stage/stage-<pool>``, ``flows.stage_worker``) as soon as
the stages it reads from are recorded in dvc.lock, so several workers on several
machines share one pipeline execution. The parent passes its state (git commit,
params.yaml, dvc.lock), the worker runs the stage in its own clone and pushes the outputs
to the DVC remote, and the parent restores them from there and commits them
(``flows.dvc_ops``). The local stages run in the parent in the meantime.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from uuid import UUID

from flows.dvc_ops import FanOutError, commit_stage, git, require_remote, restore_from_remote, should_run
from flows.stage import execute_stage
from flows.stage_worker import STAGE_FLOW, checkout_id, stage_run_parameters

from tasks.stages import ALTERNATING_STAGES, STAGES, producers, upstream

#: The per-stage deployment the CPU pipeline deployment fans out to (prefect.yaml).
STAGE_DEPLOYMENT = f"{STAGE_FLOW}/stage-cpu"
#: Stages that stay in the pipeline's own process: the four steps' chain (each reads the
#: one before it: nothing to share out) and the two stages that read every other stage's
#: metrics (the report; the summary, which also ends the MLflow parent run).
LOCAL_STAGES: tuple[str, ...] = (*ALTERNATING_STAGES, "ablation_report", "summary")
#: How often the parent asks the API about the flow runs it started (seconds).
POLL_SECONDS = 1.0


def fanned_out(stage: str) -> bool:
    return stage not in LOCAL_STAGES



def committed_head(root: Path) -> str:
    """``root``'s git commit, refused while tracked files other than params.yaml, dvc.lock
    and stage outputs differ from it: a worker checks out the commit, so its code would
    not be this code (and its run would match no run-cache entry here)."""
    head = git(root, "rev-parse", "HEAD").strip()
    allowed = {"params.yaml", "dvc.lock", *producers()}
    changed = [line[3:] for line in git(root, "status", "--porcelain", "--untracked-files=no").splitlines()]
    dirty = [path for path in changed if path not in allowed and not any(path.startswith(p + "/") for p in allowed)]
    if dirty:
        raise FanOutError(f"{root}: uncommitted changes to {dirty}: commit them (and push the commit where "
                          "the workers fetch from); fanned-out stages run the commit")
    return head


class FanOut:
    """The stages handed to workers and not yet brought back into ``root``."""

    def __init__(self, root: Path, deployment: str, pipeline_run_id: str, log: Any) -> None:
        self.root, self.deployment, self.pipeline_run_id, self.log = root, deployment, pipeline_run_id, log
        require_remote(root)
        self.commit = committed_head(root)
        self.running: dict[str, UUID] = {}

    def submit(self, stage: str) -> None:
        """Start ``stage``'s flow run on the pool with the parent's state as it is now."""
        from prefect.deployments import run_deployment

        lock = self.root / "dvc.lock"
        parameters = stage_run_parameters(
            stage, self.commit, (self.root / "params.yaml").read_text(encoding="utf-8"),
            lock.read_text(encoding="utf-8") if lock.exists() else "", self.pipeline_run_id, checkout_id(self.root),
        )
        flow_run = run_deployment(name=self.deployment, parameters=parameters, timeout=0)
        self.running[stage] = flow_run.id
        self.log.info("stage %s handed to %s: flow run %s", stage, self.deployment, flow_run.name)

    def wait_one(self) -> str:
        """Wait until one handed-out stage's flow run ends; bring its outputs here and
        commit it. A failed run is an error naming the stage and the run."""
        from prefect.client.orchestration import get_client

        next_note = time.monotonic() + 60
        with get_client(sync_client=True) as client:
            while True:
                for stage, run_id in self.running.items():
                    flow_run = client.read_flow_run(run_id)
                    if flow_run.state is None or not flow_run.state.is_final():
                        continue
                    del self.running[stage]
                    if not flow_run.state.is_completed():
                        raise FanOutError(f"stage {stage}: flow run {flow_run.name} ({run_id}) ended "
                                          f"{flow_run.state.type.value}: {flow_run.state.message}")
                    restore_from_remote(self.root, stage)
                    self.log.info("stage %s: outputs restored from the DVC remote, dvc.lock updated", stage)
                    return stage
                if time.monotonic() > next_note:
                    next_note = time.monotonic() + 60
                    self.log.info("waiting for %s on %s (is a worker running on its pool?)", sorted(self.running),
                                  self.deployment)
                time.sleep(POLL_SECONDS)


def run_fanned_out(root: Path, wanted: list[str], force: bool, deployment: str, pipeline_run_id: str,
                   log: Any) -> tuple[list[str], list[str]]:
    """Bring ``wanted`` up to date, the stages outside ``LOCAL_STAGES`` on workers.

    A stage is taken once every wanted stage it reads from is up to date here (checked
    with ``dvc status`` then, like ``dvc repro``). Ready fanned-out stages are handed out
    first, so the workers start while the parent runs its own stages."""
    fan = FanOut(root, deployment, pipeline_run_id, log)
    remaining = [stage for stage in STAGES if stage in wanted]
    ran: list[str] = []
    skipped: list[str] = []
    while remaining or fan.running:
        ready = [s for s in remaining if not any(u in remaining or u in fan.running for u in upstream(s))]
        if not ready:
            fan.wait_one()
            continue
        stage = next((s for s in ready if fanned_out(s)), ready[0])
        remaining.remove(stage)
        if not should_run(root, stage, force, log):
            skipped.append(stage)
            continue
        ran.append(stage)
        if fanned_out(stage):
            fan.submit(stage)
        else:
            execute_stage(root, stage)
            commit_stage(root, stage)
    return ran, skipped
