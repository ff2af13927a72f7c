"""Stage ``ss_proposals``: selective-search proposals of every train and test image, cached once.

The paper's "SS train" ablation rows test one Fast R-CNN detector trained on about 2000
selective-search boxes per image (fast mode), the proposals Fast R-CNN itself used.
They are computed here with OpenCV's implementation (``model.selective_search``) under
``ablations.selective_search`` and saved in the same cache format as the RPN's
(``model.proposal_cache``; rank-order stand-in scores), with a fingerprint of the SS
settings and the split's digest (annotations and image bytes), so the detector stage
refuses a cache made from other images or settings.

Metrics: the same recall table as the RPN proposal stages (test split, top 300 / 1000 /
2000, IoU 0.5 and 0.7, average recall) and a recall-vs-IoU plot.
"""
from __future__ import annotations

from typing import Any

from model.selective_search import selective_search_dataset
from tasks import layout
from tasks.atomic import write_json
from tasks.data import read_manifest
from tasks.lazy_prefect import task
from tasks.proposals import SS_STAGE, cache_splits, ss_fingerprint
from tasks.settings import Settings

def compute_ss_proposals(settings: Settings, progress: bool = True) -> dict[str, Any]:
    search = settings.ablations.selective_search.kwargs()
    # How many processes share the images: a runtime setting (the boxes do not depend on it).
    workers = settings.pipeline.ss_workers
    digests = {role: split["digest"] for role, split in read_manifest()["splits"].items()}
    metrics: dict[str, Any] = {"settings": search}
    metrics.update(cache_splits(
        SS_STAGE, settings,
        propose=lambda dataset: selective_search_dataset(dataset, progress=progress, workers=workers, **search),
        fingerprint=lambda role, ids: ss_fingerprint(settings, digests[role], ids),
        title=f"selective search ({search['mode']}) on the test split, "
        f"at most {search['max_proposals']} per image",
    ))
    write_json(layout.metrics(SS_STAGE), metrics)
    return metrics


@task(name="ss_proposals")
def ss_proposals_task(settings: Settings) -> dict[str, Any]:
    """Prefect task: selective search over both splits, cached; recall logged to MLflow."""
    from tasks.tracking import stage_run

    with stage_run(SS_STAGE, settings.tracking.experiment, settings) as run:
        metrics = compute_ss_proposals(settings)
        run.log_stage_outputs(SS_STAGE, metrics, plot="recall_vs_iou")
    return metrics
