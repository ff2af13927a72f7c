"""Stage plumbing without training: declared-params views, detector settings, atomic files, resume keys."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from model.config import DetectorConfig, RPNConfig
from tasks import atomic, resume
from tasks.params import ParamsError, flatten, select
from tasks.settings import decode, decode_dataclass, with_settings

PARAMS = {
    "data": {"input": {"min_size": 240, "max_size": 320}, "name": "synthetic"},
    "model": {
        "rpn": {"mid_channels": None, "positive_iou": 0.6},
        "test_proposals": {"post_nms_top_n": 77, "pre_nms_top_n": 1000},
        "roi": {"foreground_iou": 0.55},
    },
    "train": {"step1_rpn": {"iterations": 5, "lr_steps": [3]}},
}


def test_select_keeps_only_declared_keys() -> None:
    declared = ["data.input", "model.test_proposals.post_nms_top_n"]
    view = select(PARAMS, declared)
    assert view == {"data": {"input": {"min_size": 240, "max_size": 320}}, "model": {"test_proposals": {"post_nms_top_n": 77}}}
    # Reading an undeclared key fails by name instead of silently using a value DVC does not track.
    settings = decode(view, declared)
    assert settings.data.input.min_size == 240 and settings.model.test_proposals.post_nms_top_n == 77
    with pytest.raises(ParamsError, match="'data.name' is not among this stage's declared params"):
        settings.data.name
    with pytest.raises(ParamsError, match="'model.test_proposals.pre_nms_top_n' is not among this stage's declared"):
        settings.model.test_proposals.pre_nms_top_n
    with pytest.raises(ParamsError, match="'evaluate' is not among this stage's declared params"):
        settings.evaluate
    # The view is a copy.
    view["data"]["input"]["min_size"] = 1
    assert PARAMS["data"]["input"]["min_size"] == 240


def test_select_reports_missing_declared_key() -> None:
    with pytest.raises(ParamsError, match=r"missing parameter 'model.anchors' \(declared as 'model.anchors.scales'\)"):
        select(PARAMS, ["model.anchors.scales"], source="params.yaml")


def test_with_settings_replaces_only_declared_sections() -> None:
    base = DetectorConfig(class_names=("a", "b"), min_size=600, max_size=1000)
    declared = ["data.input", "model.rpn", "model.test_proposals.post_nms_top_n"]
    cfg = with_settings(base, decode(select(PARAMS, declared), declared))
    assert (cfg.min_size, cfg.max_size) == (240, 320)
    assert cfg.rpn.positive_iou == 0.6
    assert cfg.rpn.negative_iou == RPNConfig().negative_iou  # not in params: kept
    # Only post_nms_top_n was declared: pre_nms_top_n keeps the checkpoint's value.
    assert cfg.test_proposals.post_nms_top_n == 77
    assert cfg.test_proposals.pre_nms_top_n == base.test_proposals.pre_nms_top_n
    # roi was not selected: untouched even though params.yaml has it.
    assert cfg.roi.foreground_iou == base.roi.foreground_iou
    assert cfg.class_names == ("a", "b")


def test_with_settings_refuses_an_architecture_change() -> None:
    base = DetectorConfig(class_names=("a",), rpn=RPNConfig(mid_channels=256))
    with pytest.raises(ParamsError, match="mid_channels is 512 in params but 256 in the checkpoint"):
        with_settings(base, decode({"model": {"rpn": {"mid_channels": 512}}}, ["model.rpn.mid_channels"]))


def test_decode_dataclass_names_unknown_keys() -> None:
    from model.training import TrainSchedule

    schedule = decode_dataclass(TrainSchedule, PARAMS["train"]["step1_rpn"], "train.step1_rpn")
    assert schedule.iterations == 5 and schedule.lr_steps == (3,)
    with pytest.raises(ParamsError, match=r"train.step1_rpn.iterationz = 5: unknown key"):
        decode_dataclass(TrainSchedule, {"iterationz": 5}, "train.step1_rpn")


def test_flatten_for_mlflow() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}


def test_atomic_write_leaves_old_content_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out" / "m.json"
    atomic.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("killed")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in target.parent.iterdir()] == ["m.json"]  # no temp file left


def test_publish_directory_is_all_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "prepared"

    def good(d: Path) -> None:
        (d / "manifest.json").write_text("v1")

    def bad(d: Path) -> None:
        (d / "manifest.json").write_text("v2 partial")
        raise OSError("disk full")

    atomic.publish_directory(target, good)
    with pytest.raises(OSError):
        atomic.publish_directory(target, bad)
    assert (target / "manifest.json").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]
    atomic.publish_directory(target, lambda d: (d / "other").write_text("v3"))
    assert sorted(p.name for p in target.iterdir()) == ["other"]


def test_resume_key_follows_params_and_input_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    checkpoint = tmp_path / "init.pt"
    checkpoint.write_bytes(b"v1")
    first = resume.resume_files("step1_rpn", PARAMS, [checkpoint])
    assert first.checkpoint == Path("outputs/.resume") / f"step1_rpn-{first.key}.pt"
    assert resume.resume_files("step1_rpn", PARAMS, [checkpoint]).key == first.key
    # A runtime setting (how the stage runs, not what it makes) keeps the key: a killed
    # stage restarted with more selective-search processes still resumes.
    for workers in (0, 3):
        runtime = {**PARAMS, "pipeline": {**PARAMS.get("pipeline", {}), "ss_workers": workers}}
        assert resume.resume_files("step1_rpn", runtime, [checkpoint]).key == first.key
    first.checkpoint.write_bytes(b"in progress")
    first.remember_run("run-123")
    assert first.mlflow_run_id() == "run-123"
    # Another stage's files are not touched.
    other = resume.resume_files("step3_rpn", PARAMS, [checkpoint])
    assert other.key != first.key and first.checkpoint.exists()
    # A parameter change gives a new key and removes the stale in-progress files of the stage.
    changed = {**PARAMS, "train": {"step1_rpn": {"iterations": 6, "lr_steps": [3]}}}
    second = resume.resume_files("step1_rpn", changed, [checkpoint])
    assert second.key != first.key
    assert not first.checkpoint.exists() and not first.run_info.exists()
    # So does a change of an input file's bytes.
    checkpoint.write_bytes(b"v2")
    assert resume.resume_files("step1_rpn", changed, [checkpoint]).key != second.key
    assert sorted(os.listdir("outputs/.resume")) == []


def test_detections_of_a_class_without_ground_truth_do_not_break_scoring() -> None:
    import math

    import torch

    from model.data.records import DetectionDataset, ImageRecord, ObjectAnnotation
    from model.detections import Detections
    from tasks.evaluate import score_detections

    # One image, one "a" box; the detector also fires for "b", which has no ground truth.
    dataset = DetectionDataset(
        Path("."), ("a", "b"), [ImageRecord("i1", Path("i1.jpg"), 100, 100, (ObjectAnnotation("a", (0, 0, 10, 10)),))]
    )
    detections = {"i1": Detections(torch.tensor([[0.0, 0, 10, 10], [5.0, 5, 20, 20]]), torch.tensor([0.9, 0.8]),
                                   torch.tensor([1, 2]))}
    metrics, voc = score_detections(dataset, detections, "voc07")
    assert metrics["ap"]["a"] == pytest.approx(1.0) and metrics["ap"]["b"] is None
    assert metrics["mAP"] == pytest.approx(1.0)
    assert math.isnan(voc.ap["b"])
    assert "AP50" in metrics["coco"]


def test_run_seed_shifts_every_training_seed():
    from tasks.settings import SEED_STRIDE, run_seed, training_schedule

    params = {"pipeline": {"seed": 0, "init_seed": 0, "ss_workers": 0, "nproc_per_node": 1, "lr_scaling": "linear"},
              "train": {"step1_rpn": {"iterations": 4, "seed": 7}}}
    declared = ["pipeline", "train.step1_rpn"]
    settings = decode(params, declared)
    assert run_seed(settings, 7) == 7 and training_schedule(settings, "step1_rpn").seed == 7
    params["pipeline"]["seed"] = 2
    settings = decode(params, declared)
    assert run_seed(settings, 7) == 7 + 2 * SEED_STRIDE
    assert training_schedule(settings, "step1_rpn").seed == 7 + 2 * SEED_STRIDE
    assert training_schedule(settings, "step1_rpn").iterations == 4


def test_partial_settings_survive_a_copy_and_stay_read_only() -> None:
    """Prefect hands a task its settings (copies them across threads): a copy reads the
    same, refuses the same undeclared key, and nobody can assign to it."""
    import copy
    import dataclasses
    import pickle

    declared = ["train.step1_rpn", "model.rpn.mid_channels"]
    settings = decode(select(PARAMS, declared), declared)
    for twin in (copy.deepcopy(settings), pickle.loads(pickle.dumps(settings))):
        assert twin.train.step1_rpn == settings.train.step1_rpn
        assert twin.model.rpn.mid_channels is None
        with pytest.raises(ParamsError, match="'model.rpn.positive_iou' is not among"):
            twin.model.rpn.positive_iou
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.train = None
