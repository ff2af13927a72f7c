"""Synthetic VOC generator: byte-identical reruns, parameters respected, difficult objects, valid data."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import model.data.synthetic as synthetic
from model.data.images import load_image_rgb
from model.data.synthetic import SHAPE_CLASSES, SyntheticSpec, generate_synthetic_voc, render_synthetic_image
from model.data.validate import validate_dataset
from model.data.voc import load_voc, read_image_set

REPO = Path(__file__).resolve().parents[1]
SMALL = SyntheticSpec(num_images=16, image_size=(160, 120), seed=11, object_size=(20.0, 100.0), test_fraction=0.25)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    return generate_synthetic_voc(tmp_path_factory.mktemp("synth") / "voc", SMALL)


def test_two_generations_are_byte_identical(small_root, tmp_path):
    again = generate_synthetic_voc(tmp_path / "again", SMALL)
    first, second = _files(small_root), _files(again)
    assert len(first) == 2 * 16 + 4 + 1  # images, annotations, 4 image sets, marker
    assert first == second


def test_another_seed_gives_other_images(small_root, tmp_path):
    other = generate_synthetic_voc(tmp_path / "other", SyntheticSpec(**{**SMALL.to_dict(), "seed": 12}))
    assert (other / "JPEGImages" / "000001.jpg").read_bytes() != (small_root / "JPEGImages" / "000001.jpg").read_bytes()


def test_layout_splits_and_sizes(small_root):
    main = small_root / "ImageSets" / "Main"
    splits = {name: read_image_set(main / f"{name}.txt") for name in ("trainval", "test", "train", "val")}
    assert len(splits["test"]) == 4 and len(splits["trainval"]) == 12  # 16 * 0.25
    assert len(splits["val"]) == 4 and len(splits["train"]) == 8  # round(12 * 0.3) = 4
    assert sorted(splits["trainval"] + splits["test"]) == [f"{i:06d}" for i in range(1, 17)]
    assert sorted(splits["train"] + splits["val"]) == sorted(splits["trainval"])
    dataset = load_voc(small_root, "trainval")
    assert dataset.fixups == []
    assert set(dataset.classes) <= set(SHAPE_CLASSES)
    for record in dataset.records:
        assert (record.width, record.height) == (160, 120)
        assert load_image_rgb(record.path).shape == (120, 160, 3)


def test_xml_boxes_are_the_rendered_boxes(small_root):
    # The file is 1-based; reading it back must give exactly the renderer's 0-based boxes.
    dataset = load_voc(small_root, "test")
    for record in dataset.records:
        _, objects = render_synthetic_image(SMALL, int(record.image_id) - 1)
        assert [o.annotation for o in objects] == list(record.objects)


def test_validate_passes_with_no_fixups(small_root):
    report = validate_dataset(small_root)
    assert report.ok, report.problems
    assert report.fixups == [] and report.num_images == 16 and report.num_objects > 16


def test_parameters_are_respected():
    common = dict(image_size=(200, 150), classes=("ring", "star"), object_size=(30.0, 60.0), max_aspect_ratio=2.0,
                  tiny_fraction=0.0, truncation_fraction=0.0, seed=4)
    # One object per image: nothing occludes it, so its box is the drawn size and shape.
    single = SyntheticSpec(num_images=30, objects_per_image=(1, 1), **common)
    for index in range(single.num_images):
        pixels, objects = render_synthetic_image(single, index)
        assert pixels.shape == (150, 200, 3) and pixels.dtype == np.uint8
        assert len(objects) == 1
        x1, y1, x2, y2 = objects[0].annotation.box
        w, h = x2 - x1 + 1, y2 - y1 + 1
        assert objects[0].annotation.name in ("ring", "star")
        assert 0 <= x1 < x2 <= 199 and 0 <= y1 < y2 <= 149
        assert 29 <= max(w, h) <= 61  # rasterisation may lose a pixel
        assert max(w, h) / min(w, h) <= 2.0 * 1.1
    crowded = SyntheticSpec(num_images=30, objects_per_image=(3, 3), **common)
    counts = [len(render_synthetic_image(crowded, index)[1]) for index in range(crowded.num_images)]
    # At most 3 per image (placement may give up on crowding, occlusion may hide one).
    assert max(counts) == 3 and sum(counts) >= 0.8 * 3 * crowded.num_images


def test_default_spec_is_varied_and_has_difficult_objects():
    spec = SyntheticSpec()
    boxes, difficult, names, per_image = [], 0, set(), []
    for index in range(100):
        _, objects = render_synthetic_image(spec, index)
        per_image.append(len(objects))
        for obj in objects:
            names.add(obj.annotation.name)
            difficult += obj.annotation.difficult
            if not obj.annotation.difficult:
                x1, y1, x2, y2 = obj.annotation.box
                boxes.append((x2 - x1 + 1, y2 - y1 + 1))
    sizes = np.array([max(w, h) for w, h in boxes])
    ratios = np.array([h / w for w, h in boxes])
    assert names == set(SHAPE_CLASSES)
    assert 2 <= difficult <= 0.1 * sum(per_image)  # a few, as in VOC
    assert sizes.min() < 40 and sizes.max() > 140  # small and large objects
    assert ratios.min() < 0.5 and ratios.max() > 2.0  # wide and tall objects
    assert 2.0 <= np.mean(per_image) <= 3.2  # VOC07 trainval: 12,608 objects / 5,011 images


def test_regenerating_the_same_spec_is_a_no_op(small_root):
    marker = small_root / synthetic.MARKER_FILE
    before = marker.stat().st_mtime_ns
    assert generate_synthetic_voc(small_root, SMALL) == small_root
    assert marker.stat().st_mtime_ns == before
    assert json.loads(marker.read_text())["spec"]["seed"] == 11


def test_existing_folders_are_protected(tmp_path):
    root = generate_synthetic_voc(tmp_path / "voc", SyntheticSpec(num_images=2, image_size=(64, 64), seed=1))
    other = SyntheticSpec(num_images=3, image_size=(64, 64), seed=1)
    with pytest.raises(FileExistsError, match="another spec"):
        generate_synthetic_voc(root, other)
    generate_synthetic_voc(root, other, overwrite=True)
    assert len(read_image_set(root / "ImageSets" / "Main" / "trainval.txt")) + len(read_image_set(root / "ImageSets" / "Main" / "test.txt")) == 3
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a synthetic dataset"):
        generate_synthetic_voc(user, other, overwrite=True)
    assert (user / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user", "voc"]  # no staging leftovers


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    real = synthetic.render_synthetic_image

    def interrupted(spec, index):
        if index == 3:
            raise KeyboardInterrupt
        return real(spec, index)

    monkeypatch.setattr(synthetic, "render_synthetic_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_voc(tmp_path / "voc", SyntheticSpec(num_images=6, image_size=(64, 64)))
    assert list(tmp_path.iterdir()) == []


def test_spec_validation():
    with pytest.raises(ValueError, match="no renderer"):
        SyntheticSpec(classes=("circle", "dragon"))
    with pytest.raises(ValueError, match="num_images"):
        SyntheticSpec(num_images=0)
    with pytest.raises(ValueError, match="test_fraction"):
        SyntheticSpec(test_fraction=1.5)
    assert SyntheticSpec.from_dict(SyntheticSpec().to_dict()) == SyntheticSpec()


def test_png_format(tmp_path):
    root = generate_synthetic_voc(tmp_path / "voc", SyntheticSpec(num_images=3, image_size=(64, 48), image_format="png"))
    record = load_voc(root, "trainval").records[0]
    assert record.path.suffix == ".png"
    pixels, _ = render_synthetic_image(SyntheticSpec(num_images=3, image_size=(64, 48), image_format="png"), int(record.image_id) - 1)
    np.testing.assert_array_equal(load_image_rgb(record.path), pixels)  # lossless


def test_cli_synthesize(tmp_path):
    root = tmp_path / "cli"
    args = ["--root", str(root), "--num-images", "5", "--image-size", "96", "80", "--seed", "3", "--classes", "circle,cross"]
    out = subprocess.run([sys.executable, "-m", "model.data", "synthesize", *args], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    dataset = load_voc(root, "trainval")
    assert set(dataset.classes) <= {"circle", "cross"}
    assert dataset.records[0].width == 96 and dataset.records[0].height == 80
    bad = subprocess.run([sys.executable, "-m", "model.data", "synthesize", "--root", str(tmp_path / "x"), "--classes", "dragon"],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "dragon" in bad.stderr
