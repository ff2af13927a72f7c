"""One Prefect flow per DVC stage; ``python -m flows.stage <stage>`` is each stage's ``cmd``.

Each flow reads params.yaml restricted to the keys its stage declares in dvc.yaml
(``STAGE_PARAMS``; tests/test_pipeline_config.py checks the two lists agree), and runs
the stage's task. Run from the repository root (DVC does).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import flows  # noqa: F401  (Prefect defaults before prefect is imported)
from flows.runtime import call, run_flow
from prefect import flow

from tasks import (
    ablation_report,
    ablations,
    assemble,
    data,
    evaluate,
    one_stage,
    proposal_recall,
    proposals,
    ss_proposals,
    train,
    weights,
)
from tasks.layout import ROW_KEYS, STAGES, row_key, row_stage
from tasks.params import load_params, select

#: dvc.yaml ``params:`` of every stage.
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "prepare_data": data.PARAMS,
    "init_weights": weights.PARAMS,
    "step1_rpn": train.RPN_PARAMS["step1_rpn"],
    "step1_proposals": proposals.PARAMS,
    "step2_fast_rcnn": train.DETECTOR_PARAMS["step2_fast_rcnn"],
    "step3_rpn": train.RPN_PARAMS["step3_rpn"],
    "step3_proposals": proposals.PARAMS,
    "step4_fast_rcnn": train.DETECTOR_PARAMS["step4_fast_rcnn"],
    "assemble": assemble.PARAMS,
    "evaluate": evaluate.PARAMS,
    "ss_proposals": ss_proposals.PARAMS,
    "ss_fast_rcnn": train.DETECTOR_PARAMS["ss_fast_rcnn"],
    "strong_rpn": train.RPN_PARAMS["strong_rpn"],
    "one_stage": one_stage.PARAMS,
    **{row_stage(key): ablations.PARAMS for key in ROW_KEYS},
    "proposal_recall": proposal_recall.PARAMS,
    "ablation_report": ablation_report.PARAMS,
}


#: Read by every stage but not an input of any output (where runs are logged, like
#: MLFLOW_TRACKING_URI), so not a DVC param dependency: renaming the experiment
#: re-runs nothing.
TRACKING_PARAMS = ("tracking.experiment",)


def stage_params(stage: str, params_file: str = "params.yaml") -> dict[str, Any]:
    """params.yaml restricted to ``stage``'s declared keys, plus the ``tracking`` settings."""
    everything = load_params(params_file)
    selected = select(everything, STAGE_PARAMS[stage], source=params_file)
    selected.update(select(everything, TRACKING_PARAMS, source=params_file))
    return selected


@flow(name="prepare_data")
def prepare_data_flow() -> dict[str, Any]:
    return call(data.prepare_data_task, stage_params("prepare_data"))


@flow(name="init_weights")
def init_weights_flow() -> dict[str, Any]:
    return call(weights.init_weights_task, stage_params("init_weights"))


@flow(name="step1_rpn")
def step1_rpn_flow() -> dict[str, Any]:
    return call(train.train_step_task, "step1_rpn", stage_params("step1_rpn"))


@flow(name="step1_proposals")
def step1_proposals_flow() -> dict[str, Any]:
    return call(proposals.cache_proposals_task, "step1_proposals", stage_params("step1_proposals"))


@flow(name="step2_fast_rcnn")
def step2_fast_rcnn_flow() -> dict[str, Any]:
    return call(train.train_step_task, "step2_fast_rcnn", stage_params("step2_fast_rcnn"))


@flow(name="step3_rpn")
def step3_rpn_flow() -> dict[str, Any]:
    return call(train.train_step_task, "step3_rpn", stage_params("step3_rpn"))


@flow(name="step3_proposals")
def step3_proposals_flow() -> dict[str, Any]:
    return call(proposals.cache_proposals_task, "step3_proposals", stage_params("step3_proposals"))


