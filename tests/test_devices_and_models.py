"""Devices and models: a device this machine lacks is named as such (not as a corrupt checkpoint),
non-finite weights are refused at load, a FIFO or device file is "not a regular file"."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from model.config import AnchorConfig, DetectorConfig
from model.data.images import image_size, load_image_rgb
from model.data.records import DatasetError
from model.data.voc import parse_voc_annotation
from model.detect import main as detect_main
from model.devices import DeviceError, resolve_device
from model.faster_rcnn import FasterRCNN

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    cfg = DetectorConfig(class_names=("cat", "dog"), backbone="zf", pretrained=False, min_size=96, max_size=160,
                         anchors=AnchorConfig(scales=(2.0, 4.0, 8.0)))
    checkpoint = save_checkpoint(folder / "tiny.pt", FasterRCNN(cfg, {"fc_width": 16}))
    image = folder / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(image)
    return checkpoint, image


# ---------------------------------------------------------------- devices


def test_resolve_device_names_what_is_missing():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"--device 'gpu' is not a device name .*this machine has \['cpu'"):
        resolve_device("gpu", "--device")
    with pytest.raises(DeviceError, match=r"'cuda:99': (CUDA is not available|there is no GPU 99)"):
        resolve_device("cuda:99")
    if HAS_CUDA:
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(DeviceError, match=r"FRCNN_DEVICE 'cuda': CUDA is not available on this machine"):
            resolve_device("cuda", "FRCNN_DEVICE")


def test_detect_cli_blames_the_device_not_the_checkpoint(files, capsys):
    checkpoint, image = files
    code = detect_main(["--checkpoint", str(checkpoint), "--image", str(image), "--device", "cuda:99"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--device 'cuda:99'" in err and "corrupt" not in err and "not a readable checkpoint" not in err
    code = detect_main(["--checkpoint", str(checkpoint), "--image", str(image), "--device", "cuda"])
    captured = capsys.readouterr()
    if HAS_CUDA:
        assert code == 0, captured.err
    else:
        assert code == 2
        assert "--device 'cuda': CUDA is not available on this machine" in captured.err
        assert "corrupt" not in captured.err and str(checkpoint) not in captured.err
    assert detect_main(["--checkpoint", str(checkpoint), "--image", str(image), "--device", "tpu"]) == 2
    assert "'tpu'" in capsys.readouterr().err


def test_load_checkpoint_checks_the_device_first(files):
    checkpoint, _ = files
    with pytest.raises(DeviceError, match="map_location 'cuda:99'"):
        load_checkpoint(checkpoint, map_location="cuda:99")
    with pytest.raises(DeviceError):
        read_checkpoint(checkpoint, map_location="cuda:99")
    model, _ = load_checkpoint(checkpoint, map_location="cpu")
    assert next(model.parameters()).device.type == "cpu"


def test_frcnn_device_variable_is_checked(monkeypatch):
    from tasks.weights import device

    monkeypatch.setenv("FRCNN_DEVICE", "cuda:99")
    with pytest.raises(DeviceError, match="FRCNN_DEVICE 'cuda:99'"):
        device()
    monkeypatch.setenv("FRCNN_DEVICE", "cpu")
    assert device() == torch.device("cpu")


# ---------------------------------------------------------------- non-finite weights


@pytest.mark.parametrize("value, group", [(float("nan"), "rpn"), (float("inf"), "detector"), (-float("inf"), "shared")])
def test_non_finite_weights_are_refused_at_load(files, tmp_path, capsys, value, group):
    checkpoint, image = files
    content = torch.load(checkpoint, weights_only=True)
    key = next(k for k, v in content["groups"][group].items() if v.is_floating_point())
    content["groups"][group][key].view(-1)[:3] = value
    diverged = tmp_path / "diverged.pt"
    torch.save(content, diverged)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(diverged)
    message = str(caught.value)
    assert message.startswith(f"{diverged}: group {group!r} tensor {key!r} has 3 non-finite value(s)")
    assert detect_main(["--checkpoint", str(diverged), "--image", str(image)]) == 2
    assert "non-finite" in capsys.readouterr().err


def test_finite_weights_load(files):
    checkpoint, _ = files
    model, _ = load_checkpoint(checkpoint)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---------------------------------------------------------------- FIFOs and device files


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    return path


def test_fifo_image_is_not_a_regular_file(fifo):
    for read in (load_image_rgb, image_size):
        with pytest.raises(DatasetError, match=rf"{fifo}: not a regular file \(a FIFO\)"):
            read(fifo)


def test_device_file_image_is_not_a_regular_file():
    with pytest.raises(DatasetError, match=r"/dev/null: not a regular file \(a device file\)"):
        load_image_rgb(Path("/dev/null"))


def test_directory_image_is_not_a_regular_file(tmp_path):
    with pytest.raises(DatasetError, match=r"not a regular file \(a directory\)"):
        load_image_rgb(tmp_path)


def test_missing_image_is_still_not_found(tmp_path):
    with pytest.raises(DatasetError, match="absent.jpg: image file not found"):
        load_image_rgb(tmp_path / "absent.jpg")


def test_detect_cli_on_a_fifo(files, fifo, capsys):
    checkpoint, _ = files
    assert detect_main(["--checkpoint", str(checkpoint), "--image", str(fifo)]) == 2
    err = capsys.readouterr().err
    assert f"{fifo}: not a regular file (a FIFO)" in err and "not found" not in err


def test_voc_annotation_naming_a_fifo(tmp_path, capsys):
    from model.data.__main__ import main as data_main

    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    os.mkfifo(root / "JPEGImages" / "a.jpg")
    xml = root / "Annotations" / "a.xml"
    cat = "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
    xml.write_text(f"<annotation><filename>a.jpg</filename><size><width>64</width><height>48</height></size>{cat}</annotation>")
    (root / "ImageSets" / "Main" / "test.txt").write_text("a\n")
    with pytest.raises(DatasetError, match=rf"{xml}: image {root / 'JPEGImages' / 'a.jpg'} is not a regular file \(a FIFO\)"):
        parse_voc_annotation(xml, root / "JPEGImages")
    # Fallback names (<id>.<ext>) are refused the same way, not skipped as "not found".
    xml.write_text(f"<annotation><size><width>64</width><height>48</height></size>{cat}</annotation>")
    with pytest.raises(DatasetError, match=r"a\.jpg is not a regular file \(a FIFO\)"):
        parse_voc_annotation(xml, root / "JPEGImages")
    assert data_main(["validate", "--root", str(root)]) == 1
    assert "is not a regular file (a FIFO)" in capsys.readouterr().out


def test_one_stage_checkpoint_device_and_non_finite_weights(tmp_path):
    from model.one_stage import OneStageDetector, load_one_stage, save_one_stage

    torch.manual_seed(0)
    cfg = DetectorConfig(class_names=("cat",), backbone="zf", pretrained=False, min_size=96, max_size=160,
                         anchors=AnchorConfig(scales=(2.0, 4.0, 8.0)))
    path = tmp_path / "one_stage.pt"
    save_one_stage(path, OneStageDetector(cfg, {"fc_width": 16}))
    with pytest.raises(DeviceError, match="map_location 'cuda:99'"):
        load_one_stage(path, map_location="cuda:99")
    assert next(load_one_stage(path).parameters()).device.type == "cpu"
    content = torch.load(path, weights_only=True)
    # The one-stage detector saves through model.checkpoint: one state dict per group.
    key = next(k for k, v in content["groups"]["head"].items() if v.is_floating_point())
    content["groups"]["head"][key].view(-1)[0] = float("nan")
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=rf"{path}: group 'head' tensor {key!r} has 1 non-finite value"):
        load_one_stage(path)
