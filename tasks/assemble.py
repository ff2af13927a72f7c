"""Stage ``assemble``: the paper's final, shared model from two checkpoints.

shared convs + RPN from step 3, detector from step 4 (``model.checkpoint.assemble_model``;
step 4 kept the shared convs frozen at step 3's values, so both files hold the same
ones). The test-time settings (``model.test_proposals``, ``model.test``) and the input
size come from settings, so the file is ready for ``python -m model.detect``. The
``evaluate`` stage registers it in the MLflow Model Registry with its metrics.
"""
from __future__ import annotations

from typing import Any

from model.checkpoint import assemble_model, read_checkpoint, save_checkpoint
from tasks import layout
from tasks.atomic import write_json
from tasks.lazy_prefect import task
from tasks.settings import Settings, with_settings


def assemble(settings: Settings) -> tuple[Any, dict[str, Any]]:
    model = assemble_model(layout.checkpoint("step3_rpn"), layout.checkpoint("step4_fast_rcnn"))
    model.cfg = with_settings(model.cfg, settings)
    # Sanity: the shared convs of step 4 must equal step 3's (step 4 never trained them).
    step4 = read_checkpoint(layout.checkpoint("step4_fast_rcnn"))
    drift = max(
        (float((v - step4["groups"]["shared"][k]).abs().max()) for k, v in model.backbone.shared.state_dict().items()
         if v.is_floating_point()),
        default=0.0,
    )
    save_checkpoint(
        layout.checkpoint("final"),
        model,
        extra={"stage": "assemble", "shared_rpn_from": "step3_rpn", "detector_from": "step4_fast_rcnn"},
    )
    metrics = {
        "shared_conv_drift_step3_vs_step4": drift,
        "parameters": {name: sum(p.numel() for p in ps) for name, ps in model.parameter_groups().items()},
    }
    write_json(layout.metrics("assemble"), metrics)
    return model, metrics


@task(name="assemble")
def assemble_task(settings: Settings) -> dict[str, Any]:
    from tasks.tracking import stage_run

    with stage_run("assemble", settings.tracking.experiment, settings) as run:
        model, metrics = assemble(settings)
        run.log_stage_outputs("assemble", metrics)
    return metrics
