"""The report's joint-vs-alternating section: mAP and summed training wall time, from the metrics files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks import layout
from tasks.report_joint import ALTERNATING_TRAINING, joint_comparison, joint_markdown, joint_summary
from tasks.stages import JOINT_COMPARISON, stage_spec


def _write(stage: str, content: dict) -> None:
    path = layout.metrics(stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content), encoding="utf-8")


@pytest.fixture
def metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for seconds, stage in zip((10.0, 20.0, 30.0, 40.0), ALTERNATING_TRAINING):
        _write(stage, {"iterations": 4, "resumed_from": 0, layout.WALL_SECONDS: seconds})
    _write("evaluate", {"mAP": 0.60, "unshared_mAP": 0.55})
    _write("joint_train", {"iterations": 4, "resumed_from": 2, layout.WALL_SECONDS: 65.0})
    _write("joint_evaluate", {"mAP": 0.59})
    return tmp_path


def test_sums_the_four_steps_and_compares_with_the_joint_stage(metrics_dir: Path) -> None:
    comparison = joint_comparison()
    assert comparison["alternating"] == {"map": 0.60, "wall_seconds": 100.0, "resumed": False}
    assert comparison["joint"] == {"map": 0.59, "wall_seconds": 65.0, "resumed": True}
    assert comparison["time_ratio"] == pytest.approx(0.65)
    assert comparison["map_difference"] == pytest.approx(-0.01)
    text = joint_markdown(comparison)
    assert "| shared (alternating, 4 steps) | 60.0 | 100.0 | 1.00 | reported |" in text
    assert "| approximate joint training | 59.0 | 65.0 (resumed: partial) | 0.65 |" in text
    assert "-1.0 mAP points" in text and "a saving of 35 %" in text
    assert joint_summary(comparison)["joint"]["time_ratio_joint_over_alternating"] == pytest.approx(0.65)


def test_a_missing_file_names_the_stages_to_run(metrics_dir: Path) -> None:
    layout.metrics("joint_evaluate").unlink()
    assert joint_comparison() is None
    assert "not available: run stages step1_rpn" in joint_markdown(None) and joint_summary(None) == {}


def test_a_metrics_file_without_wall_time_is_named(metrics_dir: Path) -> None:
    _write("step3_rpn", {"iterations": 4, "resumed_from": 0})
    with pytest.raises(ValueError, match=r"step3_rpn\.json: no 'wall_seconds' \(re-run stage step3_rpn\)"):
        joint_comparison()


def test_the_report_stage_reads_every_file_of_the_section() -> None:
    inputs = set(stage_spec("ablation_report").inputs)
    assert {str(layout.metrics(s)) for s in JOINT_COMPARISON} <= inputs
