"""The pipeline's stages: the one place a stage is declared.

Everything else follows from ``REGISTRY``: dvc.yaml (``python -m flows.dvc_yaml`` writes it;
a test fails when it is out of date), the Prefect flow of each stage (``flows.stage``), the
params each stage may read (``flows.stage.stage_settings``), its inputs and outputs, and its
code dependencies (``tasks.code_deps``: computed from the imports of its entry module).
Adding a stage: one ``Stage`` here, plus its task.

A ``Stage`` names its task as ``"module:function"``; the task is called as
``function(*args, params)``. ``inputs`` are the files other stages write that it reads
(``${...}`` is DVC interpolation of params.yaml). The ablation rows are one ``StageGroup``,
a DVC ``foreach`` stage: ``ablation@<row>``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from model.ablations import ALL_ROWS, PAPER_TEST_COUNTS, AblationRow
from model.alternating import (
    FOUR_STEPS,
    INITIAL,
    PROPOSAL_CACHES,
    SS_FAST_RCNN,
    SS_PROPOSALS,
    STRONG_RPN,
    TRAINING_STEPS,
    TrainingStep,
)
from model.config import ProposalConfig
from tasks import layout

#: The runner every stage's ``cmd`` calls; it and its imports are code deps of every stage.
RUNNER_SCRIPT = "flows/stage.sh"
RUNNER_MODULE = "flows/stage.py"


@dataclass(frozen=True)
class Stage:
    """One DVC stage. ``outs`` are cached by DVC; ``reports`` are outputs kept out of the
    cache (small text files); ``plots`` are PNGs (not cached); its metrics file is
    ``layout.metrics(name)`` (``layout.row_metrics(key)`` for a row). Only a ``headline``
    stage's metrics file is declared as DVC ``metrics:`` (what ``dvc metrics show`` and
    ``dvc exp show`` print: the summary's few numbers); every other one is an uncached
    out, a file ``dvc metrics show <file>`` reads on request."""

    name: str
    desc: str
    task: str
    params: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    reports: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    metrics: str = ""
    headline: bool = False

    def __post_init__(self) -> None:
        if not self.metrics:
            object.__setattr__(self, "metrics", str(layout.metrics(self.name)))

    @property
    def entry_module(self) -> str:
        """The entry module's file (``tasks/train.py`` for ``tasks.train:train_step_task``)."""
        return self.task.split(":")[0].replace(".", "/") + ".py"


@dataclass(frozen=True)
class StageGroup:
    """A DVC ``foreach`` stage: one stage ``<name>@<key>`` per item; ``inputs`` may use
    ``${item.<field>}`` (the item's fields) and the ``desc`` ``${key}``."""

    name: str
    desc: str
    task: str
    params: tuple[str, ...]
    items: Mapping[str, Mapping[str, str]]
    inputs: tuple[str, ...] = ()
    comment: str = ""

    def stage(self, key: str) -> Stage:
        item = self.items[key]
        inputs = []
        for entry in self.inputs:
            for field_name, value in item.items():
                entry = entry.replace("${item.%s}" % field_name, value)
            inputs.append(entry)
        return Stage(
            name=f"{self.name}@{key}", desc=self.desc.replace("${key}", key), task=self.task, params=self.params,
            inputs=tuple(inputs), args=(key,), metrics=str(layout.row_metrics(key)),
        )


# ---------------------------------------------------------------- params every stage shares

PREPARED = str(layout.PREPARED)
INPUT = ("data.input",)
SS_SETTINGS = "ablations.selective_search"
#: The stronger-RPN ablation's backbone (each model profile chooses it).
STRONGER_RPN = "ablations.stronger_rpn"
RECALL = ("evaluate.recall_top_ns", "evaluate.recall_ious")
#: The run's place in a seed study (``tasks.settings.run_seed``): every training stage reads it.
SEED = "pipeline.seed"
#: How many processes run a training or inference stage (``tasks.world``), and how a training
#: stage's learning rate follows.
NPROC = "pipeline.nproc_per_node"
LR_SCALING = "pipeline.lr_scaling"
DATA_PARALLEL = (NPROC, LR_SCALING)


def _ckpt(stage: str) -> str:
    return str(layout.checkpoint(stage))


