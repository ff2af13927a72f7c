"""Stages ``one_stage`` and ``one_stage_score``: the paper's one-stage detector (Table 10),
for the "one-stage" ablation row.

``one_stage`` trains ``model.one_stage.OneStageDetector`` on the profile's backbone and
anchors with ``train.one_stage`` (the detector steps' optimiser; the paper trains it like
its Fast R-CNN), from ImageNet weights as ``model.pretrained`` says and fresh head layers
drawn from ``pipeline.init_seed``. Trains through ``model.training``'s loop like the four
steps: the in-progress checkpoint lives under ``outputs/.resume`` (``tasks.resume``), so a
killed run resumes from its last saved iteration and continues the same MLflow run.

``one_stage_score`` scores the checkpoint on the test split (VOC mAP, per-class AP, COCO
AP) with ``model.test`` and ``evaluate.metric``: a stage of its own, as the detector
steps' scores (``tasks.score``), so that an evaluation setting is no input of the
training. The ``ablation@one_stage`` row re-reads the checkpoint too.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from model.one_stage import OneStageDetector, load_one_stage, save_one_stage, train_one_stage
from model.training import TrainSchedule
from tasks import layout, plots
from tasks.atomic import write_json
from tasks.data import load_split, read_classes, read_manifest
from tasks.evaluate import evaluate_detector
from tasks.lazy_prefect import task
from tasks.resume import resume_files
from tasks.settings import Settings, training_schedule, with_settings
from tasks.train import loss_summary, saved_progress
from tasks.weights import device, initial_config, seeded
from tasks.world import data_parallel, inference_run, is_main, joined, training_run

STAGE = "one_stage"
SCORE_STAGE = "one_stage_score"


def schedule(settings: Settings) -> TrainSchedule:
    """``train.one_stage`` as a ``TrainSchedule`` (the detector steps' keys; lr for this run's
    processes); unknown keys are refused."""
    return data_parallel(training_schedule(settings, "one_stage"), settings)


def build(settings: Settings) -> OneStageDetector:
    """A fresh one-stage detector with the stage's settings (``model.rpn.allowed_border`` and
    ``mid_channels`` included); new layers seeded."""
    cfg = with_settings(initial_config(settings, read_classes()), settings)
    options = dict(settings.model.backbone_options)
    return seeded(settings, lambda: OneStageDetector(cfg, options))


def train(
    settings: Settings, on_log: Any = None, progress: bool = True, checkpoint: Path | None = None
) -> dict[str, Any]:
    """Train (resuming from ``checkpoint`` when it exists) and save; returns the metrics
    (after training together, only rank 0 of several processes saves)."""
    train_set = load_split("train", read_manifest())
    model = build(settings).to(device())
    plan = schedule(settings)
    started = time.monotonic()
    history = train_one_stage(model, train_set, plan, checkpoint, progress=progress, on_log=on_log,
                              extra={"stage": STAGE})
    seconds = time.monotonic() - started
    if not is_main():
        return {}
    plots.loss_curves(history, layout.plot(STAGE, "loss"), "one-stage detector: training losses")
    save_one_stage(layout.checkpoint(STAGE), model, extra={"stage": STAGE, "iterations": plan.iterations})
    metrics = {
        "iterations": plan.iterations,
        "final_losses": loss_summary(history),
        layout.WALL_SECONDS: round(seconds, 1),  # summed by the summary stage
    }
    write_json(layout.metrics(STAGE), metrics)
    return metrics


def score(settings: Settings, progress: bool = True) -> dict[str, Any]:
    """The trained detector (with the stage's test settings) on the test split; writes the
    metrics and the PR plot."""
    model = load_one_stage(layout.checkpoint(STAGE), map_location=device())
    model.cfg = with_settings(model.cfg, settings)
    test_set = load_split("test", read_manifest())
    scores, voc, _ = evaluate_detector(model, test_set, settings.evaluate.metric, progress=progress)
    if not is_main():
        return {}
    plots.pr_curves(voc.curves, layout.plot(SCORE_STAGE, "pr"),
                    f"one-stage detector on the test split, mAP {voc.mAP:.3f}")
    write_json(layout.metrics(SCORE_STAGE), scores)
    return scores


@task(name="one_stage")
def one_stage_task(settings: Settings) -> dict[str, Any]:
    """Prefect task: train the one-stage detector; losses and metrics to MLflow (rank 0)."""
    with joined(settings):
        files = resume_files(STAGE, settings, [layout.MANIFEST])
        resumed_from, saved_history = saved_progress(files, OneStageDetector)
        with training_run(STAGE, settings, files, resumed_from, system_metrics=True) as run:
            if resumed_from and is_main():
                print(f"{STAGE}: resuming from iteration {resumed_from} ({files.checkpoint})")
                run.backfill_losses(saved_history[:resumed_from])
            metrics = train(settings, on_log=run.log_loss, checkpoint=files.checkpoint)
            run.flush()
            if not is_main():
                return metrics
            run.log_stage_outputs(STAGE, metrics, plot="loss")
        files.clear()
        return metrics


@task(name="one_stage_score")
def one_stage_score_task(settings: Settings) -> dict[str, Any]:
    """Prefect task: the one-stage detector's score, logged as the stage's MLflow run."""
    with inference_run(SCORE_STAGE, settings) as run:
        metrics = score(settings)
        if run is not None:
            run.log_stage_outputs(SCORE_STAGE, metrics, plot="pr")
    return metrics
