"""The profiles compose into valid params for every stage, and the stage wiring follows the paper.

Fast (no training): composes the Hydra profiles the way DVC does and reads dvc.yaml. That
dvc.yaml is what the stage registry gives is tests/test_stage_registry.py's.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import compose_and_dump

from flows.stage import RUNTIME_PARAMS, STAGE_PARAMS, TRACKING_PARAMS
from model.config import DetectorConfig
from tasks import layout
from tasks.params import select
from tasks.settings import DATA_FIELDS, ModelSettings, decode
from tasks.stages import row_inputs, row_stage

ROOT = Path(__file__).resolve().parents[1]


def _compose(tmp_path: Path, *overrides: str) -> dict:
    out = tmp_path / f"params-{abs(hash(overrides))}.yaml"
    compose_and_dump(out, str(ROOT / "conf"), None, "config", "", list(overrides))
    return yaml.safe_load(out.read_text())


def _dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def _expanded_stages() -> dict[str, dict]:
    """dvc.yaml's stages with the ``ablation`` foreach expanded as DVC does (``ablation@<key>``)."""
    stages: dict[str, dict] = {}
    for name, stage in _dvc_yaml()["stages"].items():
        if "foreach" not in stage:
            stages[name] = stage
            continue
        for key, item in stage["foreach"].items():
            text = yaml.safe_dump(stage["do"]).replace("${key}", key)
            for field, value in item.items():
                text = text.replace("${item.%s}" % field, str(value))
            stages[f"{name}@{key}"] = yaml.safe_load(text)
    return stages


def test_committed_params_are_the_composed_default(tmp_path: Path) -> None:
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert committed == _compose(tmp_path)
    assert committed["data"]["name"] == "synthetic"
    assert committed["model"]["backbone"] == "efficientnet_lite0"
    assert committed["train"]["name"] == "cpu"


def test_hydra_enabled_for_dvc() -> None:
    config = (ROOT / ".dvc" / "config").read_text()
    assert re.search(r"\[hydra\]\s*\n\s*enabled = true", config)


@pytest.mark.parametrize(
    "data,model,train",
    list(itertools.product(("synthetic", "tiny", "bccd", "voc07"), ("efficientnet_lite0", "zf", "vgg16", "efficientnet_lite2"), ("cpu", "tiny", "paper"))),
)
def test_every_profile_gives_every_stage_its_params(tmp_path: Path, data: str, model: str, train: str) -> None:
    params = _compose(tmp_path, f"data={data}", f"model={model}", f"train={train}")
    assert params["data"]["name"] == data and params["model"]["backbone"] == model and params["train"]["name"] == train
    for stage, keys in STAGE_PARAMS.items():
        select(params, keys)  # raises if a declared key is missing
    select(params, (*TRACKING_PARAMS, *RUNTIME_PARAMS))
    # Every section passes the checks a stage runs at its start (types, ranges, unknown keys;
    # the dataset folders of bccd / voc07 need not exist here).
    settings = decode(params, check_paths=False)
    assert isinstance(settings.model, ModelSettings)
    # The model section is a DetectorConfig (minus the backbone options), the rest from the data.
    model_section = {k: v for k, v in params["model"].items() if k != "backbone_options"}
    DetectorConfig.from_dict({**model_section, "class_names": ["a"], **params["data"]["input"]})
    assert set(params["model"]) | set(DATA_FIELDS) == {f.name for f in dataclasses.fields(DetectorConfig)} | {"backbone_options"}


def _written_keys(profile: Path) -> set[str]:
    """Dotted leaf keys a profile file writes (relative to the root: `@package _global_` files)."""
    text = profile.read_text()
    data = yaml.safe_load(text) or {}
    prefix = "" if "@package _global_" in text else profile.parent.name + "."

    def leaves(node: dict, at: str) -> set[str]:
        out: set[str] = set()
        for key, value in node.items():
            if key == "defaults":
                continue
            name = f"{at}{key}"
            out |= leaves(value, name + ".") if isinstance(value, dict) and value else {name}
        return out

    return leaves(data, prefix)


def test_profile_precedence_is_explicit() -> None:
    """conf/config.yaml composes model, then data, then train. Data and train profiles may
    set model keys (anchor scales for a dataset's object sizes, RoI counts for a schedule),
    which win over the model profile; no data profile and train profile write the same key,
    so their order does not matter; and none writes another group's own section. A model
    profile writes the model section and, outside it, only its backbone's stronger-RPN
    ablation (``ablations.stronger_rpn``), a key no other file writes."""
    config = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())
    assert [next(iter(d)) for d in config["defaults"] if isinstance(d, dict)] == ["model", "data", "train"]
    data = {p.stem: _written_keys(p) for p in (ROOT / "conf" / "data").glob("*.yaml")}
    train = {p.stem: _written_keys(p) for p in (ROOT / "conf" / "train").glob("*.yaml")}
    models = {p.stem: _written_keys(p) for p in (ROOT / "conf" / "model").glob("*.yaml") if p.stem != "faster_rcnn"}
    stronger = "ablations.stronger_rpn."
    for name, keys in models.items():
        assert all(k.startswith(("model.", stronger)) for k in keys), name
        assert any(k.startswith(stronger) for k in keys), f"model={name} does not choose its stronger RPN"
    assert not any(k.startswith(stronger) for keys in (*data.values(), *train.values()) for k in keys)
    assert "stronger_rpn" not in config["ablations"]
    for name, keys in data.items():
        assert all(k.startswith(("data.", "model.")) for k in keys), name
    for name, keys in train.items():
        assert all(k.startswith(("train.", "model.")) for k in keys), name
    for (d, dkeys), (t, tkeys) in itertools.product(data.items(), train.items()):
        assert not dkeys & tkeys, f"data={d} and train={t} both write {sorted(dkeys & tkeys)}"


