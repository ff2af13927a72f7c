"""Stage ``proposal_recall``: recall against IoU of SS and RPN proposals (the paper's figure 4).

On the test split, for the top 300 / 1000 / 2000 proposals per image (``evaluate.recall_top_ns``)
at IoU 0.5 to 0.95, four proposal methods:

- ``ss``: the cached selective-search boxes (``ss_proposals``), in SS's own order;
- ``rpn_shared``: the final model's RPN (step 3, on the shared convs);
- ``rpn_unshared``: step 1's RPN;
- ``rpn_strong``: the stronger backbone's RPN (``strong_rpn``; VGG-16 in the paper).

The RPNs run afresh with the cached-proposal settings (``model.cache_proposals``: all
anchors -> NMS 0.7) but keep ``max(recall_top_ns)`` boxes, so the 2000 column means 2000
where the RPN has that many.

Outputs: ``reports/recall_vs_iou.csv`` (one row per IoU threshold, one column per
``<method>_<N>``; a DVC plot, see dvc.yaml), ``plots/proposal_recall/recall_vs_iou.png``
(one panel per N, like the paper's figure) and metrics (recall at IoU 0.5 and 0.7, average
recall, per method and N).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model.inference import propose_dataset
from tasks import layout, plots
from tasks.atomic import write_json, write_text
from tasks.data import load_split, read_manifest
from tasks.lazy_prefect import task
from tasks.proposals import SS_STAGE, load_cache, measure_recall
from tasks.settings import Settings
from tasks.weights import load_model

STAGE = "proposal_recall"
CSV = layout.report("recall_vs_iou.csv")
#: method -> (label, the checkpoint whose RPN proposes; None for selective search).
METHODS: dict[str, tuple[str, Path | None]] = {
    "ss": ("selective search", None),
    "rpn_shared": ("RPN, shared (step 3)", layout.checkpoint("final")),
    "rpn_unshared": ("RPN, unshared (step 1)", layout.checkpoint("step1_rpn")),
    "rpn_strong": ("RPN, stronger backbone", layout.checkpoint("strong_rpn")),
}


def recall_table(results: Mapping[str, Any]) -> pd.DataFrame:
    """Wide table: ``iou`` then one recall column ``<method>_<N>`` per method and N."""
    first = next(iter(results.values()))
    columns: dict[str, Any] = {"iou": np.round(np.asarray(first.iou_thresholds, dtype=float), 4)}
    for method, result in results.items():
        for i, n in enumerate(result.top_ns):
            columns[f"{method}_{n}"] = np.asarray(result.recall[i], dtype=float)
    return pd.DataFrame(columns)


def compute(settings: Settings, progress: bool = True) -> dict[str, Any]:
    manifest = read_manifest()
    test = load_split("test", manifest)
    ids = [r.image_id for r in test.records]
    top_ns = [int(n) for n in settings.evaluate.recall_top_ns]
    metrics: dict[str, Any] = {}
    results: dict[str, Any] = {}
    for method, (_, checkpoint) in METHODS.items():
        if checkpoint is None:
            boxes = load_cache(SS_STAGE, "test", settings, ids).boxes()
        else:
            rpn = load_model(checkpoint, settings)
            cfg = dataclasses.replace(rpn.cfg.cache_proposals, post_nms_top_n=max(top_ns))
            boxes = {k: b for k, (b, _) in propose_dataset(rpn, test, cfg, progress=progress).items()}
        metrics[method], results[method] = measure_recall(test, boxes, settings)
    write_text(CSV, recall_table(results).to_csv(index=False, float_format="%.6f"))
    curves = {METHODS[m][0]: (r.iou_thresholds, r.recall) for m, r in results.items()}
    plots.recall_vs_iou_by_method(curves, top_ns, layout.plot(STAGE, "recall_vs_iou"))
    write_json(layout.metrics(STAGE), metrics)
    return metrics


@task(name="proposal_recall")
def proposal_recall_task(settings: Settings) -> dict[str, Any]:
    """Prefect task: recall vs IoU of every proposal method; CSV, plot and metrics to MLflow."""
    from tasks.tracking import stage_run

    with stage_run(STAGE, settings.tracking.experiment, settings) as run:
        metrics = compute(settings)
        run.log_stage_outputs(STAGE, metrics, plot="recall_vs_iou")
        run.log_artifact(CSV, "reports")
    return metrics
