"""Per-group checkpoints: round trip, refusals with clear messages, assembling the final model."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.checkpoint import (
    CheckpointError,
    assemble_model,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from model.config import AnchorConfig, DetectorConfig
from model.faster_rcnn import FasterRCNN


def make_model(seed: int, classes: tuple[str, ...] = ("a", "b", "c")) -> FasterRCNN:
    torch.manual_seed(seed)
    cfg = DetectorConfig(
        class_names=classes, backbone="zf", pretrained=False, min_size=96, max_size=160,
        anchors=AnchorConfig(scales=(2.0, 4.0, 8.0)),
    )
    model = FasterRCNN(cfg, {"fc_width": 32})
    # Make the classifier confident enough that detections exist to compare.
    model.roi_head.cls_score.bias.data[1] = 4.0
    return model.eval()


def _image() -> torch.Tensor:
    return torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(5)) * 255


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = make_model(0)
    model.roi_head.set_target_stats((0.01, -0.02, 0.03, 0.0), (0.1, 0.12, 0.2, 0.25))
    path = save_checkpoint(tmp_path / "ck" / "model.pt", model, extra={"step": "step4", "mAP": 0.5})
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left behind

    loaded, extra = load_checkpoint(path, expected_backbone="zf", expected_classes=("a", "b", "c"))
    assert extra == {"step": "step4", "mAP": 0.5}
    assert loaded.cfg == model.cfg and loaded.backbone_options == {"fc_width": 32}
    assert torch.equal(loaded.roi_head.target_stds, torch.tensor([0.1, 0.12, 0.2, 0.25]))
    image = _image()
    a, b = model.detect(image, 2.0), loaded.eval().detect(image, 2.0)
    assert len(a) > 0
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores) and torch.equal(a.labels, b.labels)
    pa, pb = model.propose(image, 2.0), loaded.propose(image, 2.0)
    assert torch.equal(pa[0], pb[0])

    content = torch.load(path, weights_only=True)  # plain types + tensors only
    assert content["format"] == "frcnn/1" and set(content["groups"]) == {"shared", "rpn", "detector"}


def test_wrong_backbone_or_classes_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", make_model(0))
    with pytest.raises(CheckpointError, match=r"m\.pt.*backbone 'zf'.*'vgg16'"):
        load_checkpoint(path, expected_backbone="vgg16")
    with pytest.raises(CheckpointError, match=r"m\.pt.*3 classes.*expected 2"):
        load_checkpoint(path, expected_classes=("a", "b"))


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path: Path) -> None:
    # A checkpoint whose config says 2 classes but whose detector weights have 3 (+ background).
    path = save_checkpoint(tmp_path / "m.pt", make_model(0))
    content = torch.load(path, weights_only=True)
    content["config"]["class_names"] = ["a", "b"]
    torch.save(content, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match=r"tampered\.pt.*'detector'.*cls_score\.weight: file \(4, 32\) vs model \(3, 32\)"):
        load_checkpoint(tmp_path / "tampered.pt")
    # A missing key.
    del content["groups"]["rpn"]["head.conv.weight"]
    content["config"]["class_names"] = ["a", "b", "c"]
    torch.save(content, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing\.pt.*'rpn'.*missing keys \[head\.conv\.weight\]"):
        load_checkpoint(tmp_path / "missing.pt")


def test_corrupt_truncated_and_foreign_files_refused(tmp_path: Path) -> None:
    good = save_checkpoint(tmp_path / "good.pt", make_model(0))
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "truncated.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match=r"garbage\.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "garbage.pt")
    torch.save(make_model(0).state_dict(), tmp_path / "state_dict.pt")
    with pytest.raises(CheckpointError, match=r"state_dict\.pt: not a Faster R-CNN checkpoint"):
        load_checkpoint(tmp_path / "state_dict.pt")
    with pytest.raises(CheckpointError, match=r"absent\.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", make_model(0), extra={"n": 1})
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint(path, make_model(1), extra={"bad": lambda: 0})  # cannot be pickled
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    assert read_checkpoint(path)["extra"] == {"n": 1}


def test_assemble_model_takes_each_group_from_the_right_file(tmp_path: Path) -> None:
    first, second = make_model(1), make_model(2)
    second.roi_head.set_target_stats((0.0, 0.0, 0.0, 0.0), (0.5, 0.5, 0.5, 0.5))
    p1 = save_checkpoint(tmp_path / "step3.pt", first)
    p2 = save_checkpoint(tmp_path / "step4.pt", second)
    final = assemble_model(p1, p2)
    for group, source in (("shared", first), ("rpn", first), ("detector", second)):
        got = final.group_modules()[group].state_dict()
        want = source.group_modules()[group].state_dict()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in got), group
    # and not from the other file
    other = first.group_modules()["detector"].state_dict()["cls_score.weight"]
    assert not torch.equal(final.roi_head.cls_score.weight, other)


def test_assemble_model_refuses_different_architectures(tmp_path: Path) -> None:
    p1 = save_checkpoint(tmp_path / "three.pt", make_model(1))
    p2 = save_checkpoint(tmp_path / "two.pt", make_model(2, classes=("a", "b")))
    with pytest.raises(CheckpointError, match=r"three\.pt.*two\.pt.*class_names"):
        assemble_model(p1, p2)


def test_equal_content_gives_identical_bytes(tmp_path):
    """DVC hashes outputs: saving the same content twice must give the same file bytes."""
    from model.atomic import atomic_torch_save

    content = {"a": torch.arange(6.0).reshape(2, 3), "name": "x"}
    first = atomic_torch_save(content, tmp_path / "one.pt").read_bytes()
    second = atomic_torch_save(content, tmp_path / "two.pt").read_bytes()
    assert first == second