def _caches(stage: str) -> tuple[str, ...]:
    return tuple(str(layout.proposals(stage, role)) for role in ("train", "test"))


def _plot(stage: str, *names: str) -> tuple[str, ...]:
    return tuple(str(layout.plot(stage, n)) for n in names)


def training_inputs(step: TrainingStep) -> tuple[str, ...]:
    """What a training stage reads: its start, the initial network (for resets), the
    proposal cache it trains on and the RPN checkpoint that cache's fingerprint names."""
    inputs: list[str] = []
    if step.start in TRAINING_STEPS or step.start == INITIAL:
        inputs.append(_ckpt(step.start))
    if step.reset is not None:
        inputs.append(_ckpt(INITIAL))
    if step.proposals is not None:
        inputs.extend(_cache_inputs(step.proposals, "train"))
    return (*dict.fromkeys(inputs), PREPARED)


def _cache_inputs(cache: str, role: str) -> list[str]:
    """A proposal cache and the RPN checkpoint its fingerprint names (none for SS)."""
    rpn = [_ckpt(PROPOSAL_CACHES[cache])] if cache in PROPOSAL_CACHES else []
    return [*rpn, str(layout.proposals(cache, role))]


def training_params(step: TrainingStep) -> tuple[str, ...]:
    """The params a training stage reads: its schedule and its half's settings (no
    evaluation setting: a detector step is scored by its own stage, ``score_stage``)."""
    schedule = f"train.{step.schedule}"
    if step.kind == "rpn":
        fresh = ("model.pretrained", "model.anchors", STRONGER_RPN, "pipeline.init_seed")
        return (*INPUT, "model.rpn", schedule, SEED, *DATA_PARALLEL, *(fresh if step is STRONG_RPN else ()))
    return (*INPUT, "model.roi", _cache_settings(step), schedule, SEED, *DATA_PARALLEL)


def _cache_settings(step: TrainingStep) -> str:
    """The settings a detector step's proposal cache is checked against (its fingerprint)."""
    return SS_SETTINGS if step.proposals == SS_PROPOSALS else "model.cache_proposals"


def training_stage(step: TrainingStep, desc: str) -> Stage:
    return Stage(step.name, desc, "tasks.train:train_step_task", training_params(step), training_inputs(step),
                 outs=(_ckpt(step.name),), plots=_plot(step.name, "loss"), args=(step.name,))


def score_stage(step: TrainingStep) -> Stage:
    """``<step>_score``: detector step ``step`` on its cached test proposals (``tasks.score``)."""
    name = f"{step.name}_score"
    inputs = (_ckpt(step.name), *_cache_inputs(step.proposals, "test"), PREPARED)
    return Stage(name, f"{step.name} scored on the test split with its cached test proposals (all of them).",
                 "tasks.score:score_step_task", (*INPUT, "model.test", _cache_settings(step), "evaluate.metric", NPROC),
                 tuple(dict.fromkeys(inputs)), plots=_plot(name, "pr"), args=(name, step.name))


def proposal_stage(cache: str) -> Stage:
    rpn = PROPOSAL_CACHES[cache]
    return Stage(cache, f"Cache {rpn.split('_')[0].replace('step', 'step ')}'s proposals (train + test) with their "
                 "fingerprint; proposal recall.", "tasks.proposals:cache_proposals_task",
                 (*INPUT, "model.cache_proposals", *RECALL, NPROC), (_ckpt(rpn), PREPARED), outs=_caches(cache),
                 plots=_plot(cache, "recall_vs_iou"), args=(cache,))


STEP1, STEP2, STEP3, STEP4 = FOUR_STEPS

# Approximate joint training (tasks/joint.py), compared with the four steps in the report
# (tasks/report_joint.py).
JOINT_TRAIN = "joint_train"
JOINT_EVALUATE = "joint_evaluate"
#: The joint model's VOC devkit results files.
JOINT_RESULTS = layout.OUTPUTS / JOINT_EVALUATE / "results"
#: The stages whose metrics the report's joint-vs-alternating section reads: the four
#: training steps (wall time), ``evaluate`` (the shared model's mAP), then the joint pair.
JOINT_COMPARISON: tuple[str, ...] = (*(step.name for step in FOUR_STEPS), "evaluate", JOINT_TRAIN, JOINT_EVALUATE)

