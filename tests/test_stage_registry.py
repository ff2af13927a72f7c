"""The stage registry (tasks/stages.py) is the one declaration: dvc.yaml follows from it, and
every stage's code dependencies are closed under imports."""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
import yaml

from flows import dvc_yaml
from flows.stage import STAGE_PARAMS, stage_call
from model.alternating import FOUR_STEPS, INITIAL, TRAINING_STEPS
from tasks import layout
from tasks.code_deps import LOGGING_ONLY, closure, compress, expand, imported_modules
from tasks.stages import REGISTRY, STAGE_SPECS, STAGES, StageGroup, row_key

ROOT = Path(__file__).resolve().parents[1]


def _expanded_dvc_stages() -> dict[str, dict]:
    """dvc.yaml's stages with the ``foreach`` expanded as DVC does (``<name>@<key>``)."""
    stages: dict[str, dict] = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        if "foreach" not in stage:
            stages[name] = stage
            continue
        for key, item in stage["foreach"].items():
            text = yaml.safe_dump(stage["do"]).replace("${key}", key)
            for field, value in item.items():
                text = text.replace("${item.%s}" % field, str(value))
            stages[f"{name}@{key}"] = yaml.safe_load(text)
    return stages


def test_dvc_yaml_is_what_the_registry_gives() -> None:
    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml.render(ROOT), "run `python -m flows.dvc_yaml`"


def test_dvc_yaml_declares_the_registry_stages_params_and_outputs() -> None:
    stages = _expanded_dvc_stages()
    assert tuple(stages) == STAGES
    for name, stage in stages.items():
        spec = STAGE_SPECS[name]
        assert stage["cmd"] == f"sh flows/stage.sh {name}"
        assert tuple(stage.get("params", ())) == spec.params == STAGE_PARAMS[name]
        assert not any(p.startswith("tracking") for p in stage.get("params", ()))
        # Only the summary's file is DVC metrics; every other metrics file is an uncached out.
        outs = [o if isinstance(o, str) else next(iter(o)) for o in stage.get("outs", [])]
        if spec.headline:
            assert stage["metrics"] == [{spec.metrics: {"cache": False}}]
            assert outs == [*spec.outs, *spec.reports]
        else:
            assert "metrics" not in stage
            assert outs == [*spec.outs, *spec.reports, spec.metrics]
            assert stage["outs"][len(spec.outs):] == [{p: {"cache": False}} for p in (*spec.reports, spec.metrics)]
        assert stage["deps"][: len(spec.inputs)] == list(spec.inputs)
        # Every stage has its flow.
        flow, args = stage_call(name)
        assert args == ((row_key(name),) if row_key(name) else ())


def _code_entries(stage: dict) -> list[str]:
    return [d for d in stage["deps"] if d.startswith(("model", "tasks", "flows"))]


@pytest.mark.parametrize("name", STAGES)
def test_code_deps_are_closed_under_imports(name: str) -> None:
    """Every project module imported by a listed module is listed (``LOGGING_ONLY`` aside),
    and the stage's own entry module is: editing any of them re-runs the stage."""
    stage = _expanded_dvc_stages()[name]
    listed = expand(ROOT, _code_entries(stage))
    assert {"flows/stage.py", STAGE_SPECS[name].entry_module} <= listed
    assert "flows/stage.sh" in stage["deps"]
    for module in sorted(listed):
        for imported in imported_modules(ROOT, ROOT / module):
            rel = imported.relative_to(ROOT).as_posix()
            assert rel in listed or rel in LOGGING_ONLY, f"{name}: {module} imports {rel}, not a dependency"


