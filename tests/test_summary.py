"""The summary stage: the headline numbers from the stages' metrics files, and what dvc.yaml declares."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tasks import layout, summary
from tasks.stages import SUMMARY_INPUTS, TIMED_STAGES

ROOT = Path(__file__).resolve().parents[1]


def _sources(seconds: float = 2.5) -> dict[Path, dict]:
    recall = {"rpn_shared": {"recall": {"300": {"0.5": 0.75, "0.7": 0.25}}}}
    sources = {
        layout.metrics("evaluate"): {"mAP": 0.6, "unshared_mAP": 0.55, "shared": {"coco": {"AP": 0.3}}},
        layout.metrics("proposal_recall"): recall,
        layout.metrics("ablation_report"): {"signs_agree": 9, "rows_compared": 13,
                                            "verdicts": {"agrees": 7, "within noise": 3, "disagrees": 2, "n/a": 4}},
    }
    sources.update({layout.metrics(s): {layout.WALL_SECONDS: seconds} for s in TIMED_STAGES})
    return sources


def test_summary_takes_each_headline_number_from_its_stage() -> None:
    got = summary.summarize(_sources())
    assert got == {
        "mAP": 0.6, "unshared": 0.55, "coco_AP": 0.3, "R300_50": 0.75, "R300_70": 0.25,
        "agree": 9, "compared": 13, "noise": 3, "train_s": round(2.5 * len(TIMED_STAGES), 1),
    }
    # Every training stage's time is counted, the one-stage detector's included.
    assert {"step1_rpn", "step4_fast_rcnn", "ss_fast_rcnn", "strong_rpn", "one_stage"} <= set(TIMED_STAGES)


def test_a_missing_number_names_the_file_and_the_key() -> None:
    sources = _sources()
    del sources[layout.metrics("step3_rpn")][layout.WALL_SECONDS]
    with pytest.raises(KeyError, match=r"metrics/step3_rpn.json: no wall_seconds"):
        summary.summarize(sources)


def test_write_summary_reads_the_declared_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="metrics/evaluate.json: missing"):
        summary.write_summary()
    for path, data in _sources().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    assert set(map(Path, SUMMARY_INPUTS)) == set(_sources())
    returned = summary.write_summary()
    assert json.loads(layout.metrics("summary").read_text()) == returned == summary.summarize(_sources())


def test_only_the_summary_is_declared_as_dvc_metrics() -> None:
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    declared = {name: stage["metrics"] for name, stage in dvc["stages"].items() if "metrics" in stage.get("do", stage)}
    assert declared == {"summary": [{"metrics/summary.json": {"cache": False}}]}
    # The per-stage files are still written and tracked: uncached outs.
    evaluate_outs = dvc["stages"]["evaluate"]["outs"]
    assert {"metrics/evaluate.json": {"cache": False}} in evaluate_outs
    assert {"metrics/ablations/${key}.json": {"cache": False}} in dvc["stages"]["ablation"]["do"]["outs"]
