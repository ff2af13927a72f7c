"""The paper's ablation study (ZF net, PASCAL VOC 2007 test) as data.

Each ``AblationRow`` says what one row of the study changes and which paper row its change
is measured against. The pipeline turns rows into runs; ``tasks.ablation_report`` turns
results into the comparison table. Sources: Table 2 (ablations) and Table 10 (one-stage)
of Ren et al., "Faster R-CNN", TPAMI version; all numbers are mAP in percent.

Which model each row tests (``detector``) and where its test proposals come from
(``proposal_source``):

- ``shared``: the four-step model, step-3 RPN + step-4 detector (the paper's 59.9).
- ``unshared``: the step-1 RPN with the step-2 detector, no feature sharing (58.7).
- ``ss_rpn_test`` .. ``stronger_rpn``: one Fast R-CNN detector trained on selective-search
  proposals (``detector="ss"``), tested on proposals of an RPN that does not share features
  with it. As in the paper their changes count against ``ss_rpn_test`` (56.8), not 59.9.
  ``ss_rpn_test`` itself is measured against ``unshared``: both test with the same unshared
  step-1 RPN, so the difference isolates training on SS instead of RPN proposals (the
  paper's "inconsistency between the training/testing proposals").
- ``one_stage``: ``model.one_stage.OneStageDetector`` (Table 10), measured against the
  two-stage system of that table, "RPN + ZF, unshared, 300 proposals, Fast R-CNN 1 scale",
  which is exactly the ``unshared`` row (58.7).

``proposal_source`` values: ``"rpn"`` the shared step-3 RPN, ``"rpn_unshared"`` the
step-1 RPN, ``"rpn_strong"`` an RPN on a stronger backbone (VGG-16 vs ZF in the paper;
EfficientNet-Lite2 vs Lite0 on the CPU default), ``"ss"`` selective search, ``"dense"`` the
anchors themselves scored by the one-stage head (no separate proposal step).

Decision on "no cls, random N": the paper removes the cls layer at test time, "(thus no
NMS/ranking is used), we randomly sample N proposals from the unscored regions". We follow
that literally: all decoded, clipped, size-filtered boxes are candidates (``pre_nms_top_n``
-1), none is suppressed (``use_nms`` False) and ``N`` are drawn uniformly without
replacement (``ranking="random"`` then ``post_nms_top_n`` N). Running NMS in random order
first would be another reading; it is not the one the paper describes.

Paper one-stage number: Table 10 gives 53.8 for the one-stage system at one test scale and
53.9 at five scales, against 58.7 for the two-stage system at one scale. Our one-stage
detector (like every row here) tests at one scale, so the row carries 53.8; the five-scale
value is kept in ``PAPER_RESULTS`` as ``one_stage_5_scales``.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from model.config import ProposalConfig

PROPOSAL_SOURCES = ("rpn", "rpn_unshared", "rpn_strong", "ss", "dense")
DETECTORS = ("shared", "unshared", "ss", "one_stage")

# mAP (%) on VOC 2007 test, ZF net unless named otherwise (Table 2 and Table 10).
PAPER_RESULTS: Mapping[str, float] = MappingProxyType(
    {
        "shared": 59.9,
        "unshared": 58.7,
        "ss_train_ss_test": 58.7,  # SS 2000 train / SS 2000 test: the Fast R-CNN baseline
        "ss_rpn_test": 56.8,
        "ss_rpn_test_1000": 56.3,
        "top_100": 55.1,
        "no_nms": 55.2,
        "no_cls_random_100": 44.6,
        "no_cls_random_300": 51.4,
        "no_cls_random_1000": 55.8,
        "no_reg": 52.1,
        "no_reg_1000": 51.3,
        "stronger_rpn": 59.2,
        "two_stage": 58.7,  # Table 10: RPN + ZF unshared, 300, Fast R-CNN 1 scale
        "one_stage": 53.8,  # Table 10: dense 3 scales x 3 ratios, 20000 windows, 1 scale
        "one_stage_5_scales": 53.9,
    }
)


@dataclass(frozen=True)
class AblationRow:
    """One row of the ablation study.

    ``proposal_cfg`` holds overrides of the test ``ProposalConfig`` (field name -> value);
    empty means the base test settings (6000 -> NMS 0.7 -> 300). ``paper_baseline_key``
    names the row whose paper mAP this row's change is measured against (None for the
    baseline of the whole study).
    """

    key: str
    label: str
    paper_map: float
    paper_baseline_key: str | None
    description: str
    proposal_source: str
    detector: str
    proposal_cfg: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.proposal_source not in PROPOSAL_SOURCES:
            raise ValueError(
                f"ablation row {self.key!r}: proposal_source must be one of {PROPOSAL_SOURCES}, "
                f"got {self.proposal_source!r}"
            )
        if self.detector not in DETECTORS:
            raise ValueError(
                f"ablation row {self.key!r}: detector must be one of {DETECTORS}, got {self.detector!r}"
            )
        _check_overrides(self.key, self.proposal_cfg)
        # Read-only view: rows are module-level constants shared by every caller.
        object.__setattr__(self, "proposal_cfg", MappingProxyType(dict(self.proposal_cfg)))


def _check_overrides(key: str, overrides: Mapping[str, Any]) -> None:
    known = {f.name for f in dataclasses.fields(ProposalConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"ablation row {key!r}: unknown ProposalConfig field(s) {unknown}")


ABLATION_ROWS: tuple[AblationRow, ...] = (
    AblationRow(
        key="shared",
        label="shared (baseline)",
        paper_map=PAPER_RESULTS["shared"],
        paper_baseline_key=None,
        description="the four-step model (step-3 RPN + step-4 detector, shared convs), RPN top 300",
        proposal_source="rpn",
        detector="shared",
    ),
    AblationRow(
        key="unshared",
        label="unshared",
        paper_map=PAPER_RESULTS["unshared"],
        paper_baseline_key="shared",
        description="step-1 RPN with the step-2 detector, no shared convs",
        proposal_source="rpn_unshared",
        detector="unshared",
    ),
    AblationRow(
        key="ss_rpn_test",
        label="SS train, RPN test",
        paper_map=PAPER_RESULTS["ss_rpn_test"],
        paper_baseline_key="unshared",
        description="detector trained on selective-search proposals, tested on the unshared RPN's top 300",
        proposal_source="rpn_unshared",
        detector="ss",
    ),
    AblationRow(
        key="top_100",
        label="top-100",
        paper_map=PAPER_RESULTS["top_100"],
        paper_baseline_key="ss_rpn_test",
        description="SS-trained detector; RPN top 100 at test",
        proposal_source="rpn_unshared",
        detector="ss",
        proposal_cfg={"post_nms_top_n": 100},
    ),
    AblationRow(
        key="no_nms",
        label="no NMS",
        paper_map=PAPER_RESULTS["no_nms"],
        paper_baseline_key="ss_rpn_test",
        description="SS-trained detector; RPN top 6000 at test, no NMS",
        proposal_source="rpn_unshared",
        detector="ss",
        proposal_cfg={"pre_nms_top_n": 6000, "post_nms_top_n": 6000, "use_nms": False},
    ),
    AblationRow(
        key="no_cls_random_1000",
        label="no cls, random 1000",
        paper_map=PAPER_RESULTS["no_cls_random_1000"],
        paper_baseline_key="ss_rpn_test",
        description="SS-trained detector; 1000 boxes drawn at random from the RPN's boxes "
        "(no cls: no ranking, no NMS)",
        proposal_source="rpn_unshared",
        detector="ss",
        proposal_cfg={"pre_nms_top_n": -1, "post_nms_top_n": 1000, "use_nms": False, "ranking": "random"},
    ),
    AblationRow(
        key="no_cls_random_100",
        label="no cls, random 100",
        paper_map=PAPER_RESULTS["no_cls_random_100"],
        paper_baseline_key="ss_rpn_test",
        description="SS-trained detector; 100 boxes drawn at random from the RPN's boxes "
        "(no cls: no ranking, no NMS)",
        proposal_source="rpn_unshared",
        detector="ss",
        proposal_cfg={"pre_nms_top_n": -1, "post_nms_top_n": 100, "use_nms": False, "ranking": "random"},
    ),
    AblationRow(
        key="no_reg",
        label="no reg",
        paper_map=PAPER_RESULTS["no_reg"],
        paper_baseline_key="ss_rpn_test",
        description="SS-trained detector; the anchors themselves as proposals (no reg), "
        "top 300 by score",
        proposal_source="rpn_unshared",
        detector="ss",
        proposal_cfg={"use_regression": False, "post_nms_top_n": 300},
    ),
    AblationRow(
        key="stronger_rpn",
        label="stronger RPN",
        paper_map=PAPER_RESULTS["stronger_rpn"],
        paper_baseline_key="ss_rpn_test",
        description="SS-trained detector; top 300 of a stronger backbone's RPN "
        "(VGG-16 vs ZF in the paper, EfficientNet-Lite2 vs Lite0 on the CPU default)",
        proposal_source="rpn_strong",
        detector="ss",
    ),
    AblationRow(
        key="one_stage",
        label="one-stage",
        paper_map=PAPER_RESULTS["one_stage"],
        paper_baseline_key="unshared",
        description="one-stage: class-specific detection straight from the sliding window "
        "on dense anchors (3 scales x 3 ratios), vs the unshared two-stage system",
        proposal_source="dense",
        detector="one_stage",
    ),
)

# The proposal-count sweep (Table 2's other rows, and the counts it leaves out): the same
# SS-trained detector tested on N of SS's or the unshared RPN's proposals. The paper has
# no number for SS 1000 / 300 nor RPN 2000 at test: ``paper_map`` NaN, so the report has
# no paper change for them.
SWEEP_ROWS: tuple[AblationRow, ...] = (
    AblationRow(
        key="ss_test_2000",
        label="SS train, SS test 2000",
        paper_map=PAPER_RESULTS["ss_train_ss_test"],
        paper_baseline_key="ss_rpn_test",
        description="SS-trained detector; selective search's 2000 at test (Fast R-CNN's own setting)",
        proposal_source="ss",
        detector="ss",
        proposal_cfg={"post_nms_top_n": 2000},
    ),
    AblationRow(
        key="ss_test_1000",
        label="SS train, SS test 1000",
        paper_map=math.nan,
        paper_baseline_key="ss_test_2000",
        description="SS-trained detector; selective search's first 1000 at test",
        proposal_source="ss",
        detector="ss",
        proposal_cfg={"post_nms_top_n": 1000},
    ),
    AblationRow(
        key="ss_test_300",
        label="SS train, SS test 300",
        paper_map=math.nan,
        paper_baseline_key="ss_test_2000",
        description="SS-trained detector; selective search's first 300 at test",
        proposal_source="ss",
        detector="ss",
        proposal_cfg={"post_nms_top_n": 300},
    ),
    AblationRow(
        key="rpn_test_2000",
        label="SS train, RPN test 2000",
        paper_map=math.nan,
        paper_baseline_key="ss_rpn_test",
        description="SS-trained detector; the unshared RPN's top 2000 at test",
        proposal_source="rpn_unshared",
        detector="ss",
        proposal_cfg={"post_nms_top_n": 2000},
    ),
    AblationRow(
        key="rpn_test_1000",
        label="SS train, RPN test 1000",
        paper_map=PAPER_RESULTS["ss_rpn_test_1000"],
        paper_baseline_key="ss_rpn_test",
        description="SS-trained detector; the unshared RPN's top 1000 at test",
        proposal_source="rpn_unshared",
        detector="ss",
        proposal_cfg={"post_nms_top_n": 1000},
    ),
    AblationRow(
        key="no_cls_random_300",
        label="no cls, random 300",
        paper_map=PAPER_RESULTS["no_cls_random_300"],
        paper_baseline_key="ss_rpn_test",
        description="SS-trained detector; 300 boxes drawn at random from the RPN's boxes "
        "(no cls: no ranking, no NMS)",
        proposal_source="rpn_unshared",
        detector="ss",
        proposal_cfg={"pre_nms_top_n": -1, "post_nms_top_n": 300, "use_nms": False, "ranking": "random"},
    ),
    AblationRow(
        key="no_reg_1000",
        label="no reg, 1000",
        paper_map=PAPER_RESULTS["no_reg_1000"],
        paper_baseline_key="ss_rpn_test",
        description="SS-trained detector; the anchors themselves as proposals (no reg), top 1000 by score",
        proposal_source="rpn_unshared",
        detector="ss",
        proposal_cfg={"use_regression": False, "post_nms_top_n": 1000},
    ),
)

#: Every row the pipeline evaluates: the issue's table, then the sweep.
ALL_ROWS: tuple[AblationRow, ...] = ABLATION_ROWS + SWEEP_ROWS

ABLATION_ROWS_BY_KEY: Mapping[str, AblationRow] = MappingProxyType({row.key: row for row in ALL_ROWS})


def ablation_row(key: str) -> AblationRow:
    """The row named ``key``; a clear error listing the known keys otherwise."""
    try:
        return ABLATION_ROWS_BY_KEY[key]
    except KeyError:
        raise KeyError(f"unknown ablation row {key!r}; known: {list(ABLATION_ROWS_BY_KEY)}") from None


#: The paper's test-time proposal counts (6000 -> NMS -> 300). Every row starts from them,
#: whatever a profile's own ``test_proposals`` counts are (the synthetic profile tests on
#: 100), so that "top-100", "1000" and "no NMS 6000" mean what they mean in Table 2.
PAPER_TEST_COUNTS: Mapping[str, int] = MappingProxyType({"pre_nms_top_n": 6000, "post_nms_top_n": 300})


def ablation_proposal_config(row: AblationRow, base: ProposalConfig) -> ProposalConfig:
    """``base`` (the test proposal settings: NMS threshold, minimum size) with the paper's
    counts (``PAPER_TEST_COUNTS``), then ``row``'s overrides; ``base`` is not changed."""
    _check_overrides(row.key, row.proposal_cfg)
    return dataclasses.replace(base, **{**PAPER_TEST_COUNTS, **dict(row.proposal_cfg)})


def check_rows(rows: Sequence[AblationRow]) -> None:
    """Keys unique and every ``paper_baseline_key`` names a row of ``rows``."""
    keys = [row.key for row in rows]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"duplicate ablation row keys {duplicates}")
    missing = sorted({r.paper_baseline_key for r in rows if r.paper_baseline_key and r.paper_baseline_key not in keys})
    if missing:
        raise ValueError(f"ablation rows name baselines that are not rows: {missing}")


check_rows(ALL_ROWS)
