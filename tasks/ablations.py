"""Stage ``ablation@<row>``: one row of the paper's ablation table (``model.ablations``), scored.

Every row is a test of an already trained model, so a row costs one evaluation on the
test split, not a training:

==============  =========================================  ==================================
``detector``    checkpoint                                 trained on
==============  =========================================  ==================================
shared          ``outputs/final`` (assemble)               step-3 proposals (four steps)
unshared        ``outputs/step2_fast_rcnn``                step-1 proposals
ss              ``outputs/ss_fast_rcnn``                   selective search
one_stage       ``outputs/one_stage``                      dense anchors (no proposals)
==============  =========================================  ==================================

Test proposals (``proposal_source``): ``rpn`` the final model's own (step-3) RPN,
``rpn_unshared`` step 1's RPN, ``rpn_strong`` the stronger-backbone RPN (``strong_rpn``),
each run afresh with the profile's test proposal settings, the paper's counts
(6000 -> NMS -> 300) and the row's changes (``model.ablations.ablation_proposal_config``);
``ss`` the first N boxes of the cached selective-search test proposals. The random
ranking of the "no cls" rows is seeded (``RANDOM_SEED``) so a row is reproducible.

Writes ``metrics/ablations/<row>.json``: mAP, per-class AP, COCO AP and the mean number
of proposals per test image. ``tasks.ablation_report`` gathers them.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from model.ablations import AblationRow, ablation_proposal_config, ablation_row
from model.data.records import DetectionDataset
from model.faster_rcnn import FasterRCNN
from model.inference import propose_dataset
from model.one_stage import load_one_stage
from tasks import layout
from tasks.atomic import write_json
from tasks.data import load_split, read_manifest
from tasks.evaluate import evaluate_detector
from tasks.lazy_prefect import task
from tasks.proposals import SS_STAGE, load_cache
from tasks.settings import Settings, with_settings
from tasks.stages import DETECTOR_CHECKPOINTS, RPN_CHECKPOINTS, row_stage
from tasks.weights import device, load_model

RANDOM_SEED = 0


def row_proposals(
    row: AblationRow, dataset: DetectionDataset, settings: Settings, detector: FasterRCNN | None = None
) -> dict[str, Tensor]:
    """Test proposals of ``row``: ``image_id -> [P, 4]`` in original pixels, rank order.

    ``detector``, the row's detector when already loaded, serves as the RPN too where both
    come from one checkpoint (the ``shared`` row) instead of loading that file twice.
    """
    ids = [r.image_id for r in dataset.records]
    if row.proposal_source == "ss":
        top_n = int(row.proposal_cfg.get("post_nms_top_n", 0)) or None
        return load_cache(SS_STAGE, "test", settings, ids).boxes(top_n=top_n)
    path = RPN_CHECKPOINTS[row.proposal_source]
    same_file = detector is not None and path == DETECTOR_CHECKPOINTS[row.detector]
    rpn = detector if same_file else load_model(path, settings)
    cfg = ablation_proposal_config(row, rpn.cfg.test_proposals)
    # A generator of its own: rows may run in threads side by side (the pipeline flow).
    generator = torch.Generator().manual_seed(RANDOM_SEED)
    proposals = propose_dataset(rpn, dataset, cfg, generator=generator)
    return {image_id: boxes for image_id, (boxes, _) in proposals.items()}


def evaluate_row(key: str, settings: Settings, progress: bool = True) -> dict[str, Any]:
    """Score ablation row ``key`` on the test split; writes and returns its metrics."""
    row = ablation_row(key)
    test = load_split("test", read_manifest())
    metric = settings.evaluate.metric
    if row.detector == "one_stage":
        model = load_one_stage(DETECTOR_CHECKPOINTS["one_stage"], map_location=device())
        model.cfg = with_settings(model.cfg, settings)
        scores, _, _ = evaluate_detector(model, test, metric, progress=progress)
        per_image = None  # every anchor is a window
    else:
        detector = load_model(DETECTOR_CHECKPOINTS[row.detector], settings)
        proposals = row_proposals(row, test, settings, detector)
        scores, _, _ = evaluate_detector(detector, test, metric, proposals=proposals, progress=progress)
        per_image = sum(int(b.shape[0]) for b in proposals.values()) / max(1, len(proposals))
    metrics = {
        "row": row.key,
        "label": row.label,
        "detector": row.detector,
        "proposal_source": row.proposal_source,
        "proposals_per_image": per_image,
        **scores,
    }
    write_json(layout.row_metrics(key), metrics)
    return metrics


@task(name="ablation_row")
def ablation_row_task(key: str, settings: Settings) -> dict[str, Any]:
    """Prefect task: one ablation row, logged as its own MLflow run (tag ``ablation_row``)."""
    from tasks.tracking import stage_run

    with stage_run(row_stage(key), settings.tracking.experiment, settings) as run:
        run.set_tags({"ablation_row": key})
        metrics = evaluate_row(key, settings)
        run.log_metrics(metrics)
        run.log_artifact(layout.row_metrics(key), "metrics")
    return metrics
