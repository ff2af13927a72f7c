"""``python -m model.detect`` on a tiny checkpoint: JSON out, drawn image, clear errors.

The command line runs in-process (``cli_in_process.run_main``): its ``main`` is what the module runs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_in_process import run_main
from PIL import Image

from model.checkpoint import save_checkpoint
from model.config import AnchorConfig, DetectorConfig
from model.detect import detections_to_json, main
from model.detections import Detections
from model.faster_rcnn import FasterRCNN



@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("detect")
    torch.manual_seed(0)
    cfg = DetectorConfig(
        class_names=("cat", "dog"), backbone="zf", pretrained=False, min_size=96, max_size=160,
        anchors=AnchorConfig(scales=(2.0, 4.0, 8.0)),
    )
    model = FasterRCNN(cfg, {"fc_width": 16})
    # An untrained net: make "dog" win everywhere so that there is something to report.
    model.roi_head.cls_score.bias.data[2] = 6.0
    checkpoint = save_checkpoint(folder / "tiny.pt", model)
    pixels = np.random.default_rng(0).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    image = folder / "in.png"
    Image.fromarray(pixels).save(image)
    return checkpoint, image


def test_cli_prints_json_and_draws(files: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, image = files
    out = tmp_path / "sub" / "out.png"
    result = run_main(main, "--checkpoint", str(checkpoint), "--image", str(image), "--out", str(out),
                  "--score-threshold", "0.5")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found, "expected detections from the biased classifier"
    assert all(d["class"] == "dog" and d["score"] >= 0.5 for d in found)
    scores = [d["score"] for d in found]
    assert scores == sorted(scores, reverse=True)
    for d in found:  # boxes in the original 80 x 60 image (clipped at input scale, so < 1 px over)
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 < 80 and 0 <= y1 <= y2 < 60
    drawn = np.asarray(Image.open(out).convert("RGB"))
    original = np.asarray(Image.open(image).convert("RGB"))
    assert drawn.shape == original.shape
    assert (drawn != original).any(), "nothing was drawn"


def test_cli_bad_checkpoint_exits_non_zero_naming_the_file(files: tuple[Path, Path], tmp_path: Path) -> None:
    _, image = files
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    result = run_main(main, "--checkpoint", str(broken), "--image", str(image))
    assert result.returncode != 0
    assert "broken.pt" in result.stderr and "Traceback" not in result.stderr


def test_bad_image_and_missing_files(files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    checkpoint, image = files
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    assert main(["--checkpoint", str(checkpoint), "--image", str(bad)]) == 2
    assert "bad.jpg" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "nope.pt"), "--image", str(image)]) == 2
    assert "nope.pt" in capsys.readouterr().err


def test_detections_to_json_threshold_and_order() -> None:
    det = Detections(
        boxes=torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 5.0, 5.0], [1.0, 1.0, 3.0, 3.0]]),
        scores=torch.tensor([0.3, 0.9, 0.6]),
        labels=torch.tensor([1, 2, 1]),
    )
    got = detections_to_json(det, ("cat", "dog"), 0.5)
    assert got == [
        {"class": "dog", "score": 0.9, "box": [2.0, 2.0, 5.0, 5.0]},
        {"class": "cat", "score": 0.6, "box": [1.0, 1.0, 3.0, 3.0]},
    ]


def test_cli_takes_a_folder_in_batches(files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    checkpoint, image = files
    folder = tmp_path / "images"
    folder.mkdir()
    sizes = {"a.png": (60, 80), "b.png": (50, 90), "c.png": (70, 70)}
    for name, (h, w) in sizes.items():
        pixels = np.random.default_rng(len(name) + h).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "drawn"
    assert main(["--checkpoint", str(checkpoint), "--image", str(folder), str(image), "--batch-size", "2",
                 "--out", str(out), "--score-threshold", "0.5"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert list(found) == [str(folder / n) for n in sorted(sizes)] + [str(image)]
    for name, (h, w) in sizes.items():
        assert found[str(folder / name)], f"no detection for {name}"
        for d in found[str(folder / name)]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 < w and 0 <= y1 <= y2 < h  # each image's own size, not the batch's
    assert sorted(p.name for p in out.iterdir()) == ["a_detections.png", "b_detections.png", "c_detections.png",
                                                     "in_detections.png"]
    # (Batched detections are not those of one image at a time: the trunk sees the padding
    # near an image's right and bottom edges.)


def test_cli_refuses_an_empty_folder(files: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, _ = files
    assert main(["--checkpoint", str(checkpoint), "--image", str(tmp_path)]) == 2


def test_cli_bfloat16_finds_what_float32_finds(files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint, image = files
    monkeypatch.delenv("FRCNN_PRECISION", raising=False)
    plain = run_main(main, "--checkpoint", str(checkpoint), "--image", str(image))
    fast = run_main(main, "--checkpoint", str(checkpoint), "--image", str(image), "--precision", "bfloat16")
    assert plain.returncode == 0 and fast.returncode == 0, fast.stderr
    assert {d["class"] for d in json.loads(fast.stdout)} == {d["class"] for d in json.loads(plain.stdout)} == {"dog"}
    refused = run_main(main, "--onnx", str(checkpoint), "--image", str(image), "--precision", "bfloat16")
    assert refused.returncode == 2 and "float32 graph" in refused.stderr
    monkeypatch.setenv("FRCNN_PRECISION", "fp8")
    bad = run_main(main, "--checkpoint", str(checkpoint), "--image", str(image))
    assert bad.returncode == 2 and "FRCNN_PRECISION" in bad.stderr
