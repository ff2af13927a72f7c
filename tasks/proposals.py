"""Stages ``step1_proposals`` / ``step3_proposals``: cache an RPN step's proposals once.

Proposals of every train and test image are computed with ``model.cache_proposals``
(all anchors -> NMS 0.7 -> top 2000, py-faster-rcnn's ``rpn_generate`` settings),
stored by descending score in original-image pixels with the fingerprint of what made
them (``model.proposal_cache``). The Fast R-CNN step that follows trains on the train
cache and evaluates on the test cache; it refuses a cache whose fingerprint differs
from the one its own inputs give.

Metrics (the RPN step's): proposal recall on the test split at IoU 0.5 and 0.7 for the
top 300 / 1000 / 2000 proposals, average recall (IoU 0.5:0.95), and a recall-vs-IoU plot
(the paper's figure 4).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from model.alternating import PROPOSAL_CACHES, SS_PROPOSALS
from model.evaluation import proposal_recall
from model.evaluation.recall import DEFAULT_IOU_THRESHOLDS
from model.inference import propose_dataset
from model.proposal_cache import (
    ProposalCache,
    fingerprint_for,
    image_ids_sha256,
    load_proposal_cache,
    save_proposal_cache,
)
from tasks import layout, plots
from tasks.atomic import write_json
from tasks.data import load_split, read_manifest
from tasks.lazy_prefect import task
from tasks.settings import Settings
from tasks.weights import load_model
from tasks.world import inference_run, is_main

#: proposal stage -> the RPN stage whose checkpoint makes the proposals.
RPN_OF = PROPOSAL_CACHES
#: The selective-search cache of the ablations (``tasks.ss_proposals``).
SS_STAGE = SS_PROPOSALS


def expected_fingerprint(rpn_stage: str, settings: Settings, image_ids: list[str]) -> dict[str, Any]:
    """The fingerprint a cache of ``rpn_stage``'s proposals must carry under these settings."""
    return fingerprint_for(
        layout.checkpoint(rpn_stage),
        settings.model.cache_proposals,
        image_ids,
        input=dataclasses.asdict(settings.data.input),
    )


def ss_fingerprint(settings: Settings, split_digest: str, image_ids: list[str]) -> dict[str, Any]:
    """The fingerprint of selective-search proposals: SS has no checkpoint, so the images
    themselves (the split's digest from the manifest: annotations and image bytes) and
    the SS settings name what made them."""
    return {
        "method": "selective_search",
        "settings": settings.ablations.selective_search.kwargs(),
        "split_digest": split_digest,
        "num_images": len(image_ids),
        "image_ids_sha256": image_ids_sha256(image_ids),
    }


def load_cache(proposal_stage: str, role: str, settings: Settings, image_ids: list[str]) -> ProposalCache:
    """Load a cache, refusing it unless it was made by this RPN checkpoint (or these SS
    settings), these settings and these images."""
    if proposal_stage == SS_STAGE:
        digest = read_manifest()["splits"][role]["digest"]
        expected = ss_fingerprint(settings, digest, image_ids)
    else:
        expected = expected_fingerprint(RPN_OF[proposal_stage], settings, image_ids)
    return load_proposal_cache(layout.proposals(proposal_stage, role), expected_fingerprint=expected)


def recall_metrics(result: Any, ious: list[float]) -> dict[str, Any]:
    """``{"recall": {"300": {"0.5": r, "0.7": r}, ...}, "average_recall": {"300": ar, ...}}``."""
    table = {}
    for i, n in enumerate(result.top_ns):
        row = {}
        for iou in ious:
            j = min(range(len(result.iou_thresholds)), key=lambda k: abs(result.iou_thresholds[k] - iou))
            if abs(result.iou_thresholds[j] - iou) > 1e-9:
                raise ValueError(f"recall at IoU {iou} not computed (thresholds {result.iou_thresholds})")
            row[f"{iou:g}"] = float(result.recall[i, j])
        table[str(n)] = row
    return {
        "recall": table,
        "average_recall": {str(n): float(v) for n, v in result.average_recall.items()},
        "num_gt": result.num_gt,
    }


