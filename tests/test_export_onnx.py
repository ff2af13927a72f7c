"""ONNX export of the whole detector: an assembled random-weight model, ONNX Runtime vs PyTorch.

Small on purpose (EfficientNet-Lite0 trunk with its SAME padding, fc top 32 wide, inputs
about 128 px): the point is that one graph traced on one image size detects exactly what
PyTorch detects on other sizes, boxes, scores and classes.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.boxes import box_iou
from model.checkpoint import assemble_model, load_checkpoint, save_checkpoint
from model.config import DetectorConfig
from model.config import TestConfig as PostprocessConfig  # (not a pytest class)
from model.data.transforms import prepare_image
from model.detect import main as detect_main
from model.detections import Detections
from model.export.__main__ import main as export_main
from model.export.check import compare_detections
from model.export.graph import export_onnx
from model.export.runtime import OnnxDetector, OnnxModelError
from model.faster_rcnn import FasterRCNN

CFG = DetectorConfig(
    class_names=("circle", "square", "triangle"), backbone="efficientnet_lite0", pretrained=False,
    min_size=128, max_size=200,
)
OPTIONS = {"pool_size": 7, "top": "fc", "fc_width": 32}


def _random_model(seed: int) -> FasterRCNN:
    torch.manual_seed(seed)
    model = FasterRCNN(CFG, OPTIONS).eval()
    # Untrained scores are all about 1 / (K + 1); spread them so the ranking, the score
    # threshold and NMS all have real work to do.
    torch.nn.init.normal_(model.roi_head.cls_score.weight, std=0.3)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """The assembled final checkpoint (step-3 shared + RPN, step-4 detector) and its export."""
    folder = tmp_path_factory.mktemp("export")
    save_checkpoint(folder / "step3.pt", _random_model(1))
    save_checkpoint(folder / "step4.pt", _random_model(2))
    final = save_checkpoint(folder / "final.pt", assemble_model(folder / "step3.pt", folder / "step4.pt"))
    out = folder / "model.onnx"
    summary = _export(final, out)
    return final, out, summary


def _export(checkpoint: Path, out: Path, *extra: str) -> dict:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        rc = export_main(["--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out), "--threads", "1", *extra])
    assert rc == 0
    return json.loads(buffer.getvalue())


def _image(width: int, height: int, seed: int) -> np.ndarray:
    """A blocky random picture (structure at several scales, unlike pure noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    blocks = np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width]
    return np.clip(blocks.astype(np.int16) + rng.integers(-30, 31, size=blocks.shape), 0, 255).astype(np.uint8)


def test_cli_checks_the_export_on_two_sizes(exported: tuple[Path, Path, dict]) -> None:
    _, out, summary = exported
    check = summary["check"]
    assert out.is_file() and summary["out"] == str(out)
    assert check["ok"] and check["images"] == 2 and check["unmatched"] == 0
    assert check["detections"] > 0 and check["matched"] + check["borderline"] >= check["detections"]
    assert check["worst_iou"] >= 0.99 and check["worst_score_difference"] <= 1e-3


@pytest.mark.parametrize(("width", "height"), [(173, 131), (120, 190)])
def test_onnx_runtime_detects_what_pytorch_detects(exported: tuple[Path, Path, dict], width: int, height: int) -> None:
    """Sizes the graph was not traced on (odd ones: the SAME padding's parity changes)."""
    final, out, _ = exported
    model, _ = load_checkpoint(final)
    runtime = OnnxDetector(out, threads=1)
    assert runtime.info.class_names == CFG.class_names and runtime.info.min_size == CFG.min_size
    image, scale = prepare_image(_image(width, height, seed=width), CFG.min_size, CFG.max_size)
    reference, got = model.detect(image, scale), runtime.detect(image, scale)
    assert len(reference) > 0
    comparison = compare_detections("img", reference, got, model.cfg.test)
    assert comparison.ok and comparison.matched == len(reference) == len(got)
    # Independently of the matcher: same order (by score), same classes, boxes and scores.
    assert torch.equal(reference.labels, got.labels)
    assert float(box_iou(reference.boxes, got.boxes).diagonal().min()) >= 0.99
    assert float((reference.scores - got.scores).abs().max()) <= 1e-3
    # Clipped to the (symbolic) input size, not the traced sample's.
    assert float(got.boxes[:, 2].max()) <= (image.shape[2] - 1) / scale + 1e-3
    assert float(got.boxes[:, 3].max()) <= (image.shape[1] - 1) / scale + 1e-3


