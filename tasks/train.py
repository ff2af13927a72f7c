"""Stages ``step1_rpn`` .. ``step4_fast_rcnn``: the four training steps of the paper (sec. 3.2).

=====  ==========================  ========================================  ===================
step   starts from                 trains                                    proposals
=====  ==========================  ========================================  ===================
1      init_weights                shared convs + RPN                        -
2      init_weights (not step 1)   shared convs + detector (top, cls, bbox)  step 1's, cached
3      step 2, RPN layers reset    RPN only (shared convs frozen)            -
4      step 3, cls/bbox reset      detector only (shared convs frozen)       step 3's, cached
=====  ==========================  ========================================  ===================

(``tasks.weights`` explains the resets: they follow py-faster-rcnn's alt-opt scripts.)

Two more stages train the ablations' extra models with the same loop: ``ss_fast_rcnn``
(as step 2, on cached selective-search proposals) and ``strong_rpn`` (as step 1, on a
fresh network with the stronger backbone of ``model.stronger_rpn``).

Every step keeps its in-progress checkpoint under ``outputs/.resume`` (see
``tasks.resume``): a killed run resumes from its last saved iteration when run again.
The step's output checkpoint is written only once training has finished. The
detector steps also score themselves on the test split with their cached proposals
(top ``test_proposals.post_nms_top_n``).
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from model.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from model.faster_rcnn import FasterRCNN
from model.training import TrainSchedule, train_detector, train_rpn
from tasks import layout, plots
from tasks.atomic import write_json
from tasks.data import load_split, read_classes, read_manifest
from tasks.evaluate import evaluate_detector
from tasks.params import dataclass_from, get
from tasks.proposals import SS_PARAMS, SS_STAGE, load_cache
from tasks.resume import ResumeFiles, resume_files
from tasks.weights import (
    PREDICTOR_PREFIXES,
    STRONGER_RPN_PARAMS,
    build_stronger_rpn,
    device,
    load_model,
    reset_layers,
)

_COMMON = ("data.input",)
RPN_PARAMS = {
    stage: (*_COMMON, "model.rpn", f"train.{stage}") for stage in ("step1_rpn", "step3_rpn")
}
DETECTOR_PARAMS = {
    stage: (
        *_COMMON,
        "model.roi",
        "model.test",
        "model.test_proposals.post_nms_top_n",
        "model.cache_proposals",
        "evaluate.metric",
        f"train.{stage}",
    )
    for stage in ("step2_fast_rcnn", "step4_fast_rcnn")
}
# The ablations' two extra models train exactly as steps 1 and 2 (same schedules), so
# their rows differ from the paper's baseline rows only in what the issue varies.
RPN_PARAMS["strong_rpn"] = (*_COMMON, "model.rpn", "train.step1_rpn", *STRONGER_RPN_PARAMS)
DETECTOR_PARAMS["ss_fast_rcnn"] = (
    *_COMMON, "model.roi", "model.test", *SS_PARAMS, "evaluate.metric", "train.step2_fast_rcnn",
)

#: What each step starts from, which layers it resets to init_weights, what it trains,
#: on which proposals, with which ``train.<schedule>``. ``start`` None: a fresh network on
#: the stronger backbone (``tasks.weights.build_stronger_rpn``). ``test_top_n``: how many
#: cached test proposals the detector scores itself on ("params": the profile's
#: ``test_proposals.post_nms_top_n``; None: all, the SS detector's 2000).
STEPS: dict[str, dict[str, Any]] = {
    "step1_rpn": {"step": 1, "start": "init_weights", "reset": None, "train": ("shared", "rpn"),
                  "schedule": "step1_rpn"},
    "step2_fast_rcnn": {"step": 2, "start": "init_weights", "reset": None, "train": ("shared", "detector"),
                        "proposals": "step1_proposals", "schedule": "step2_fast_rcnn", "test_top_n": "params"},
    "step3_rpn": {"step": 3, "start": "step2_fast_rcnn", "reset": ("rpn", None), "train": ("rpn",),
                  "schedule": "step3_rpn"},
    "step4_fast_rcnn": {"step": 4, "start": "step3_rpn", "reset": ("detector", PREDICTOR_PREFIXES),
                        "train": ("detector",), "proposals": "step3_proposals", "schedule": "step4_fast_rcnn",
                        "test_top_n": "params"},
    # Ablations: Fast R-CNN on selective search (as step 2), an RPN on a stronger backbone (as step 1).
    "ss_fast_rcnn": {"step": None, "start": "init_weights", "reset": None, "train": ("shared", "detector"),
                     "proposals": SS_STAGE, "schedule": "step2_fast_rcnn", "test_top_n": None},
    "strong_rpn": {"step": None, "start": None, "reset": None, "train": ("shared", "rpn"),
                   "schedule": "step1_rpn"},
}


def _start_model(stage: str, params: Mapping[str, Any]) -> FasterRCNN:
    spec = STEPS[stage]
    if spec["start"] is None:
        return build_stronger_rpn(params, read_classes()).to(device())
    model = load_model(layout.checkpoint(spec["start"]), params)
    if spec["reset"] is not None:
        group, prefixes = spec["reset"]
        reset_layers(model, layout.checkpoint("init_weights"), group, prefixes)
    return model


def _saved_progress(files: ResumeFiles) -> tuple[int, list[dict[str, float]]]:
    """Iteration and loss history saved in the in-progress checkpoint; ``(0, [])`` without one.

    An unreadable in-progress checkpoint is discarded (training then starts over).
    """
    if not files.checkpoint.exists():
        return 0, []
    try:
        state = read_checkpoint(files.checkpoint)["train_state"] or {}
        return int(state.get("iteration", 0)), [dict(h) for h in state.get("history", [])]
    except (CheckpointError, ValueError, TypeError, KeyError):
        files.clear()
        return 0, []


def _inputs(stage: str) -> list[Path]:
    spec = STEPS[stage]
    inputs = [layout.MANIFEST]
    if spec["start"] is not None:
        inputs += [layout.checkpoint(spec["start"]), layout.checkpoint("init_weights")]
    if "proposals" in spec:
        inputs += [layout.proposals(spec["proposals"], "train"), layout.proposals(spec["proposals"], "test")]
    return inputs


def loss_summary(history: list[dict[str, float]], window: int = 20) -> dict[str, float]:
    """Mean of each loss term over the last ``window`` iterations (less noisy than the last one)."""
    tail = history[-window:]
    if not tail:
        return {}
    return {k: sum(h[k] for h in tail) / len(tail) for k in tail[0] if k != "lr"}


def run_step(stage: str, params: Mapping[str, Any], progress: bool = True) -> dict[str, Any]:
    """Train one step (resuming if a matching in-progress checkpoint exists); returns its metrics."""
    from tasks.tracking import stage_run

    spec = STEPS[stage]
    kind = "rpn" if stage.endswith("_rpn") else "detector"
    schedule_key = f"train.{spec['schedule']}"
    schedule = dataclass_from(TrainSchedule, dict(get(params, schedule_key)), schedule_key)
    files = resume_files(stage, params, _inputs(stage))
    resumed_from, saved_history = _saved_progress(files)
    manifest = read_manifest()
    train_set = load_split("train", manifest)

    with stage_run(stage, get(params, "tracking.experiment"), params, step=spec["step"],
                   resume_run_id=files.mlflow_run_id() if resumed_from else None) as run:
        files.remember_run(run.run_id)
        if resumed_from:
            print(f"{stage}: resuming from iteration {resumed_from} of {schedule.iterations} ({files.checkpoint})")
            # Losses of the killed run that never reached MLflow (sent in batches) come
            # from the checkpoint's own history.
            run.backfill_losses(saved_history[:resumed_from])
        model = _start_model(stage, params)
        started = time.monotonic()
        extra = {"stage": stage}
        if kind == "rpn":
            history = train_rpn(model, train_set, schedule, files.checkpoint, trainable_groups=spec["train"],
                                resume=True, progress=progress, on_log=run.log_loss, extra=extra)
        else:
            ids = [r.image_id for r in train_set.records]
            cache = load_cache(spec["proposals"], "train", params, ids)
            history = train_detector(model, train_set, cache.boxes(), schedule, files.checkpoint,
                                     trainable_groups=spec["train"], resume=True, progress=progress,
                                     on_log=run.log_loss, extra=extra)
        run.flush()
        metrics: dict[str, Any] = {
            "iterations": schedule.iterations,
            "resumed_from": resumed_from,
            "final_losses": loss_summary(history),
        }
        plots.loss_curves(history, layout.plot(stage, "loss"), f"{stage}: training losses")

        if kind == "detector":
            test_set = load_split("test", manifest)
            top_n = int(get(params, "model.test_proposals.post_nms_top_n")) if spec["test_top_n"] else None
            test_cache = load_cache(spec["proposals"], "test", params, [r.image_id for r in test_set.records])
            scores, voc, _ = evaluate_detector(model, test_set, str(get(params, "evaluate.metric")),
                                               proposals=test_cache.boxes(top_n=top_n), progress=progress)
            metrics.update(scores)
            plots.pr_curves(voc.curves, layout.plot(stage, "pr"),
                            f"{stage} on the test split ({spec['proposals']} cache), mAP {voc.mAP:.3f}")

        save_checkpoint(layout.checkpoint(stage), model, extra={"stage": stage, "iterations": schedule.iterations})
        write_json(layout.metrics(stage), metrics)
        # Wall time goes to MLflow only: the metrics file stays byte-identical between runs.
        run.log_metrics({**metrics, "train_seconds": round(time.monotonic() - started, 1)})
        run.log_artifact(layout.metrics(stage), "metrics")
        for name in ("loss", "pr"):
            if layout.plot(stage, name).exists() and (name == "loss" or kind == "detector"):
                run.log_artifact(layout.plot(stage, name), "plots")
    files.clear()
    return metrics


@task(name="train_step", cache_policy=NO_CACHE)
def train_step_task(stage: str, params: dict[str, Any]) -> dict[str, Any]:
    """Prefect task: one of the four training steps."""
    return run_step(stage, params)