def test_a_data_profile_overrides_the_model_profile(tmp_path: Path) -> None:
    params = _compose(tmp_path, "data=tiny", "model=vgg16", "train=tiny")
    assert params["model"]["anchors"]["scales"] == [2.0, 4.0, 8.0]  # data=tiny's, not vgg16's
    assert params["model"]["roi"]["batch_size_per_image"] == 16  # train=tiny's


def test_paper_schedule_matches_the_paper(tmp_path: Path) -> None:
    train = _compose(tmp_path, "data=voc07", "model=vgg16", "train=paper")["train"]
    for step in ("step1_rpn", "step3_rpn"):
        assert (train[step]["iterations"], train[step]["lr_steps"], train[step]["base_lr"]) == (80000, [60000], 0.001)
    for step in ("step2_fast_rcnn", "step4_fast_rcnn"):
        assert (train[step]["iterations"], train[step]["lr_steps"], train[step]["base_lr"]) == (40000, [30000], 0.001)
        assert train[step]["ims_per_batch"] == 2


def test_voc07_reads_a_devkit_path(tmp_path: Path) -> None:
    params = _compose(tmp_path, "data=voc07", "data.voc_devkit=/datasets/VOCdevkit")
    assert params["data"]["source"] == "/datasets/VOCdevkit/VOC2007"
    assert len(params["data"]["classes"]) == 20
    assert (params["data"]["input"]["min_size"], params["data"]["input"]["max_size"]) == (600, 1000)


def test_bccd_defaults_to_the_shared_folder_beside_the_checkout(tmp_path: Path) -> None:
    params = _compose(tmp_path, "data=bccd")
    assert params["data"]["source"] == "../shared/datasets/BCCD/BCCD"
    assert params["data"]["classes"] == ["RBC", "WBC", "Platelets"]


def test_dvc_yaml_step_wiring_follows_the_paper() -> None:
    deps = {name: stage["deps"] for name, stage in _expanded_stages().items()}
    init = str(layout.checkpoint("init_weights"))
    # Step 2 starts from the initial weights, not from step 1 (it only uses step 1's proposals).
    assert init in deps["step2_fast_rcnn"]
    assert str(layout.proposals("step1_proposals", "train")) in deps["step2_fast_rcnn"]
    # Step 3 from step 2; step 4 from step 3 on step 3's proposals; final = step 3 + step 4.
    assert str(layout.checkpoint("step2_fast_rcnn")) in deps["step3_rpn"]
    assert str(layout.checkpoint("step3_rpn")) in deps["step4_fast_rcnn"]
    assert str(layout.proposals("step3_proposals", "train")) in deps["step4_fast_rcnn"]
    assert {str(layout.checkpoint("step3_rpn")), str(layout.checkpoint("step4_fast_rcnn"))} <= set(deps["assemble"])
    # The unshared row: step-1 RPN with the step-2 detector.
    assert {str(layout.checkpoint("step1_rpn")), str(layout.checkpoint("step2_fast_rcnn"))} <= set(deps["evaluate"])


def test_rpn_only_params_are_declared_only_by_rpn_stages() -> None:
    users = {name for name, keys in STAGE_PARAMS.items() if "model.rpn" in keys}
    # The stronger-backbone RPN of the ablations trains exactly as step 1; the joint training
    # labels anchors and trains an RPN too.
    assert users == {"step1_rpn", "step3_rpn", "strong_rpn", "joint_train"}
    step3_users = {name for name, keys in STAGE_PARAMS.items() if "train.step3_rpn" in keys}
    assert step3_users == {"step3_rpn"}


def test_ablation_rows_depend_on_what_they_read() -> None:
    """Each row stage lists its detector and its proposals as deps (``tasks.ablations.row_inputs``),
    so re-training one model re-runs only the rows that test it."""
    from model.ablations import ALL_ROWS

    stages = _expanded_stages()
    for row in ALL_ROWS:
        deps = stages[row_stage(row.key)]["deps"]
        assert {str(p) for p in row_inputs(row)} <= set(deps), row.key
    # Only the SS rows read the SS-trained detector; the one-stage row reads only its model.
    ss_model = str(layout.checkpoint("ss_fast_rcnn"))
    readers = {name for name, stage in stages.items() if "@" in name and ss_model in stage["deps"]}
    assert readers == {row_stage(r.key) for r in ALL_ROWS if r.detector == "ss"}
    assert str(layout.checkpoint("step2_fast_rcnn")) not in stages["ablation@one_stage"]["deps"]
    # The report reads every row's result.
    assert {str(layout.row_metrics(r.key)) for r in ALL_ROWS} <= set(stages["ablation_report"]["deps"])


def test_ablation_models_are_trained_as_the_paper_steps() -> None:
    """The SS detector trains with step 2's schedule from the initial weights; the stronger
    RPN with step 1's; so the rows differ from the baseline rows only in what they vary."""
    assert "train.step2_fast_rcnn" in STAGE_PARAMS["ss_fast_rcnn"]
    assert "train.step1_rpn" in STAGE_PARAMS["strong_rpn"]
    deps = _expanded_stages()
    assert str(layout.checkpoint("init_weights")) in deps["ss_fast_rcnn"]["deps"]
    assert str(layout.proposals("ss_proposals", "train")) in deps["ss_fast_rcnn"]["deps"]