def test_detect_cli_runs_the_onnx_graph(exported: tuple[Path, Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    final, out, _ = exported
    picture = tmp_path / "in.png"
    Image.fromarray(_image(150, 110, seed=3)).save(picture)
    results = []
    for source in (["--checkpoint", str(final)], ["--onnx", str(out)]):
        assert detect_main([*source, "--image", str(picture), "--score-threshold", "0.05"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    torch_found, onnx_found = results
    assert torch_found and len(onnx_found) == len(torch_found)
    for a, b in zip(torch_found, onnx_found):
        assert a["class"] == b["class"] and abs(a["score"] - b["score"]) <= 1e-3 + 1e-4
        assert max(abs(x - y) for x, y in zip(a["box"], b["box"])) <= 0.5


def test_detect_cli_names_a_bad_onnx_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a graph")
    picture = tmp_path / "in.png"
    Image.fromarray(_image(64, 48, seed=0)).save(picture)
    assert detect_main(["--onnx", str(bogus), "--image", str(picture)]) == 2
    assert str(bogus) in capsys.readouterr().err
    with pytest.raises(OnnxModelError, match="not found"):
        OnnxDetector(tmp_path / "missing.onnx")


def test_export_refuses_what_a_graph_cannot_be(tmp_path: Path) -> None:
    model = _random_model(0)
    image, scale = prepare_image(_image(96, 96, seed=1), CFG.min_size, CFG.max_size)
    random_ranking = dataclasses.replace(CFG.test_proposals, ranking="random")
    model.cfg = dataclasses.replace(CFG, test_proposals=random_ranking)
    with pytest.raises(ValueError, match="random"):
        export_onnx(model, tmp_path / "a.onnx", image, scale)
    model.cfg = dataclasses.replace(CFG, test=PostprocessConfig(score_threshold=0.999))
    with pytest.raises(ValueError, match="no detection"):
        export_onnx(model, tmp_path / "b.onnx", image, scale)
    assert list(tmp_path.iterdir()) == []


def _dets(boxes: list[list[float]], scores: list[float], labels: list[int]) -> Detections:
    return Detections(torch.tensor(boxes), torch.tensor(scores), torch.tensor(labels))


def test_compare_detections_tolerance() -> None:
    cfg = PostprocessConfig(score_threshold=0.05, max_detections_per_image=100)
    ref = _dets([[0, 0, 99, 99], [10, 10, 50, 50]], [0.9, 0.0505], [1, 2])
    same = compare_detections("a", ref, _dets([[0, 0, 99, 99.5], [10, 10, 50, 50]], [0.9004, 0.0505], [1, 2]), cfg)
    assert same.ok and same.matched == 2 and same.worst_iou >= 0.99
    shifted = compare_detections("b", ref, _dets([[3, 0, 102, 99], [10, 10, 50, 50]], [0.9, 0.0505], [1, 2]), cfg)
    assert not shifted.ok and shifted.unmatched == 2  # the 0.9 box is missing, and one is extra
    off_score = compare_detections("c", ref, _dets([[0, 0, 99, 99], [10, 10, 50, 50]], [0.902, 0.0505], [1, 2]), cfg)
    assert not off_score.ok
    other_class = compare_detections("d", ref, _dets([[0, 0, 99, 99], [10, 10, 50, 50]], [0.9, 0.0505], [3, 2]), cfg)
    assert not other_class.ok
    # The second detection sits at the score threshold: missing from the export, it is borderline.
    dropped = compare_detections("e", ref, _dets([[0, 0, 99, 99]], [0.9], [1]), cfg)
    assert dropped.ok and dropped.borderline == 1 and dropped.matched == 1