#: detector of an ablation row -> the checkpoint it is read from.
DETECTOR_CHECKPOINTS: Mapping[str, str] = {
    "shared": _ckpt("final"), "unshared": _ckpt(STEP2.name), "ss": _ckpt(SS_FAST_RCNN.name),
    "one_stage": _ckpt("one_stage"),
}
#: RPN proposal source of an ablation row -> the checkpoint whose RPN makes its test proposals.
RPN_CHECKPOINTS: Mapping[str, str] = {
    "rpn": _ckpt("final"), "rpn_unshared": _ckpt(STEP1.name), "rpn_strong": _ckpt(STRONG_RPN.name),
}


def row_inputs(row: AblationRow) -> list[Path]:
    """The files a row reads besides the data: its detector, then its proposals' source."""
    inputs = [DETECTOR_CHECKPOINTS[row.detector]]
    if row.proposal_source in RPN_CHECKPOINTS:
        inputs.append(RPN_CHECKPOINTS[row.proposal_source])
    elif row.proposal_source == "ss":
        inputs.append(str(layout.proposals(SS_PROPOSALS, "test")))
    return [Path(p) for p in dict.fromkeys(inputs)]


def _row_item(row: AblationRow) -> dict[str, str]:
    detector, *proposals = (str(p) for p in row_inputs(row))
    # A row with one input (its detector is its own RPN) names the manifest in the second
    # slot: a foreach item has the same fields for every row.
    return {"detector": detector, "proposals": proposals[0] if proposals else str(layout.MANIFEST)}


#: The test proposal settings a row reads: every field but the counts that every row
#: replaces by the paper's (``model.ablations.PAPER_TEST_COUNTS``).
ROW_PROPOSAL_PARAMS: tuple[str, ...] = tuple(
    f"model.test_proposals.{f.name}" for f in dataclasses.fields(ProposalConfig) if f.name not in PAPER_TEST_COUNTS
)

ABLATION_ROWS = StageGroup(
    "ablation", "Ablation row ${key}: its detector on its test proposals, VOC07 mAP.",
    "tasks.ablations:ablation_row_task",
    (*INPUT, *ROW_PROPOSAL_PARAMS, "model.test", "evaluate.metric", SS_SETTINGS),
    items={row.key: _row_item(row) for row in ALL_ROWS},
    inputs=("${item.detector}", "${item.proposals}", PREPARED),
    comment="One stage per row of model/ablations.py (the paper's Table 2 and 10 rows, then the\n"
    "proposal-count sweep): ablation@<row>. Each tests a trained model: an evaluation, no training.",
)

#: The training stages: each records its wall time (``wall_seconds``), summed by the summary.
TIMED_STAGES: tuple[str, ...] = (*TRAINING_STEPS, "one_stage")
#: What the summary stage reads: the metrics files of the stages that measured its numbers.
SUMMARY_INPUTS: tuple[str, ...] = tuple(
    str(layout.metrics(s)) for s in ("evaluate", "proposal_recall", "ablation_report", *TIMED_STAGES)
)

