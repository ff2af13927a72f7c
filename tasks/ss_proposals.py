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

from collections.abc import Mapping
from typing import Any

from model.selective_search import selective_search_dataset
from tasks import layout
from tasks.atomic import write_json
from tasks.data import read_manifest
from tasks.lazy_prefect import task
from tasks.params import get
from tasks.settings import check_settings
from tasks.proposals import SS_STAGE, cache_splits, ss_fingerprint

#: ``ablations.selective_search`` keys, passed to ``selective_search_dataset``.


def ss_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """The selective-search keyword arguments, refusing unknown keys by name."""
    values = dict(get(params, "ablations.selective_search"))
    check_settings({"ablations": {"selective_search": values}})
    return values


def compute_ss_proposals(params: Mapping[str, Any], progress: bool = True) -> dict[str, Any]:
    settings = ss_settings(params)
    workers = get(params, "pipeline.ss_workers")
    digests = {role: split["digest"] for role, split in read_manifest()["splits"].items()}
    metrics: dict[str, Any] = {"settings": settings}
    metrics.update(cache_splits(
        SS_STAGE, params,
        propose=lambda dataset: selective_search_dataset(dataset, progress=progress, workers=workers, **settings),
        fingerprint=lambda role, ids: ss_fingerprint(params, digests[role], ids),
        title=f"selective search ({settings.get('mode', 'fast')}) on the test split, "
        f"at most {settings.get('max_proposals')} per image",
    ))
    write_json(layout.metrics(SS_STAGE), metrics)
    return metrics


@task(name="ss_proposals")
def ss_proposals_task(params: dict[str, Any]) -> dict[str, Any]:
    """Prefect task: selective search over both splits, cached; recall logged to MLflow."""
    from tasks.tracking import stage_run

    with stage_run(SS_STAGE, get(params, "tracking.experiment"), params) as run:
        metrics = compute_ss_proposals(params)
        run.log_metrics(metrics)
        run.log_artifact(layout.metrics(SS_STAGE), "metrics")
        run.log_artifact(layout.plot(SS_STAGE, "recall_vs_iou"), "plots")
    return metrics
