"""A stage refuses bad settings and missing inputs with one line, exit code 2, no traceback.

Each case runs the stage's command line (``flows.stage.main``, what ``python -m flows.stage``
exits with) in a temporary workspace holding only a params.yaml (the committed default with
one value changed): the checks run before any work, so nothing is trained. One case runs
the real subprocess.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())


def _set(params: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = params
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value


_DELETE = object()


def _workspace(tmp_path: Path, changes: dict[str, Any]) -> None:
    params = yaml.safe_load(yaml.safe_dump(DEFAULT))
    for dotted, value in changes.items():
        _set(params, dotted.replace("__", "."), value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The generator script data.source names, relative to the workspace as under DVC.
    (tmp_path / "model" / "data").mkdir(parents=True, exist_ok=True)
    (tmp_path / "model" / "data" / "synthetic.py").write_text("")


@pytest.fixture
def run_stage(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """``run_stage(tmp_path, stage, **changes)`` -> (exit code, stderr) of the stage's command line."""
    from flows.stage import main

    def run(tmp_path: Path, stage: str, **changes: Any) -> subprocess.CompletedProcess:
        _workspace(tmp_path, changes)
        monkeypatch.chdir(tmp_path)
        capsys.readouterr()
        code = main([stage])
        captured = capsys.readouterr()
        return subprocess.CompletedProcess([stage], code, captured.out, captured.err)

    return run


def test_the_command_exits_2_with_one_line(tmp_path: Path) -> None:
    _workspace(tmp_path, {"train__step3_rpn__base_lr": "fast"})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FRCNN_PREFECT": "off"}
    result = subprocess.run([sys.executable, "-m", "flows.stage", "step3_rpn"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert_one_line(result, "params.yaml", "train.step3_rpn.base_lr = 'fast'", "expected a number")


def assert_one_line(result: subprocess.CompletedProcess, *parts: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for part in parts:
        assert part in lines[0], (part, lines[0])


@pytest.mark.parametrize(
    "stage,change,parts",
    [
        ("step1_rpn", {"train__step1_rpn__iterations": -4},
         ("params.yaml", "train.step1_rpn.iterations = -4", ">= 0")),
        ("step1_rpn", {"train__step1_rpn__iterations": 2.5},
         ("params.yaml", "train.step1_rpn.iterations = 2.5", "expected an integer")),
        ("step1_rpn", {"model__rpn__positive_iou": "high"},
         ("params.yaml", "model.rpn.positive_iou = 'high'", "expected a number")),
        ("step1_rpn", {"model__rpn__sigmaa": 3.0},
         ("params.yaml", "model.rpn.sigmaa", "unknown key", "sigma")),
        ("step1_rpn", {"train__step1_rpn__iterations": _DELETE},
         ("params.yaml", "train.step1_rpn.iterations", "missing")),
        ("step1_proposals", {"evaluate__recall_ious": [0.5, 1.5]},
         ("params.yaml", "evaluate.recall_ious[1] = 1.5", "(0, 1)")),
        ("evaluate", {"evaluate__metric": "voc2012"},
         ("params.yaml", "evaluate.metric = 'voc2012'", "'voc07'", "'area'")),
        ("prepare_data", {"data__source": "no/such/folder"},
         ("params.yaml", "data.source = 'no/such/folder'", "no such file or folder")),
        ("init_weights", {"pipeline__init_seed": "zero"},
         ("params.yaml", "pipeline.init_seed = 'zero'", "expected an integer")),
    ],
)
def test_a_bad_setting_stops_the_stage_with_one_line(
    run_stage: Any, tmp_path: Path, stage: str, change: dict, parts: tuple
) -> None:
    assert_one_line(run_stage(tmp_path, stage, **change), *parts)


def test_a_missing_declared_key_names_it(run_stage: Any, tmp_path: Path) -> None:
    result = run_stage(tmp_path, "step1_rpn", model__rpn=_DELETE)
    assert_one_line(result, "params.yaml", "missing parameter 'model.rpn'")


def test_a_stage_started_before_its_inputs_names_the_stage_to_run(run_stage: Any, tmp_path: Path) -> None:
    result = run_stage(tmp_path, "step2_fast_rcnn")
    assert_one_line(result, "outputs/init_weights/model.pt is missing", "run stage init_weights first")
    (tmp_path / "outputs" / "init_weights").mkdir(parents=True)
    (tmp_path / "outputs" / "init_weights" / "model.pt").write_bytes(b"")
    result = run_stage(tmp_path, "step2_fast_rcnn")
    assert_one_line(result, "outputs/step1_rpn/model.pt is missing", "run stage step1_rpn first")
    # A file inside another stage's output folder names that stage.
    result = run_stage(tmp_path, "init_weights")
    assert_one_line(result, "data/prepared/classes.json is missing", "run stage prepare_data first")