#: Every stage in pipeline order (dvc.yaml's order); the ablation rows' group in its place.
REGISTRY: tuple[Stage | StageGroup, ...] = (
    Stage("prepare_data", "Generate the synthetic dataset (or check an external one) and write its manifest.",
          "tasks.data:prepare_data_task",
          ("data.name", "data.layout", "data.source", "data.train_split", "data.test_split", "data.classes",
           "data.synthetic", "data.input"),
          ("${data.source}",), outs=(PREPARED,)),
    Stage(INITIAL, "ImageNet backbone + seeded fresh RPN / classifier layers: the start of steps 1 and 2.",
          "tasks.weights:init_weights_task",
          ("model.backbone", "model.pretrained", "model.backbone_options", "model.anchors", "model.rpn.mid_channels",
           "pipeline.init_seed", SEED),
          (str(layout.CLASSES),), outs=(_ckpt(INITIAL),)),
    training_stage(STEP1, "Step 1: train the RPN (shared convs + RPN layers) from init_weights."),
    proposal_stage("step1_proposals"),
    training_stage(STEP2, "Step 2: train Fast R-CNN (shared convs + detector) from init_weights on step 1's "
                   "proposals."),
    training_stage(STEP3, "Step 3: step 2's shared convs frozen, RPN layers re-initialised and trained alone."),
    proposal_stage("step3_proposals"),
    training_stage(STEP4, "Step 4: shared convs frozen, detector trained on step 3's proposals (cls/bbox "
                   "re-initialised)."),
    Stage("assemble", "Final model: shared convs + step-3 RPN + step-4 detector; logged to MLflow.",
          "tasks.assemble:assemble_task", (*INPUT, "model.test_proposals", "model.test"),
          (_ckpt(STEP3.name), _ckpt(STEP4.name)), outs=(_ckpt("final"),)),
    Stage("evaluate", "VOC07 mAP, per-class AP, COCO AP of the shared model and the unshared pair (step-1 RPN + "
          "step-2 detector).", "tasks.evaluate:evaluate_task",
          (*INPUT, "model.test_proposals", "model.test", "evaluate.metric", NPROC),
          (_ckpt("final"), _ckpt(STEP1.name), _ckpt(STEP2.name), PREPARED),
          outs=tuple(str(layout.results_dir(r)) for r in ("shared", "unshared")),
          plots=_plot("evaluate", "pr_shared", "pr_unshared")),
    score_stage(STEP2),
    score_stage(STEP4),
    # ---------------------------------------------------------------- approximate joint training (tasks/joint.py)
    Stage(JOINT_TRAIN, "Approximate joint training (paper sec. 3.2 ii): shared convs + RPN + detector, one loss, "
          "from init_weights with the alternating steps' input scale and RoI sampling.",
          "tasks.joint:joint_train_task", (*INPUT, "model.rpn", "model.train_proposals", "model.roi", "train.joint", SEED,
                                         *DATA_PARALLEL),
          (_ckpt(INITIAL), PREPARED), outs=(_ckpt(JOINT_TRAIN),), plots=_plot(JOINT_TRAIN, "loss")),
    Stage(JOINT_EVALUATE, "VOC07 mAP, per-class AP, COCO AP of the joint model with evaluate's test settings; "
          "registered in MLflow.", "tasks.joint:joint_evaluate_task",
          (*INPUT, "model.test_proposals", "model.test", "evaluate.metric", NPROC), (_ckpt(JOINT_TRAIN), PREPARED),
          outs=(str(JOINT_RESULTS),), plots=_plot(JOINT_EVALUATE, "pr")),
    # ---------------------------------------------------------------- ablations (tasks/ablations.py)
    Stage(SS_PROPOSALS, "Selective search (fast, ~2000 boxes) on train + test, cached with its fingerprint; recall.",
          "tasks.ss_proposals:ss_proposals_task", (SS_SETTINGS, *RECALL), (PREPARED,), outs=_caches(SS_PROPOSALS),
          plots=_plot(SS_PROPOSALS, "recall_vs_iou")),
    training_stage(SS_FAST_RCNN, "Fast R-CNN trained as step 2 (from init_weights) on selective-search proposals: "
                   "the detector of the SS-train rows."),
    score_stage(SS_FAST_RCNN),
    training_stage(STRONG_RPN, "An RPN trained as step 1 on the stronger backbone of ablations.stronger_rpn (the "
                   "paper: VGG-16 vs ZF)."),
    Stage("one_stage", "The one-stage detector (Table 10): class-specific scores and boxes straight from the "
          "sliding window.", "tasks.one_stage:one_stage_task",
          (*INPUT, "model.backbone", "model.pretrained", "model.backbone_options", "model.anchors",
           "model.rpn.mid_channels", "model.rpn.allowed_border", "model.roi", "train.one_stage",
           "pipeline.init_seed", SEED, *DATA_PARALLEL),
          (PREPARED,), outs=(_ckpt("one_stage"),), plots=_plot("one_stage", "loss")),
    Stage("one_stage_score", "The one-stage detector scored on the test split (a stage of its own: evaluation "
          "settings are no input of its training).", "tasks.one_stage:one_stage_score_task",
          (*INPUT, "model.test", "evaluate.metric", NPROC), (_ckpt("one_stage"), PREPARED),
          plots=_plot("one_stage_score", "pr")),
    ABLATION_ROWS,
    Stage("proposal_recall", "Recall vs IoU (0.5..0.95) of SS and RPN proposals, 300/1000/2000 per image (the "
          "paper's figure 4).", "tasks.proposal_recall:proposal_recall_task",
          (*INPUT, "model.cache_proposals", *RECALL, SS_SETTINGS),
          (_ckpt("final"), _ckpt(STEP1.name), _ckpt(STRONG_RPN.name), str(layout.proposals(SS_PROPOSALS, "test")),
           PREPARED),
          reports=(str(layout.report("recall_vs_iou.csv")),), plots=_plot("proposal_recall", "recall_vs_iou")),
    Stage("timing", "The paper's Table 5 on this machine: ms per image (conv, proposal, region-wise) of SS + "
          "Fast R-CNN and RPN + Fast R-CNN.", "tasks.timing:timing_task",
          (*INPUT, *ROW_PROPOSAL_PARAMS, "model.test", SS_SETTINGS, "evaluate.timing_images"),
          (_ckpt("final"), PREPARED)),
    Stage("ablation_report", "The ablation table beside the paper's numbers, the headline, recall at 300 and "
          "Table 5: reports/ablations.{md,csv,png}, printed.", "tasks.ablation_report:ablation_report_task", (),
          (*(str(layout.row_metrics(row.key)) for row in ALL_ROWS), str(layout.report("recall_vs_iou.csv")),
           str(layout.metrics("timing")), *(str(layout.metrics(s)) for s in JOINT_COMPARISON)),
          reports=(str(layout.report("ablations.md")), str(layout.report("ablations.csv"))),
          plots=(str(layout.report("ablations.png")),)),
    Stage("summary", "The headline numbers of the execution (mAP, COCO AP, RPN recall at 300, ablation signs, "
          "training time): the pipeline's DVC metrics; ends the MLflow parent run.", "tasks.summary:summary_task", (),
          SUMMARY_INPUTS, headline=True),
)


