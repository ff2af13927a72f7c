"""A stage run by several processes (``pipeline.nproc_per_node``, ``torchrun``).

``flows.stage`` re-starts a training stage under ``torch.distributed.run`` when
``pipeline.nproc_per_node`` > 1 (``flows.stage.torchrun_command``); each process runs the
stage's task, which joins the group first (``join``: gloo on the CPU, NCCL on CUDA). The training loop shards the
images and averages the gradients (``model.distributed``); this module keeps the rest of
the stage to rank 0: only rank 0 opens the MLflow run (``training_run``) and writes the
checkpoint, metrics and plots (``is_main``). The learning rate follows the linear rule
(``pipeline.lr_scaling``: ``linear``, lr x N; ``none``: as configured), ``data_parallel``.

Inference stages (proposal caching, evaluation, scoring) run the same way: each process
proposes or detects on its share of the images (``model.inference``), every process gets
all of them back, and only rank 0 scores, writes and logs (``inference_run``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from typing import Any

from model.distributed import World, current_world, init_world, leave_world, scaled_learning_rate
from tasks.params import ParamsError
from tasks.settings import Settings
from tasks.stages import NPROC


@contextlib.contextmanager
def joined(settings: Settings) -> Iterator[World]:
    """Inside: this process in torchrun's group (rank 0 of 1 when not under torchrun),
    checked against ``pipeline.nproc_per_node``; the group is left on the way out."""
    from tasks.weights import device

    init_world(device().type)
    try:
        yield check_world(settings)
    finally:
        leave_world()


def check_world(settings: Settings) -> World:
    """This process's world, refused unless it has ``pipeline.nproc_per_node`` processes on
    this machine (``LOCAL_WORLD_SIZE``: torchrun's processes per node)."""
    world = current_world()
    wanted = settings.pipeline.nproc_per_node
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world.size)))
    if local != wanted:
        raise ParamsError(
            f"params.yaml: {NPROC} = {wanted} but this stage runs with {local} process(es) per machine; "
            f"start it with `python -m flows.stage <stage>` (it launches torchrun) or torchrun --nproc_per_node={wanted}"
        )
    return world


def data_parallel(schedule: Any, settings: Settings) -> Any:
    """``schedule`` (a ``TrainSchedule``) with the learning rate for this world's batch."""
    world = check_world(settings)
    scaled = scaled_learning_rate(schedule.base_lr, world.size, settings.pipeline.lr_scaling)
    return dataclasses.replace(schedule, base_lr=scaled)


def is_main() -> bool:
    return current_world().is_main


class QuietRun:
    """What ranks other than 0 log to: nothing (rank 0's run has the averaged losses)."""

    run_id = None

    def log_loss(self, iteration: int, losses: Mapping[str, float]) -> None:
        pass

    def backfill_losses(self, history: Any) -> int:
        return 0

    def flush(self) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, prefix: str = "") -> None:
        pass

    def log_artifact(self, path: Any, artifact_path: str | None = None) -> None:
        pass


@contextlib.contextmanager
def inference_run(stage: str, settings: Settings, **kwargs: Any) -> Iterator[Any]:
    """An inference stage's processes joined; inside, rank 0 has the stage's MLflow run
    (``tasks.tracking.stage_run``, ``kwargs`` passed on) and the others ``None``: they
    only take their share of the images and must write nothing."""
    with joined(settings):
        if not is_main():
            yield None
            return
        from tasks.tracking import stage_run

        with stage_run(stage, settings.tracking.experiment, settings, **kwargs) as run:
            yield run


@contextlib.contextmanager
def training_run(stage: str, settings: Settings, files: Any, resumed_from: int, **kwargs: Any) -> Iterator[Any]:
    """Rank 0: the stage's MLflow run (``tasks.tracking.stage_run``, resumed with the
    in-progress checkpoint), remembered beside it; other ranks: a ``QuietRun``."""
    if not is_main():
        yield QuietRun()
        return
    from tasks.tracking import stage_run

    with stage_run(stage, settings.tracking.experiment, settings,
                   resume_run_id=files.mlflow_run_id() if resumed_from else None, **kwargs) as run:
        files.remember_run(run.run_id)
        yield run
