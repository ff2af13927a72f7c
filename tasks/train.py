"""Stages ``step1_rpn`` .. ``step4_fast_rcnn``, ``ss_fast_rcnn``, ``strong_rpn``: one training run
of the recipe in ``model.alternating`` each (what it starts from, resets, trains, on whose
proposals).

This module moves files and logs: it loads the step's start, applies its reset, trains
with the loop of ``model.training``, and writes the checkpoint, metrics and plots.

Every step keeps its in-progress checkpoint under ``outputs/.resume`` (see
``tasks.resume``): a killed run resumes from its last saved iteration when run again.
The step's output checkpoint is written only once training has finished. With
``pipeline.nproc_per_node`` > 1 the stage runs as that many processes (``tasks.world``):
each trains on its shard of the images, and only rank 0 logs and writes. A detector
step is scored on the test split by its own stage (``tasks.score``), so evaluation
settings are no input of the training.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from model.alternating import FRESH_STRONGER, INITIAL, TrainingStep, training_step
from model.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from model.faster_rcnn import FasterRCNN
from model.training import train_detector, train_rpn
from tasks import layout, plots
from tasks.atomic import write_json
from tasks.data import load_split, read_classes, read_manifest
from tasks.lazy_prefect import task
from tasks.proposals import load_cache
from tasks.resume import ResumeFiles, resume_files
from tasks.settings import Settings, training_schedule
from tasks.weights import build_stronger_rpn, device, load_model, reset_layers
from tasks.world import data_parallel, is_main, joined, training_run


def _start_model(step: TrainingStep, settings: Settings) -> FasterRCNN:
    if step.start == FRESH_STRONGER:
        return build_stronger_rpn(settings, read_classes()).to(device())
    model = load_model(layout.checkpoint(step.start), settings)
    if step.reset is not None:
        reset_layers(model, step.reset, layout.checkpoint(INITIAL))
    return model


def saved_progress(files: ResumeFiles, kind: type = FasterRCNN) -> tuple[int, list[dict[str, float]]]:
    """Iteration and loss history saved in the in-progress checkpoint; ``(0, [])`` without one.

    An unreadable in-progress checkpoint is discarded (training then starts over).
    """
    if not files.checkpoint.exists():
        return 0, []
    try:
        state = read_checkpoint(files.checkpoint, kind=kind)["train_state"] or {}
        return int(state.get("iteration", 0)), [dict(h) for h in state.get("history", [])]
    except (CheckpointError, ValueError, TypeError, KeyError):
        files.clear()
        return 0, []


def _inputs(step: TrainingStep) -> list[Path]:
    """Files whose content an in-progress checkpoint of ``step`` is only valid for."""
    inputs = [layout.MANIFEST]
    if step.start != FRESH_STRONGER:
        inputs += [layout.checkpoint(step.start), layout.checkpoint(INITIAL)]
    if step.proposals is not None:
        inputs.append(layout.proposals(step.proposals, "train"))
    return inputs


def loss_summary(history: list[dict[str, float]], window: int = 20) -> dict[str, float]:
    """Mean of each loss term over the last ``window`` iterations (less noisy than the last one)."""
    tail = history[-window:]
    if not tail:
        return {}
    return {k: sum(h[k] for h in tail) / len(tail) for k in tail[0] if k != "lr"}


def run_step(stage: str, settings: Settings, progress: bool = True) -> dict[str, Any]:
    """Train one step (resuming if a matching in-progress checkpoint exists); returns its metrics
    (in every process of a ``pipeline.nproc_per_node`` > 1 run; rank 0's are the stage's)."""
    with joined(settings):
        return _run_step(stage, settings, progress)


def _run_step(stage: str, settings: Settings, progress: bool) -> dict[str, Any]:
    step = training_step(stage)
    kind = step.kind
    schedule = data_parallel(training_schedule(settings, step.schedule), settings)
    files = resume_files(stage, settings, _inputs(step))
    resumed_from, saved_history = saved_progress(files)
    manifest = read_manifest()
    train_set = load_split("train", manifest)

    with training_run(stage, settings, files, resumed_from, step=step.paper_step, system_metrics=True) as run:
        if resumed_from and is_main():
            print(f"{stage}: resuming from iteration {resumed_from} of {schedule.iterations} ({files.checkpoint})")
            # Losses of the killed run that never reached MLflow (sent in batches) come
            # from the checkpoint's own history.
            run.backfill_losses(saved_history[:resumed_from])
        model = _start_model(step, settings)
        started = time.monotonic()
        extra = {"stage": stage}
        if kind == "rpn":
            history = train_rpn(model, train_set, schedule, files.checkpoint, trainable_groups=step.trains,
                                resume=True, progress=progress, on_log=run.log_loss, extra=extra)
        else:
            ids = [r.image_id for r in train_set.records]
            cache = load_cache(step.proposals, "train", settings, ids)
            history = train_detector(model, train_set, cache.boxes(), schedule, files.checkpoint,
                                     trainable_groups=step.trains, resume=True, progress=progress,
                                     on_log=run.log_loss, extra=extra)
        run.flush()
        if not is_main():
            return {}
        metrics: dict[str, Any] = {
            "iterations": schedule.iterations,
            "resumed_from": resumed_from,
            "final_losses": loss_summary(history),
            # This process's training time (after a resume: the part it ran); summed by the
            # summary stage and the joint comparison. The one value of the file that differs
            # between identical runs.
            layout.WALL_SECONDS: round(time.monotonic() - started, 1),
        }
        plots.loss_curves(history, layout.plot(stage, "loss"), f"{stage}: training losses")

        save_checkpoint(layout.checkpoint(stage), model, extra={"stage": stage, "iterations": schedule.iterations})
        write_json(layout.metrics(stage), metrics)
        run.log_stage_outputs(stage, metrics, plot="loss")
    files.clear()
    return metrics


@task(name="train_step")
def train_step_task(stage: str, settings: Settings) -> dict[str, Any]:
    """Prefect task: one of the four training steps."""
    return run_step(stage, settings)