def _expanded() -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    for entry in REGISTRY:
        if isinstance(entry, StageGroup):
            stages.update({f"{entry.name}@{key}": entry.stage(key) for key in entry.items})
        else:
            stages[entry.name] = entry
    return stages


#: Every stage DVC knows, by its DVC name (``ablation@<row>`` for the rows), in order.
STAGE_SPECS: Mapping[str, Stage] = _expanded()
STAGES: tuple[str, ...] = tuple(STAGE_SPECS)
#: The alternating-training stages in pipeline order.
ALTERNATING_STAGES: tuple[str, ...] = STAGES[: STAGES.index("evaluate") + 1]
ROW_KEYS: tuple[str, ...] = tuple(ABLATION_ROWS.items)


def row_stage(key: str) -> str:
    """DVC's name of the foreach stage that evaluates ablation row ``key``."""
    return f"{ABLATION_ROWS.name}@{key}"


def row_key(stage: str) -> str | None:
    """The ablation row a stage evaluates (``ablation@<key>`` -> ``key``); None for other stages."""
    prefix = f"{ABLATION_ROWS.name}@"
    return stage[len(prefix):] if stage.startswith(prefix) else None


def stage_spec(name: str) -> Stage:
    try:
        return STAGE_SPECS[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; stages are {list(STAGES)}") from None


def producers() -> dict[str, str]:
    """Output path -> the stage that writes it (outs, reports, plots and metrics files)."""
    made: dict[str, str] = {}
    for stage in STAGE_SPECS.values():
        for path in (*stage.outs, *stage.reports, *stage.plots, stage.metrics):
            made[path] = stage.name
    return made


def source_of(entry: str) -> tuple[str, str] | None:
    """(stage, declared path) of the stage that writes input ``entry``: a path it declares,
    or a file inside a folder it declares (``data/prepared/classes.json``); None for a
    file no stage writes (``${data.source}``, the dataset)."""
    made_by = producers()
    if entry in made_by:
        return made_by[entry], entry
    return next(((stage, path) for path, stage in made_by.items() if entry.startswith(path + "/")), None)


def upstream(name: str) -> tuple[str, ...]:
    """The stages whose files stage ``name`` reads, in pipeline order."""
    sources = {found[0] for entry in stage_spec(name).inputs if (found := source_of(entry)) is not None}
    return tuple(stage for stage in STAGES if stage in sources)