@flow(name="step4_fast_rcnn")
def step4_fast_rcnn_flow() -> dict[str, Any]:
    return call(train.train_step_task, "step4_fast_rcnn", stage_params("step4_fast_rcnn"))


@flow(name="assemble")
def assemble_flow() -> dict[str, Any]:
    return call(assemble.assemble_task, stage_params("assemble"))


@flow(name="evaluate")
def evaluate_flow() -> dict[str, Any]:
    return call(evaluate.evaluate_task, stage_params("evaluate"))


@flow(name="ss_proposals")
def ss_proposals_flow() -> dict[str, Any]:
    return call(ss_proposals.ss_proposals_task, stage_params("ss_proposals"))


@flow(name="ss_fast_rcnn")
def ss_fast_rcnn_flow() -> dict[str, Any]:
    return call(train.train_step_task, "ss_fast_rcnn", stage_params("ss_fast_rcnn"))


@flow(name="strong_rpn")
def strong_rpn_flow() -> dict[str, Any]:
    return call(train.train_step_task, "strong_rpn", stage_params("strong_rpn"))


@flow(name="one_stage")
def one_stage_flow() -> dict[str, Any]:
    return call(one_stage.one_stage_task, stage_params("one_stage"))


@flow(name="ablation_row", flow_run_name="ablation@{row}")
def ablation_row_flow(row: str) -> dict[str, Any]:
    """One row of the ablation table (DVC stage ``ablation@<row>``)."""
    return call(ablations.ablation_row_task, row, stage_params(row_stage(row)))


@flow(name="proposal_recall")
def proposal_recall_flow() -> dict[str, Any]:
    return call(proposal_recall.proposal_recall_task, stage_params("proposal_recall"))


@flow(name="ablation_report")
def ablation_report_flow() -> dict[str, Any]:
    return call(ablation_report.ablation_report_task, stage_params("ablation_report"))


STAGE_FLOWS: dict[str, Callable[..., Any]] = {
    "prepare_data": prepare_data_flow,
    "init_weights": init_weights_flow,
    "step1_rpn": step1_rpn_flow,
    "step1_proposals": step1_proposals_flow,
    "step2_fast_rcnn": step2_fast_rcnn_flow,
    "step3_rpn": step3_rpn_flow,
    "step3_proposals": step3_proposals_flow,
    "step4_fast_rcnn": step4_fast_rcnn_flow,
    "assemble": assemble_flow,
    "evaluate": evaluate_flow,
    "ss_proposals": ss_proposals_flow,
    "ss_fast_rcnn": ss_fast_rcnn_flow,
    "strong_rpn": strong_rpn_flow,
    "one_stage": one_stage_flow,
    **{row_stage(key): ablation_row_flow for key in ROW_KEYS},
    "proposal_recall": proposal_recall_flow,
    "ablation_report": ablation_report_flow,
}
assert tuple(STAGE_FLOWS) == STAGES == tuple(STAGE_PARAMS)


def stage_call(stage: str) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """The flow that runs ``stage`` and its arguments (the row key for ``ablation@<row>``)."""
    key = row_key(stage)
    return STAGE_FLOWS[stage], ((key,) if key is not None else ())


def configure_threads() -> None:
    """``FRCNN_THREADS=n`` sets torch's CPU threads (default: torch's own choice, one per core).

    On a machine shared with other jobs, 1 thread can beat 2 (oversubscription); like
    the device, the thread count is not a DVC param (the results do not depend on it
    beyond float rounding).
    """
    value = os.environ.get("FRCNN_THREADS", "").strip()
    if value:
        import torch

        torch.set_num_threads(int(value))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.stage", description="Run one pipeline stage as a Prefect flow.")
    parser.add_argument("stage", choices=STAGES)
    args = parser.parse_args(argv)
    configure_threads()
    flow_fn, flow_args = stage_call(args.stage)
    run_flow(flow_fn, *flow_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
