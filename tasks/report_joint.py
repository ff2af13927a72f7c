"""The report's section "approximate joint training" against "shared (alternating)" (paper sec. 3.2).

The paper: approximate joint training "produces close results" to the four-step alternating
training "while reducing the training time by about 25-50%". This section puts the two side
by side, both scored with ``evaluate``'s test settings on the test split:

- VOC07 mAP: ``metrics/evaluate.json`` ``mAP`` (the shared model) against
  ``metrics/joint_evaluate.json`` ``mAP``;
- training wall time: the four alternating training stages' ``wall_seconds`` summed against
  the one ``joint_train`` stage's, and the ratio joint / alternating (the paper's claim: 0.50-0.75).

A stage that was resumed records only the part its last process ran; the section says so
where it happens. The stages it reads are ``tasks.stages.JOINT_COMPARISON``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tasks import layout
from tasks.atomic import read_optional_json
from tasks.stages import JOINT_COMPARISON

#: The paper's claim: joint training time / alternating training time between these.
PAPER_TIME_RATIO = (0.50, 0.75)
ALTERNATING_TRAINING: tuple[str, ...] = JOINT_COMPARISON[:4]
ALTERNATING_EVALUATE, TRAIN_STAGE, EVALUATE_STAGE = JOINT_COMPARISON[4:]


def report_inputs() -> tuple[Path, ...]:
    """The metrics files the section reads (inputs of the report stage)."""
    return tuple(layout.metrics(s) for s in JOINT_COMPARISON)


def joint_comparison(read: Callable[[Path], Mapping[str, Any] | None] = read_optional_json) -> dict[str, Any] | None:
    """``{"alternating": {...}, "joint": {...}, "time_ratio", "map_difference"}``; None when any
    file is missing. Each side: ``map`` (fraction), ``wall_seconds``, ``resumed`` (a stage ran in
    more than one process, so its time is partial). ``read`` maps a metrics path to its content."""
    files = {path: read(path) for path in report_inputs()}
    if any(content is None for content in files.values()):
        return None

    def metric(stage: str, key: str) -> Any:
        content = files[layout.metrics(stage)]
        if key not in content:
            raise ValueError(f"{layout.metrics(stage)}: no {key!r} (re-run stage {stage})")
        return content[key]

    sides = {
        "alternating": {
            "map": float(metric(ALTERNATING_EVALUATE, "mAP")),
            "wall_seconds": sum(float(metric(s, layout.WALL_SECONDS)) for s in ALTERNATING_TRAINING),
            "resumed": any(int(metric(s, "resumed_from")) > 0 for s in ALTERNATING_TRAINING),
        },
        "joint": {
            "map": float(metric(EVALUATE_STAGE, "mAP")),
            "wall_seconds": float(metric(TRAIN_STAGE, layout.WALL_SECONDS)),
            "resumed": int(metric(TRAIN_STAGE, "resumed_from")) > 0,
        },
    }
    alternating_time = sides["alternating"]["wall_seconds"]
    ratio = sides["joint"]["wall_seconds"] / alternating_time if alternating_time > 0 else math.nan
    return {**sides, "time_ratio": ratio, "map_difference": sides["joint"]["map"] - sides["alternating"]["map"]}


def joint_summary(comparison: Mapping[str, Any] | None) -> dict[str, Any]:
    """The report's summary metrics of the section (JSON: no NaN)."""
    if comparison is None:
        return {}

    def finite(value: float) -> float | None:
        return None if math.isnan(value) else value

    return {"joint": {
        "map_joint": comparison["joint"]["map"], "map_alternating": comparison["alternating"]["map"],
        "wall_seconds_joint": comparison["joint"]["wall_seconds"],
        "wall_seconds_alternating": comparison["alternating"]["wall_seconds"],
        "time_ratio_joint_over_alternating": finite(comparison["time_ratio"]),
    }}


def joint_markdown(comparison: Mapping[str, Any] | None) -> str:
    """The section in Markdown; names what to run when its inputs are missing."""
    title = "## Approximate joint training vs alternating (paper sec. 3.2)\n\n"
    if comparison is None:
        return title + f"not available: run stages {', '.join(ALTERNATING_TRAINING)}, {ALTERNATING_EVALUATE}, " \
                       f"{TRAIN_STAGE} and {EVALUATE_STAGE}\n"
    low, high = PAPER_TIME_RATIO
    lines = [
        "| training | VOC07 mAP (%) | training wall time (s) | time / alternating | paper |",
        "|---|---:|---:|---:|---|",
    ]
    for key, label, paper in (("alternating", "shared (alternating, 4 steps)", "reported"),
                              ("joint", "approximate joint training", f"close mAP, {low:.2f}-{high:.2f}x the time")):
        side = comparison[key]
        ratio = 1.0 if key == "alternating" else comparison["time_ratio"]
        partial = " (resumed: partial)" if side["resumed"] else ""
        lines.append(f"| {label} | {100 * side['map']:.1f} | {side['wall_seconds']:.1f}{partial} | "
                     f"{ratio:.2f} | {paper} |")
    text = title + "\n".join(lines) + "\n"
    ratio = comparison["time_ratio"]
    text += (f"\nJoint minus alternating: {100 * comparison['map_difference']:+.1f} mAP points; joint training took "
             f"{ratio:.2f}x the alternating steps' time, a saving of {100 * (1 - ratio):.0f} % (paper: close mAP, "
             "25-50 % saving). Wall times are this machine's, comparable only within one run.\n")
    return text
