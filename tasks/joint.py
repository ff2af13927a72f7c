"""Stages ``joint_train`` and ``joint_evaluate``: approximate joint training (paper sec. 3.2 ii)
beside the four alternating steps.

``joint_train`` starts from ``init_weights`` (the start of steps 1 and 2), with the same input
scale (``data.input``) and RoI sampling (``model.roi``) as the alternating steps, and trains
shared convs + RPN + detector with one loss (``model.joint.train_joint``) on the schedule
``train.joint``. Like the alternating steps (``tasks.train``) it keeps its in-progress
checkpoint under ``outputs/.resume`` (``tasks.resume``): a killed run resumes from its last
saved iteration and continues the same MLflow run. Its metrics file records ``wall_seconds``,
the training time of the process that finished it, for the report's time comparison.

``joint_evaluate`` scores the joint model on the test split exactly as ``evaluate`` scores the
shared model (its own RPN, ``model.test_proposals`` and ``model.test``; ``tasks.evaluate``'s
functions), keeps its devkit results files and registers the model in the MLflow Model
Registry as ``<experiment>-joint`` (``tasks.tracking.joint_model_name``).

The output is an ordinary ``FasterRCNN`` checkpoint: ``python -m model.detect --checkpoint
outputs/joint_train/model.pt`` runs it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from model.alternating import INITIAL
from model.checkpoint import save_checkpoint
from model.evaluation import write_voc_results
from model.evaluation.voc_ap import DEFAULT_IOU_THRESHOLD, check_options
from model.joint import train_joint
from model.training import TrainSchedule
from tasks import layout, plots
from tasks.atomic import publish_directory, write_json
from tasks.data import load_split, read_manifest
from tasks.evaluate import evaluate_detector
from tasks.lazy_prefect import task
from tasks.resume import resume_files
from tasks.settings import Settings, training_schedule
from tasks.stages import JOINT_EVALUATE as EVALUATE_STAGE
from tasks.stages import JOINT_RESULTS as RESULTS_DIR
from tasks.stages import JOINT_TRAIN as TRAIN_STAGE
from tasks.train import loss_summary, saved_progress
from tasks.weights import device, load_model
from tasks.world import data_parallel, inference_run, is_main, joined, training_run

SCHEDULE = "joint"


def schedule(settings: Settings) -> TrainSchedule:
    """``train.joint`` as a ``TrainSchedule`` (lr for this run's processes); unknown keys are refused."""
    return data_parallel(training_schedule(settings, SCHEDULE), settings)


def train_inputs() -> list[Path]:
    """Files whose content an in-progress joint checkpoint is only valid for."""
    return [layout.MANIFEST, layout.checkpoint(INITIAL)]


def run_joint_train(settings: Settings, progress: bool = True) -> dict[str, Any]:
    """Train the joint model (resuming if a matching in-progress checkpoint exists); returns its
    metrics (``pipeline.nproc_per_node`` processes: every one trains, rank 0 writes)."""
    with joined(settings):
        return _run_joint_train(settings, progress)


def _run_joint_train(settings: Settings, progress: bool) -> dict[str, Any]:
    plan = schedule(settings)
    files = resume_files(TRAIN_STAGE, settings, train_inputs())
    resumed_from, saved_history = saved_progress(files)
    train_set = load_split("train", read_manifest())

    with training_run(TRAIN_STAGE, settings, files, resumed_from, system_metrics=True) as run:
        if resumed_from and is_main():
            print(f"{TRAIN_STAGE}: resuming from iteration {resumed_from} of {plan.iterations} ({files.checkpoint})")
            run.backfill_losses(saved_history[:resumed_from])
        model = load_model(layout.checkpoint(INITIAL), settings)
        started = time.monotonic()
        history = train_joint(model, train_set, plan, files.checkpoint, resume=True, progress=progress,
                              on_log=run.log_loss, extra={"stage": TRAIN_STAGE})
        seconds = round(time.monotonic() - started, 1)
        run.flush()
        if not is_main():
            return {}
        metrics: dict[str, Any] = {
            "iterations": plan.iterations,
            "resumed_from": resumed_from,
            "final_losses": loss_summary(history),
            # This process's training time (after a resume: the part it ran).
            layout.WALL_SECONDS: seconds,
        }
        plots.loss_curves(history, layout.plot(TRAIN_STAGE, "loss"), "approximate joint training: losses")
        save_checkpoint(layout.checkpoint(TRAIN_STAGE), model,
                        extra={"stage": TRAIN_STAGE, "iterations": plan.iterations})
        write_json(layout.metrics(TRAIN_STAGE), metrics)
        run.log_stage_outputs(TRAIN_STAGE, metrics, plot="loss")
    files.clear()
    return metrics


def evaluate_joint(settings: Settings) -> dict[str, Any]:
    """The joint model on the test split with ``evaluate``'s settings; writes results, metrics, PR plot."""
    metric = settings.evaluate.metric
    check_options(metric, DEFAULT_IOU_THRESHOLD)  # before the detection, not after
    manifest = read_manifest()
    test = load_split("test", manifest)
    model = load_model(layout.checkpoint(TRAIN_STAGE), settings, device())
    scores, voc, detections = evaluate_detector(model, test, metric)
    if not is_main():
        return {}
    image_set = manifest["splits"]["test"]["name"]
    classes = list(manifest["classes"])
    publish_directory(RESULTS_DIR, lambda d: write_voc_results(detections, classes, d, image_set))
    plots.pr_curves(voc.curves, layout.plot(EVALUATE_STAGE, "pr"),
                    f"Approximate joint training, {metric} mAP {voc.mAP:.3f}")
    metrics = {**scores, "test_images": len(test.records)}
    write_json(layout.metrics(EVALUATE_STAGE), metrics)
    return metrics


@task(name="joint_train")
def joint_train_task(settings: Settings) -> dict[str, Any]:
    """Prefect task: approximate joint training."""
    return run_joint_train(settings)


@task(name="joint_evaluate")
def joint_evaluate_task(settings: Settings) -> dict[str, Any]:
    """Prefect task: score the joint model, log it to MLflow and register it."""
    from tasks.tracking import joint_model_name

    experiment = settings.tracking.experiment
    with inference_run(EVALUATE_STAGE, settings) as run:
        metrics = evaluate_joint(settings)
        if run is None:
            return metrics
        run.log_metrics(metrics)
        name = joint_model_name(experiment)
        version = run.register_detector(layout.checkpoint(TRAIN_STAGE), name, metrics)
        run.set_tags({"registered_model": f"models:/{name}/{version}"})
        run.log_artifact(layout.metrics(EVALUATE_STAGE), "metrics")
        run.log_artifact(layout.plot(EVALUATE_STAGE, "pr"), "plots")
        run.log_artifact(RESULTS_DIR, "results/joint")
    return metrics
