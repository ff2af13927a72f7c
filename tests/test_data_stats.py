"""Dataset statistics (``python -m model.data stats``) against counts worked by hand."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from model.data.__main__ import main
from model.data.records import DetectionDataset, ImageRecord, ObjectAnnotation
from model.data.stats import dataset_stats
from model.data.synthetic import SyntheticSpec, generate_synthetic_voc


def _image(path, width, height, boxes, value=255):
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    for x1, y1, x2, y2 in boxes:
        pixels[y1 : y2 + 1, x1 : x2 + 1] = value
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture()
def hand_dataset(tmp_path):
    # Image a: 100x50, a 16x16 circle (truncated) and a difficult 8x8 square.
    # Image b: 100x50, one 32x8 circle (occluded). Image c: 60x60, no object.
    a = ImageRecord("a", _image(tmp_path / "a.png", 100, 50, [(0, 0, 15, 15), (50, 10, 57, 17)]), 100, 50, (
        ObjectAnnotation("circle", (0.0, 0.0, 15.0, 15.0), truncated=True),
        ObjectAnnotation("square", (50.0, 10.0, 57.0, 17.0), difficult=True),
    ))
    b = ImageRecord("b", _image(tmp_path / "b.png", 100, 50, [(10, 10, 41, 17)]), 100, 50, (
        ObjectAnnotation("circle", (10.0, 10.0, 41.0, 17.0), occluded=True),
    ))
    c = ImageRecord("c", _image(tmp_path / "c.png", 60, 60, []), 60, 60, ())
    return DetectionDataset(tmp_path, ("circle", "square"), [a, b, c])


def test_counts_sizes_and_flags_by_hand(hand_dataset):
    stats = dataset_stats(hand_dataset, (100, 200))
    assert stats.images == 3 and stats.objects == 3 and stats.objects_not_difficult == 2
    assert stats.objects_per_image == pytest.approx(1.0)
    assert stats.objects_per_image_not_difficult == pytest.approx(2 / 3)
    assert stats.max_objects_per_image == 2
    # sqrt(16 * 16) = 16 and sqrt(32 * 8) = 16 px; both images are scaled by min(100/50, 200/100) = 2.
    assert stats.size_px_quantiles["p50"] == pytest.approx(16.0)
    assert stats.size_cells_quantiles["p50"] == pytest.approx(2.0)
    assert stats.size_octaves_p5_p95 == pytest.approx(0.0)
    assert stats.truncated_fraction == pytest.approx(1 / 3)
    assert stats.occluded_fraction == pytest.approx(1 / 3)
    assert stats.difficult_fraction == pytest.approx(1 / 3)
    # Difficult objects are not counted per class (as training sees them).
    assert stats.class_counts == {"circle": 2, "square": 0}
    assert stats.class_imbalance == pytest.approx(1.0)


def test_input_scale_changes_cells_not_pixels(hand_dataset):
    small = dataset_stats(hand_dataset, (25, 50), colour=False)
    # scale min(25/50, 50/100) = 0.5: 16 px -> 8 px -> 0.5 cells.
    assert small.size_px_quantiles["p50"] == pytest.approx(16.0)
    assert small.size_cells_quantiles["p50"] == pytest.approx(0.5)
    assert small.colour is None


def test_colour_cues_separable_and_not(hand_dataset, tmp_path):
    # White boxes on black: colour alone finds every object pixel.
    assert dataset_stats(hand_dataset, (100, 200)).colour.objectness_from_colour == pytest.approx(1.0)
    # The same boxes on an image of one grey: colour says nothing.
    grey = [
        ImageRecord(r.image_id, _image(tmp_path / f"grey_{r.image_id}.png", r.width, r.height, [], 0), r.width, r.height,
                    r.objects)
        for r in hand_dataset.records
    ]
    cues = dataset_stats(DetectionDataset(tmp_path, hand_dataset.classes, grey), (100, 200)).colour
    assert cues.objectness_from_colour == pytest.approx(0.5)


def test_class_from_colour_fits_even_scores_odd(tmp_path):
    # Four images, one object each: red circles (0, 1) and blue squares (2, 3). Images 0 and
    # 2 fit the colour->class rule, 1 and 3 are scored: colour predicts class perfectly here.
    records = []
    red, blue = ("circle", (255, 0, 0)), ("square", (0, 0, 255))
    for index, (name, colour) in enumerate([red, red, blue, blue]):
        pixels = np.zeros((20, 20, 3), dtype=np.uint8)
        pixels[5:15, 5:15] = colour
        path = tmp_path / f"{index}.png"
        Image.fromarray(pixels).save(path)
        records.append(ImageRecord(str(index), path, 20, 20, (ObjectAnnotation(name, (5.0, 5.0, 14.0, 14.0)),)))
    cues = dataset_stats(DetectionDataset(tmp_path, ("circle", "square"), records), (20, 20)).colour
    assert cues.class_from_colour == pytest.approx(1.0)
    assert cues.class_majority == pytest.approx(0.5)


def test_default_synthetic_data_has_the_properties_it_claims(tmp_path):
    # The generator's promises, measured on a small set of the default spec.
    root = generate_synthetic_voc(tmp_path / "voc", SyntheticSpec(num_images=40, test_fraction=0.5, seed=3))
    from model.data.voc import load_voc

    stats = dataset_stats(load_voc(root, "trainval"), (240, 320))
    assert 1.8 <= stats.objects_per_image <= 3.2  # VOC07 trainval: 12,608 / 5,011 = 2.5
    assert stats.size_octaves_p5_p95 >= 1.5  # sizes spread over octaves of feature cells
    assert stats.truncated_fraction > 0 and stats.occluded_fraction > 0
    assert stats.colour.objectness_from_colour < 0.7  # colour is a weak cue to objectness
    assert stats.colour.class_from_colour < stats.colour.class_majority + 0.25  # and none to the class


def test_cli_text_and_json(tmp_path, capsys):
    root = generate_synthetic_voc(tmp_path / "voc", SyntheticSpec(num_images=6, image_size=(96, 80), seed=2))
    assert main(["stats", "--root", str(root), "--split", "trainval", "--input-size", "80", "96"]) == 0
    text = capsys.readouterr().out
    assert "objects per image" in text and "stride-16 cells at input 80/96" in text and "colour cues" in text
    assert main(["stats", "--root", str(root), "--json", "--no-colour"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["images"] == 4 and data["colour"] is None and data["input_size"] == [600, 1000]
    assert main(["stats", "--root", str(tmp_path / "missing")]) == 1
    assert "missing" in capsys.readouterr().err
    assert main(["stats", "--root", str(root), "--input-size", "100", "50"]) == 2
    assert "--input-size" in capsys.readouterr().err
    assert math.isfinite(data["objects_per_image"])