def test_closure_follows_function_local_and_package_imports(tmp_path: Path) -> None:
    (tmp_path / "model" / "sub").mkdir(parents=True)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "model" / "__init__.py").write_text("")
    (tmp_path / "model" / "sub" / "__init__.py").write_text("from .leaf import x\n")
    (tmp_path / "model" / "sub" / "leaf.py").write_text("x = 1\n")
    (tmp_path / "model" / "unused.py").write_text("")
    (tmp_path / "tasks" / "tracking.py").write_text("import model.unused\n")
    (tmp_path / "tasks" / "entry.py").write_text(textwrap.dedent("""
        import torch
        def run():
            from model.sub import x
            from tasks import tracking
    """))
    found = closure(tmp_path, ["tasks/entry.py"])
    assert found == {"tasks/entry.py", "model/__init__.py", "model/sub/__init__.py", "model/sub/leaf.py"}
    # The logging-only module and what only it imports are left out; a whole folder is one entry.
    assert compress(tmp_path, found) == ["model/__init__.py", "model/sub", "tasks/entry.py"]


def test_training_stages_follow_the_recipe() -> None:
    """Inputs of every training stage come from model.alternating: what it starts from,
    the initial network for resets, and the cache it trains on."""
    for step in TRAINING_STEPS.values():
        inputs = STAGE_SPECS[step.name].inputs
        if step.start in TRAINING_STEPS or step.start == INITIAL:
            assert inputs[0] == str(layout.checkpoint(step.start))
        if step.reset is not None:
            assert str(layout.checkpoint(INITIAL)) in inputs
        if step.proposals is not None:
            assert str(layout.proposals(step.proposals, "train")) in inputs
        assert f"train.{step.schedule}" in STAGE_PARAMS[step.name]
    # The paper's order: step 2 from the initial network, on step 1's proposals.
    step1, step2, step3, step4 = FOUR_STEPS
    assert step2.start == INITIAL and step2.proposals == "step1_proposals"
    assert (step3.start, step4.start) == (step2.name, step3.name)


def test_every_stage_writes_something_only_it_writes() -> None:
    seen: dict[str, str] = {}
    for stage in STAGE_SPECS.values():
        for path in (*stage.outs, *stage.reports, stage.metrics, *stage.plots):
            assert path not in seen, f"{path}: written by {seen.get(path)} and {stage.name}"
            seen[path] = stage.name


def test_registry_names_each_stage_once() -> None:
    names = [e.name for e in REGISTRY]
    assert len(names) == len(set(names))
    assert sum(isinstance(e, StageGroup) for e in REGISTRY) == 1
    # Each task function named in the registry exists (without importing it: AST only).
    for stage in STAGE_SPECS.values():
        module, function = stage.task.split(":")
        tree = ast.parse((ROOT / stage.entry_module).read_text())
        assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, stage.task


def test_training_stages_read_no_evaluation_setting() -> None:
    """Changing how a model is scored re-scores it, never re-trains it: no training stage of
    the recipe declares an evaluation setting; their scores are stages of their own."""
    evaluation = ("evaluate.", "model.test", "model.test_proposals")
    for step in TRAINING_STEPS.values():
        declared = STAGE_PARAMS[step.name]
        assert not [p for p in declared if p.startswith(evaluation)], step.name
        if step.kind == "detector":
            score = STAGE_PARAMS[f"{step.name}_score"]
            assert "evaluate.metric" in score and "model.test" in score
            assert not any(p.startswith("train.") for p in score)
    # Nor do the one-stage detector and the joint model; the one-stage score is its own stage.
    for stage in ("one_stage", "joint_train"):
        assert not [p for p in STAGE_PARAMS[stage] if p.startswith(evaluation)], stage
    score = STAGE_PARAMS["one_stage_score"]
    assert "evaluate.metric" in score and "model.test" in score and not any(p.startswith("train.") for p in score)


def test_ablation_rows_do_not_declare_what_they_override() -> None:
    """Every row replaces the test proposal counts by the paper's, so no row depends on them."""
    from model.ablations import PAPER_TEST_COUNTS

    for key in STAGES:
        if row_key(key) is None:
            continue
        declared = STAGE_PARAMS[key]
        assert "model.test_proposals" not in declared
        assert not [p for p in declared if p.split(".")[-1] in PAPER_TEST_COUNTS and "test_proposals" in p], key
        assert "model.test_proposals.nms_threshold" in declared
