"""The paper's four-step alternating training (Ren et al. 2015, sec. 3.2) as data.

=====  ==========================  ========================================  ===================
step   starts from                 trains                                    proposals
=====  ==========================  ========================================  ===================
1      the initial network         shared convs + RPN                        -
2      the initial network         shared convs + detector (top, cls, bbox)  step 1's, cached
3      step 2, RPN layers reset    RPN only (shared convs frozen)            -
4      step 3, cls/bbox reset      detector only (shared convs frozen)       step 3's, cached
=====  ==========================  ========================================  ===================

"Reset" puts layers back to their values in the initial network (the seeded fillers of
the fresh layers), following py-faster-rcnn's alt-opt scripts:

- step 3's RPN is initialised from the stage-1 Fast R-CNN model, which has no RPN layers,
  so they start from their fillers;
- step 4's net carries fc6/fc7 from step 3 (which carried them, frozen, from step 2) but
  not cls_score / bbox_pred, which the stage-2 Fast R-CNN initialises from its fillers.

The ablations add two models trained with the same loop: ``ss_fast_rcnn`` (as step 2, on
selective-search proposals) and ``strong_rpn`` (as step 1, on a fresh network with a
stronger backbone). Names are those of the models each step makes (the pipeline's stage
names); ``INITIAL`` is the initial network's.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # annotations only: the stage registry reads this module without torch
    from torch import Tensor

#: The initial network: ImageNet backbone, seeded fresh RPN / classifier layers.
INITIAL = "init_weights"
#: Keys of the detector group that step 4 re-initialises (fc6/fc7 are kept).
PREDICTOR_PREFIXES: tuple[str, ...] = ("cls_score.", "bbox_pred.")
#: A fresh network on the stronger backbone (``TrainingStep.start`` of ``strong_rpn``).
FRESH_STRONGER = "fresh_stronger_backbone"


@dataclass(frozen=True)
class Reset:
    """Layers put back to the initial network's values: ``group``'s parameters, only the
    keys under ``prefixes`` when given (None: the whole group)."""

    group: Literal["rpn", "detector"]
    prefixes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TrainingStep:
    """One training run of the recipe.

    ``start``: the model it starts from (``INITIAL``, another step's name, or
    ``FRESH_STRONGER``); ``reset``: layers reset to ``INITIAL`` after loading it;
    ``trains``: the parameter groups optimised (the others frozen); ``proposals``: the
    proposal cache a detector trains on (None for an RPN); ``schedule``: the step whose
    ``TrainSchedule`` it uses (the ablation models reuse steps 1 and 2's so their rows
    differ from the baseline only in what they vary); ``paper_step``: 1-4, None for the
    ablations' models.
    """

    name: str
    kind: Literal["rpn", "detector"]
    start: str
    trains: tuple[str, ...]
    schedule: str
    reset: Reset | None = None
    proposals: str | None = None
    paper_step: int | None = None

    def __post_init__(self) -> None:
        if (self.kind == "detector") != (self.proposals is not None):
            raise ValueError(f"step {self.name!r}: a detector step trains on cached proposals, an RPN step on none")


STEP1 = TrainingStep("step1_rpn", "rpn", start=INITIAL, trains=("shared", "rpn"), schedule="step1_rpn", paper_step=1)
STEP2 = TrainingStep("step2_fast_rcnn", "detector", start=INITIAL, trains=("shared", "detector"),
                     schedule="step2_fast_rcnn", proposals="step1_proposals", paper_step=2)
STEP3 = TrainingStep("step3_rpn", "rpn", start=STEP2.name, reset=Reset("rpn"), trains=("rpn",),
                     schedule="step3_rpn", paper_step=3)
STEP4 = TrainingStep("step4_fast_rcnn", "detector", start=STEP3.name, reset=Reset("detector", PREDICTOR_PREFIXES),
                     trains=("detector",), schedule="step4_fast_rcnn", proposals="step3_proposals", paper_step=4)
#: The paper's four steps in order.
FOUR_STEPS: tuple[TrainingStep, ...] = (STEP1, STEP2, STEP3, STEP4)
#: Which RPN step's proposals each cache holds.
PROPOSAL_CACHES: Mapping[str, str] = {"step1_proposals": STEP1.name, "step3_proposals": STEP3.name}

#: The ablations' selective-search cache.
SS_PROPOSALS = "ss_proposals"
SS_FAST_RCNN = TrainingStep("ss_fast_rcnn", "detector", start=INITIAL, trains=STEP2.trains, schedule=STEP2.schedule,
                            proposals=SS_PROPOSALS)
STRONG_RPN = TrainingStep("strong_rpn", "rpn", start=FRESH_STRONGER, trains=STEP1.trains, schedule=STEP1.schedule)

TRAINING_STEPS: Mapping[str, TrainingStep] = {s.name: s for s in (*FOUR_STEPS, SS_FAST_RCNN, STRONG_RPN)}


def training_step(name: str) -> TrainingStep:
    try:
        return TRAINING_STEPS[name]
    except KeyError:
        raise KeyError(f"unknown training step {name!r}; steps are {sorted(TRAINING_STEPS)}") from None


def reset_state(reset: Reset, current: Mapping[str, Tensor], initial: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The state dict of ``reset.group`` after the reset: ``current`` (the group's weights now)
    with the keys under ``reset.prefixes`` taken from ``initial`` (the initial network's
    weights of that group), or ``initial`` itself when ``prefixes`` is None.

    Values taken from ``initial`` are moved to the device of the weight they replace.
    """
    if reset.prefixes is None:
        chosen = dict(initial)
    else:
        chosen = {k: v for k, v in initial.items() if k.startswith(reset.prefixes)}
        if not chosen:
            raise KeyError(f"group {reset.group!r} of the initial network has no keys under {list(reset.prefixes)}")
    moved = {k: v.to(current[k].device) if k in current else v for k, v in chosen.items()}
    return moved if reset.prefixes is None else {**current, **moved}
