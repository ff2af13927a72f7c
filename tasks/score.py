"""Stages ``<detector step>_score``: a trained detector step scored on the test split.

The detector of steps 2 and 4 (and the ablations' SS-trained one) is run on the test
proposals cached beside the ones it trained on, all of them (the cache's own count,
``model.cache_proposals`` for the RPN caches, selective search's for SS), and scored with
``evaluate.metric``. A stage of its own, so that changing an evaluation setting re-scores
the step without re-training it. (The final models' test-time proposals and scores are
``evaluate``'s and the ablation rows'.)

Writes ``metrics/<stage>.json`` (VOC mAP, per-class AP, COCO AP) and the PR curves.
"""
from __future__ import annotations

from typing import Any

from model.alternating import training_step
from tasks import layout, plots
from tasks.atomic import write_json
from tasks.data import load_split, read_manifest
from tasks.evaluate import evaluate_detector
from tasks.lazy_prefect import task
from tasks.proposals import load_cache
from tasks.settings import Settings
from tasks.weights import load_model
from tasks.world import inference_run, is_main

#: A score stage's name: the detector step it scores, then this.
SUFFIX = "_score"


def score_step(stage: str, step_name: str, settings: Settings, progress: bool = True) -> dict[str, Any]:
    """Score detector step ``step_name`` on its cached test proposals; writes the metrics and PR plot."""
    step = training_step(step_name)
    model = load_model(layout.checkpoint(step.name), settings)
    test_set = load_split("test", read_manifest())
    cache = load_cache(step.proposals, "test", settings, [r.image_id for r in test_set.records])
    scores, voc, _ = evaluate_detector(model, test_set, settings.evaluate.metric,
                                       proposals=cache.boxes(), progress=progress)
    if not is_main():
        return {}
    plots.pr_curves(voc.curves, layout.plot(stage, "pr"),
                    f"{step.name} on the test split ({step.proposals} cache), mAP {voc.mAP:.3f}")
    write_json(layout.metrics(stage), scores)
    return scores


@task(name="score_step")
def score_step_task(stage: str, step_name: str, settings: Settings) -> dict[str, Any]:
    """Prefect task: one detector step's score, logged as the stage's MLflow run."""
    with inference_run(stage, settings, step=training_step(step_name).paper_step) as run:
        metrics = score_step(stage, step_name, settings)
        if run is not None:
            run.log_stage_outputs(stage, metrics, plot="pr")
    return metrics
