"""The four-step recipe as the library declares it (model/alternating.py)."""
from __future__ import annotations

import pytest
import torch

from model.alternating import (
    FOUR_STEPS,
    INITIAL,
    PREDICTOR_PREFIXES,
    SS_FAST_RCNN,
    STRONG_RPN,
    Reset,
    TrainingStep,
    reset_state,
)


def test_the_four_steps_are_the_papers() -> None:
    """Sec. 3.2 written out by hand: start, reset, trained groups, proposals."""
    table = [(s.paper_step, s.start, s.reset, s.trains, s.proposals) for s in FOUR_STEPS]
    assert table == [
        (1, INITIAL, None, ("shared", "rpn"), None),
        (2, INITIAL, None, ("shared", "detector"), "step1_proposals"),
        (3, "step2_fast_rcnn", Reset("rpn"), ("rpn",), None),
        (4, "step3_rpn", Reset("detector", ("cls_score.", "bbox_pred.")), ("detector",), "step3_proposals"),
    ]


def test_ablation_models_train_as_steps_1_and_2() -> None:
    step1, step2, *_ = FOUR_STEPS
    assert (SS_FAST_RCNN.start, SS_FAST_RCNN.trains, SS_FAST_RCNN.schedule) == (INITIAL, step2.trains, step2.schedule)
    assert SS_FAST_RCNN.proposals == "ss_proposals"
    assert (STRONG_RPN.trains, STRONG_RPN.schedule, STRONG_RPN.proposals) == (step1.trains, step1.schedule, None)


def test_a_detector_step_needs_proposals_and_an_rpn_step_none() -> None:
    with pytest.raises(ValueError, match="cached proposals"):
        TrainingStep("x", "detector", start=INITIAL, trains=("detector",), schedule="s")
    with pytest.raises(ValueError, match="cached proposals"):
        TrainingStep("x", "rpn", start=INITIAL, trains=("rpn",), schedule="s", proposals="p")


def test_reset_state_takes_only_the_prefixed_keys_from_the_initial_weights() -> None:
    current = {"fc6.weight": torch.ones(2), "cls_score.weight": torch.ones(2), "bbox_pred.bias": torch.ones(1)}
    initial = {"fc6.weight": torch.zeros(2), "cls_score.weight": torch.zeros(2), "bbox_pred.bias": torch.zeros(1)}
    state = reset_state(Reset("detector", PREDICTOR_PREFIXES), current, initial)
    assert state["fc6.weight"].tolist() == [1.0, 1.0]  # fc6/fc7 kept from step 3
    assert state["cls_score.weight"].tolist() == [0.0, 0.0] and state["bbox_pred.bias"].tolist() == [0.0]
    whole = reset_state(Reset("rpn"), {"conv.weight": torch.ones(1)}, {"conv.weight": torch.zeros(1)})
    assert whole["conv.weight"].tolist() == [0.0]
    with pytest.raises(KeyError, match="no keys under"):
        reset_state(Reset("detector", ("nothing.",)), current, initial)
