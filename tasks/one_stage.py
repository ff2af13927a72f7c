"""Stage ``one_stage``: the paper's one-stage detector (Table 10), for the "one-stage" ablation row.

``model.one_stage.OneStageDetector`` on the profile's backbone and anchors, trained with
``train.one_stage`` (the detector steps' optimiser; the paper trains it like its Fast
R-CNN), from ImageNet weights as ``model.pretrained`` says and fresh head layers drawn
from ``pipeline.init_seed``. It scores itself on the test split (VOC mAP, per-class AP,
COCO AP); the ``ablation@one_stage`` row re-reads the checkpoint.

Trains through ``model.training``'s loop like the four steps: the in-progress checkpoint lives
under ``outputs/.resume`` (``tasks.resume``), so a killed run resumes from its last saved
iteration and continues the same MLflow run.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from model.one_stage import OneStageDetector, save_one_stage, train_one_stage
from model.training import TrainSchedule
from tasks import layout, plots
from tasks.atomic import write_json
from tasks.data import load_split, read_classes, read_manifest
from tasks.evaluate import evaluate_detector
from tasks.lazy_prefect import task
from tasks.params import get, training_schedule, with_settings
from tasks.resume import resume_files
from tasks.train import loss_summary, saved_progress
from tasks.weights import device, initial_config, seeded
from tasks.world import data_parallel, is_main, joined, training_run

STAGE = "one_stage"


def schedule(params: Mapping[str, Any]) -> TrainSchedule:
    """``train.one_stage`` as a ``TrainSchedule`` (the detector steps' keys; lr for this run's
    processes); unknown keys are refused."""
    return data_parallel(training_schedule(params, "train.one_stage"), params)


def build(params: Mapping[str, Any]) -> OneStageDetector:
    """A fresh one-stage detector with the stage's settings (``model.rpn.allowed_border`` and
    ``mid_channels`` included); new layers seeded."""
    cfg = with_settings(initial_config(params, read_classes()), params)
    options = dict(get(params, "model.backbone_options") or {})
    return seeded(params, lambda: OneStageDetector(cfg, options))


def train_and_score(
    params: Mapping[str, Any], on_log: Any = None, progress: bool = True, checkpoint: Path | None = None
) -> dict[str, Any]:
    """Train (resuming from ``checkpoint`` when it exists), score on the test split, save
    (after training together, only rank 0 of several processes scores and saves)."""
    manifest = read_manifest()
    train_set = load_split("train", manifest)
    model = build(params).to(device())
    plan = schedule(params)
    started = time.monotonic()
    history = train_one_stage(model, train_set, plan, checkpoint, progress=progress, on_log=on_log,
                              extra={"stage": STAGE})
    seconds = time.monotonic() - started
    if not is_main():
        return {}
    plots.loss_curves(history, layout.plot(STAGE, "loss"), "one-stage detector: training losses")
    test_set = load_split("test", manifest)
    scores, voc, _ = evaluate_detector(model, test_set, str(get(params, "evaluate.metric")), progress=progress)
    plots.pr_curves(voc.curves, layout.plot(STAGE, "pr"), f"one-stage detector on the test split, mAP {voc.mAP:.3f}")
    save_one_stage(layout.checkpoint(STAGE), model, extra={"stage": STAGE, "iterations": plan.iterations})
    metrics = {
        "iterations": plan.iterations,
        "final_losses": loss_summary(history),
        layout.WALL_SECONDS: round(seconds, 1),  # summed by the summary stage
        **scores,
    }
    write_json(layout.metrics(STAGE), metrics)
    return metrics


@task(name="one_stage")
def one_stage_task(params: dict[str, Any]) -> dict[str, Any]:
    """Prefect task: train and score the one-stage detector; losses and metrics to MLflow."""
    with joined(params):
        files = resume_files(STAGE, params, [layout.MANIFEST])
        resumed_from, saved_history = saved_progress(files, OneStageDetector)
        with training_run(STAGE, params, files, resumed_from, system_metrics=True) as run:
            if resumed_from and is_main():
                print(f"{STAGE}: resuming from iteration {resumed_from} ({files.checkpoint})")
                run.backfill_losses(saved_history[:resumed_from])
            metrics = train_and_score(params, on_log=run.log_loss, checkpoint=files.checkpoint)
            run.flush()
            if not is_main():
                return metrics
            run.log_metrics(metrics)
            run.log_artifact(layout.metrics(STAGE), "metrics")
            for name in ("loss", "pr"):
                run.log_artifact(layout.plot(STAGE, name), "plots")
        files.clear()
        return metrics
