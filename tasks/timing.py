"""Stage ``timing``: the paper's Table 5 measured on the machine the pipeline runs on.

The final (shared) model runs over the first ``evaluate.timing_images`` test images twice:
once behind selective search (``ablations.selective_search``, its first 2000 boxes: SS +
Fast R-CNN) and once behind its own RPN with the paper's test counts (6000 -> NMS -> 300:
RPN + Fast R-CNN). ``model.timing`` bills each image's wall time to the paper's phases
(conv, proposal, region-wise). Writes ``metrics/timing.json`` (ms per phase, total, fps,
the proposal-time ratio, the device); the ablation report turns it into the table beside
the paper's figures. Timings depend on the machine and what else runs on it: the file
names the device, and nothing downstream is a function of it but the report.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from model.ablations import PAPER_TEST_COUNTS
from model.data.images import load_image_rgb
from model.data.transforms import prepare_image
from model.selective_search import selective_search
from model.timing import device_name, time_systems
from tasks import layout
from tasks.atomic import write_json
from tasks.data import load_split, read_manifest
from tasks.lazy_prefect import task
from tasks.settings import Settings
from tasks.weights import load_model

STAGE = "timing"
#: Images run first and not counted (lazy initialisation, allocator warm-up).
WARMUP_IMAGES = 2
#: Selective-search boxes the SS system's detector sees, as Fast R-CNN's own setting.
SS_TOP_N = 2000

# The paper's Table 5 (ms per image, K40 GPU; selective search on a CPU).
PAPER_TABLE5: tuple[dict[str, Any], ...] = (
    {"system": "SS + Fast R-CNN (VGG-16)", "conv_ms": 146, "proposal_ms": 1510, "region_ms": 174, "total_ms": 1830, "fps": 0.5},
    {"system": "RPN + Fast R-CNN (VGG-16)", "conv_ms": 141, "proposal_ms": 10, "region_ms": 47, "total_ms": 198, "fps": 5},
    {"system": "RPN + Fast R-CNN (ZF)", "conv_ms": 31, "proposal_ms": 3, "region_ms": 25, "total_ms": 59, "fps": 17},
)


def measure_timing(settings: Settings) -> dict[str, Any]:
    """Time both systems on the test split's first images; writes and returns the metrics."""
    model = load_model(layout.checkpoint("final"), settings)
    test = load_split("test", read_manifest())
    records = test.records[: settings.evaluate.timing_images]
    if len(records) < 2:
        raise ValueError(f"timing needs at least 2 test images, the test split has {len(test.records)}")
    # A small test split (the tiny profile) still times at least one image after warm-up.
    warmup = min(WARMUP_IMAGES, len(records) - 1)
    search = settings.ablations.selective_search.kwargs()
    device = next(model.parameters()).device
    images = []
    for record in records:
        original = load_image_rgb(record.path)
        image, scale = prepare_image(original, model.cfg.min_size, model.cfg.max_size)
        images.append((image.to(device), scale, original))
    rpn_cfg = dataclasses.replace(model.cfg.test_proposals, **PAPER_TEST_COUNTS)
    ss, rpn = time_systems(
        model, images, lambda original: selective_search(original, **search), rpn_cfg,
        ss_top_n=SS_TOP_N, warmup=warmup,
    )
    metrics = {
        "device": device_name(device),
        "images": ss.images,
        "ss": ss.to_dict(),
        "rpn": rpn.to_dict(),
        "proposal_ratio_ss_over_rpn": ss.proposal_ms / rpn.proposal_ms if rpn.proposal_ms > 0 else None,
        "total_ratio_ss_over_rpn": ss.total_ms / rpn.total_ms if rpn.total_ms > 0 else None,
    }
    write_json(layout.metrics(STAGE), metrics)
    return metrics


@task(name="timing")
def timing_task(settings: Settings) -> dict[str, Any]:
    """Prefect task: Table 5 timings, logged as the stage's MLflow run."""
    from tasks.tracking import stage_run

    with stage_run(STAGE, settings.tracking.experiment, settings) as run:
        metrics = measure_timing(settings)
        run.set_tags({"timing_device": metrics["device"]})
        run.log_metrics({f"{system}_{k}": v for system in ("ss", "rpn") for k, v in metrics[system].items()
                         if k != "system"})
        if metrics["proposal_ratio_ss_over_rpn"] is not None:
            run.log_metrics({"proposal_ratio_ss_over_rpn": metrics["proposal_ratio_ss_over_rpn"]})
        run.log_artifact(layout.metrics(STAGE), "metrics")
    return metrics
