"""Detector evaluation for the Fast R-CNN steps and the ``evaluate`` stage.

``evaluate`` scores the paper's two rows on the test split:

- ``shared``: the final model (shared convs + step-3 RPN + step-4 detector) end to end,
  its own RPN giving ``test_proposals`` (6000 -> NMS -> 300) per image;
- ``unshared``: step 1's RPN (test settings, run afresh) feeding step 2's detector,
  two networks that share no layers (the paper's "unshared" row, table 2 / 5).

Metrics: VOC07 mAP and per-class AP (devkit rules, ``model.evaluation.voc_ap``) and COCO
AP (pycocotools). The devkit results files of both rows are kept as outputs.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from model.data.records import DetectionDataset
from model.detections import Detections
from model.evaluation import evaluate_voc, write_voc_results
from model.evaluation.voc_ap import DEFAULT_IOU_THRESHOLD, check_options
from model.faster_rcnn import FasterRCNN
from model.inference import detect_dataset, propose_dataset
from tasks import layout, plots
from tasks.atomic import publish_directory, write_json
from tasks.data import load_split, read_manifest
from tasks.lazy_prefect import task
from tasks.settings import Settings
from tasks.weights import device, load_model
from tasks.world import inference_run, is_main


def score_detections(
    dataset: DetectionDataset, detections: Mapping[str, Detections], metric: str
) -> tuple[dict[str, Any], Any]:
    """``({"mAP", "ap": {class: AP}, "coco": {...}}, VOCResult)``."""
    from model.evaluation.coco_eval import evaluate_coco

    voc = evaluate_voc(dataset, detections, metric=metric)
    result = voc.to_json_dict()
    result["coco"] = evaluate_coco(dataset, detections)
    return result, voc


def evaluate_detector(
    model: FasterRCNN,
    dataset: DetectionDataset,
    metric: str,
    proposals: Mapping[str, Tensor] | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], Any, dict[str, Detections]]:
    """Detect on ``dataset`` (own RPN, or the given proposals) and score; returns metrics, VOCResult, detections."""
    check_options(metric, DEFAULT_IOU_THRESHOLD)  # a bad evaluate.metric stops before detection, not after
    detections = detect_dataset(model, dataset, proposals=proposals, progress=progress)
    metrics, voc = score_detections(dataset, detections, metric)
    return metrics, voc, detections


def evaluate_rows(settings: Settings) -> dict[str, Any]:
    """Both rows on the test split; writes results files, metrics JSON and PR plots."""
    metric = settings.evaluate.metric
    check_options(metric, DEFAULT_IOU_THRESHOLD)  # before an hour of detection, not after
    manifest = read_manifest()
    test = load_split("test", manifest)
    on = device()

    final = load_model(layout.checkpoint("final"), settings, on)
    shared, shared_voc, shared_dets = evaluate_detector(final, test, metric)
    del final

    rpn1 = load_model(layout.checkpoint("step1_rpn"), settings, on)
    step1_proposals = propose_dataset(rpn1, test, rpn1.cfg.test_proposals)
    del rpn1
    detector2 = load_model(layout.checkpoint("step2_fast_rcnn"), settings, on)
    unshared, unshared_voc, unshared_dets = evaluate_detector(
        detector2, test, metric, proposals={k: boxes for k, (boxes, _) in step1_proposals.items()}
    )
    if not is_main():
        return {}

    image_set = manifest["splits"]["test"]["name"]
    classes = list(manifest["classes"])
    for row, dets in (("shared", shared_dets), ("unshared", unshared_dets)):
        publish_directory(layout.results_dir(row), lambda d, dets=dets: write_voc_results(dets, classes, d, image_set))
    plots.pr_curves(shared_voc.curves, layout.plot("evaluate", "pr_shared"), f"Final model (shared), {metric} mAP {shared_voc.mAP:.3f}")
    plots.pr_curves(unshared_voc.curves, layout.plot("evaluate", "pr_unshared"), f"Unshared (step-1 RPN + step-2 detector), mAP {unshared_voc.mAP:.3f}")
    metrics = {
        "mAP": shared["mAP"],
        "unshared_mAP": unshared["mAP"],
        "shared": shared,
        "unshared": unshared,
        "test_images": len(test.records),
    }
    write_json(layout.metrics("evaluate"), metrics)
    return metrics


@task(name="evaluate")
def evaluate_task(settings: Settings) -> dict[str, Any]:
    from tasks.tracking import registered_model_name

    experiment = settings.tracking.experiment
    with inference_run("evaluate", settings) as run:
        metrics = evaluate_rows(settings)
        if run is None:
            return metrics
        run.log_metrics(metrics)
        # The final model goes to the Model Registry with its own row's metrics.
        name = registered_model_name(experiment)
        shared = {k: v for k, v in metrics["shared"].items() if k != "mAP"}
        version = run.register_detector(layout.checkpoint("final"), name, {"mAP": metrics["mAP"], **shared})
        run.set_tags({"registered_model": f"models:/{name}/{version}"})
        run.log_artifact(layout.metrics("evaluate"), "metrics")
        for row in ("shared", "unshared"):
            run.log_artifact(layout.plot("evaluate", f"pr_{row}"), "plots")
            run.log_artifact(layout.results_dir(row), f"results/{row}")
    return metrics
