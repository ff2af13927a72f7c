"""Stage ``summary``: the pipeline's headline numbers in one small file, ``metrics/summary.json``.

It is the only file dvc.yaml declares as ``metrics:``, so ``dvc metrics show``, ``dvc metrics
diff`` and ``dvc exp show`` print these few numbers (a row that fits a terminal); every
other stage's metrics file stays a plain uncached output that ``dvc metrics show <file>``
still reads. The numbers (flat keys, short: they are column headers):

- ``mAP``, ``unshared``: VOC07 mAP of the final (shared) model and of the unshared pair;
- ``coco_AP``: COCO AP (IoU 0.5:0.95) of the final model;
- ``R300_50``, ``R300_70``: recall of the final model's RPN with 300 proposals per image
  at IoU 0.5 and 0.7 (the ``proposal_recall`` stage);
- ``agree`` of ``compared``: ablation rows whose change has the paper's sign; ``noise``:
  rows whose change is smaller than the seed-to-seed spread (0 with one seed);
- ``train_s``: wall time in seconds of the training stages (their ``wall_seconds``), summed (each records its own; a
  resumed stage counts the part it ran last).

The stage also ends the execution's MLflow parent run with these numbers (``tasks.tracking``).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasks import layout
from tasks.atomic import write_json
from tasks.lazy_prefect import task
from tasks.settings import Settings
from tasks.stages import SUMMARY_INPUTS, TIMED_STAGES

STAGE = "summary"
#: Files logged to the MLflow parent run beside the numbers.
PARENT_ARTIFACTS: tuple[Path, ...] = (
    layout.metrics(STAGE),
    layout.report("ablations.md"),
    layout.plot("proposal_recall", "recall_vs_iou"),
)


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; the summary needs it (run `dvc repro {path.stem}`)") from None
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error


def _number(source: Path, data: Mapping[str, Any], *keys: str) -> float:
    """``data[k1][k2]...`` as a float; a clear error naming the file and the key path if absent."""
    value: Any = data
    for key in keys:
        if not isinstance(value, Mapping) or key not in value:
            raise KeyError(f"{source}: no {'.'.join(keys)} (read by the summary stage)")
        value = value[key]
    return float(value)


def recall_key(iou: float) -> str:
    """The recall metrics' IoU key as ``tasks.proposals.recall_metrics`` writes it (``"0.5"``)."""
    return f"{iou:g}"


def summarize(metrics: Mapping[Path, Mapping[str, Any]]) -> dict[str, float | int]:
    """The headline numbers from the source metrics files (path -> parsed JSON)."""
    evaluate, recall, report = (layout.metrics(s) for s in ("evaluate", "proposal_recall", "ablation_report"))
    summary: dict[str, float | int] = {
        "mAP": _number(evaluate, metrics[evaluate], "mAP"),
        "unshared": _number(evaluate, metrics[evaluate], "unshared_mAP"),
        "coco_AP": _number(evaluate, metrics[evaluate], "shared", "coco", "AP"),
    }
    for iou, name in ((0.5, "R300_50"), (0.7, "R300_70")):
        summary[name] = _number(recall, metrics[recall], "rpn_shared", "recall", "300", recall_key(iou))
    summary["agree"] = int(_number(report, metrics[report], "signs_agree"))
    summary["compared"] = int(_number(report, metrics[report], "rows_compared"))
    verdicts = metrics[report].get("verdicts") or {}
    summary["noise"] = int(verdicts.get("within noise", 0))
    seconds = 0.0
    for stage in TIMED_STAGES:
        path = layout.metrics(stage)
        seconds += _number(path, metrics[path], layout.WALL_SECONDS)
    summary["train_s"] = round(seconds, 1)
    return summary


def write_summary() -> dict[str, float | int]:
    """Read the sources, write ``metrics/summary.json``; returns the numbers."""
    summary = summarize({path: _read(path) for path in map(Path, SUMMARY_INPUTS)})
    write_json(layout.metrics(STAGE), summary)
    return summary


@task(name="summary")
def summary_task(settings: Settings) -> dict[str, float | int]:
    """Prefect task: the summary file; its numbers and the report on the MLflow parent run."""
    from tasks.tracking import finish_parent_run, stage_run

    experiment = settings.tracking.experiment
    with stage_run(STAGE, experiment, settings) as run:
        summary = write_summary()
        run.log_metrics(summary)
        run.log_artifact(layout.metrics(STAGE), "metrics")
    finish_parent_run(experiment, summary, [p for p in PARENT_ARTIFACTS if p.is_file()])
    print(json.dumps(summary, indent=2))
    return summary