def measure_recall(dataset: Any, boxes: Mapping[str, Any], settings: Settings) -> tuple[dict[str, Any], Any]:
    """Recall of ``boxes`` (image id -> ``[P, 4]`` by rank) at ``evaluate.recall_top_ns`` and
    IoU 0.5:0.05:0.95 (plus ``evaluate.recall_ious``): ``(recall_metrics(...), RecallResult)``."""
    ious = [float(x) for x in settings.evaluate.recall_ious]
    thresholds = sorted(set(DEFAULT_IOU_THRESHOLDS) | set(ious))
    top_ns = [int(n) for n in settings.evaluate.recall_top_ns]
    result = proposal_recall(dataset, boxes, top_ns=top_ns, iou_thresholds=thresholds)
    return recall_metrics(result, ious), result


def score_recall(dataset: Any, boxes: Mapping[str, Any], settings: Settings, plot: Any, title: str) -> tuple[dict[str, Any], Any]:
    """``measure_recall`` and the recall-vs-IoU plot of it."""
    metrics, result = measure_recall(dataset, boxes, settings)
    plots.recall_vs_iou(result.top_ns, result.iou_thresholds, result.recall, plot, title)
    return metrics, result


def cache_splits(
    stage: str,
    settings: Settings,
    propose: Callable[[Any], Mapping[str, tuple[Any, Any]]],
    fingerprint: Callable[[str, list[str]], dict[str, Any]],
    title: str,
) -> dict[str, Any]:
    """Propose on the train and test splits, cache each with its fingerprint, and score the
    test cache's recall (read back through ``load_cache``, as the next stage reads it).

    ``propose(dataset)`` gives ``image_id -> (boxes, scores)``; ``fingerprint(role, ids)``
    what made them. Returns the stage's metrics: mean proposals per image and recall
    (nothing, and nothing written, in a process other than rank 0 of several).
    """
    manifest = read_manifest()
    metrics: dict[str, Any] = {}
    for role in ("train", "test"):
        dataset = load_split(role, manifest)
        ids = [r.image_id for r in dataset.records]
        proposals = propose(dataset)  # every process takes part; only rank 0 goes on
        if not is_main():
            continue
        save_proposal_cache(layout.proposals(stage, role), proposals, fingerprint(role, ids))
        counts = [int(boxes.shape[0]) for boxes, _ in proposals.values()]
        metrics[f"{role}_mean_proposals"] = sum(counts) / max(1, len(counts))
        if role == "test":
            cache = load_cache(stage, role, settings, ids)
            recall, _ = score_recall(dataset, cache.boxes(), settings, layout.plot(stage, "recall_vs_iou"), title)
            metrics.update(recall)
    return metrics if is_main() else {}


def cache_proposals(stage: str, settings: Settings) -> dict[str, Any]:
    rpn_stage = RPN_OF[stage]
    model = load_model(layout.checkpoint(rpn_stage), settings)
    cfg = model.cfg.cache_proposals
    metrics = cache_splits(
        stage, settings,
        propose=lambda dataset: propose_dataset(model, dataset, cfg),
        fingerprint=lambda role, ids: expected_fingerprint(rpn_stage, settings, ids),
        title=f"{rpn_stage} proposals on the test split "
        f"({'all' if cfg.post_nms_top_n <= 0 else f'at most {cfg.post_nms_top_n}'} cached per image)",
    )
    if is_main():
        write_json(layout.metrics(stage), metrics)
    return metrics


@task(name="cache_proposals")
def cache_proposals_task(stage: str, settings: Settings) -> dict[str, Any]:
    step = 1 if stage.startswith("step1") else 3
    with inference_run(stage, settings, step=step) as run:
        metrics = cache_proposals(stage, settings)
        if run is not None:
            run.log_stage_outputs(stage, metrics, plot="recall_vs_iou")
    return metrics
