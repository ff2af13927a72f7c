"""Devkit results files: 1-based on disk, 0-based in memory, one file per class, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.detections import Detections
from model.evaluation.results_io import read_class_results, read_voc_results, write_voc_results

CLASSES = ("cat", "dog", "cow")


def detections():
    return {
        "000001": Detections(
            boxes=torch.tensor([[0.0, 0.0, 9.0, 9.0], [10.5, 20.0, 30.0, 40.25]]),
            scores=torch.tensor([0.9, 0.1234567]),
            labels=torch.tensor([1, 2]),
        ),
        "000002": Detections(
            boxes=torch.tensor([[5.0, 6.0, 7.0, 8.0]]),
            scores=torch.tensor([0.5]),
            labels=torch.tensor([1]),
        ),
        "000003": Detections.empty(),
    }


def test_files_are_one_based_and_one_per_class(tmp_path):
    paths = write_voc_results(detections(), CLASSES, tmp_path, "test")
    assert [p.name for p in paths] == ["comp4_det_test_cat.txt", "comp4_det_test_dog.txt", "comp4_det_test_cow.txt"]
    # (0,0,9,9) 0-based is (1,1,10,10) in the devkit's 1-based pixels.
    assert paths[0].read_text().splitlines() == [
        "000001 0.900000 1.0 1.0 10.0 10.0",
        "000002 0.500000 6.0 7.0 8.0 9.0",
    ]
    # 40.25 + 1 = 41.25 -> '{:.1f}' -> 41.2 (round half to even on the binary value).
    assert paths[1].read_text().splitlines() == ["000001 0.123457 11.5 21.0 31.0 41.2"]
    assert paths[2].read_text() == ""  # a class without detections still gets its file
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_round_trip_back_to_zero_based(tmp_path):
    write_voc_results(detections(), CLASSES, tmp_path, "test")
    back = read_voc_results(tmp_path, "test", CLASSES)
    assert set(back) == {"000001", "000002"}  # images without detections are absent
    first = back["000001"]
    # Grouped by class: cat first, then dog.
    assert first.labels.tolist() == [1, 2]
    np.testing.assert_allclose(first.boxes.numpy(), [[0, 0, 9, 9], [10.5, 20, 30, 40.2]], atol=1e-9)
    np.testing.assert_allclose(first.scores.numpy(), [0.9, 0.123457], atol=1e-12)
    np.testing.assert_allclose(back["000002"].boxes.numpy(), [[5, 6, 7, 8]])


def test_read_class_results_keeps_file_order(tmp_path):
    path = tmp_path / "comp4_det_val_cat.txt"
    path.write_text("b 0.5 1 1 10 10\n\na 0.7 2 2 20 20\r\n")
    ids, scores, boxes = read_class_results(path)
    assert ids == ["b", "a"]
    assert scores.tolist() == [0.5, 0.7]
    assert boxes.tolist() == [[0, 0, 9, 9], [1, 1, 19, 19]]


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("000002 0.5 1 1 10", "expected 'image_id score x1 y1 x2 y2', got 5 fields"),
        ("000002 high 1 1 10 10", "non-numeric"),
        ("000002 0.5 1 1 10 nan", "non-finite"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line, message):
    write_voc_results(detections(), CLASSES, tmp_path, "test")
    path = tmp_path / "comp4_det_test_dog.txt"
    path.write_text("000001 0.9 1 1 10 10\n000001 0.8 1 1 10 10\n" + bad_line + "\n")
    with pytest.raises(ValueError, match=message) as info:
        read_voc_results(tmp_path, "test", CLASSES)
    assert f"{path}:3:" in str(info.value)


def test_missing_class_file_is_a_clear_error(tmp_path):
    write_voc_results(detections(), CLASSES, tmp_path, "test")
    (tmp_path / "comp4_det_test_cow.txt").unlink()
    with pytest.raises(FileNotFoundError, match="comp4_det_test_cow.txt.*'cow'"):
        read_voc_results(tmp_path, "test", CLASSES)


def test_rejects_bad_labels_and_unsafe_names(tmp_path):
    bad = {"x": Detections(torch.zeros((1, 4)), torch.ones(1), torch.tensor([4]))}
    with pytest.raises(ValueError, match="labels must be in 1..3"):
        write_voc_results(bad, CLASSES, tmp_path, "test")
    good = {"x y": Detections(torch.zeros((1, 4)), torch.ones(1), torch.tensor([1]))}
    with pytest.raises(ValueError, match="image id 'x y'"):
        write_voc_results(good, CLASSES, tmp_path, "test")
    with pytest.raises(ValueError, match="image set '../up'"):
        write_voc_results({}, CLASSES, tmp_path, "../up")


def test_fast_and_line_readers_agree(tmp_path):
    # The numpy fast path must give bit-identical values to the line-by-line reader.
    from model.evaluation.results_io import _read_by_line, _read_fast

    rng = np.random.default_rng(0)
    path = tmp_path / "comp4_det_x_cat.txt"
    lines = [
        f"im{int(i)} {s:.6f} {a:.1f} {b:.1f} {c:.1f} {d:.1f}"
        for i, s, a, b, c, d in zip(rng.integers(0, 50, 300), rng.random(300), *(rng.uniform(0, 500, (4, 300))))
    ]
    path.write_text("\n".join(lines[:150]) + "\n\n  \r\n" + "\r\n".join(lines[150:]) + "\n")
    fast_ids, fast_values = _read_fast(path)
    slow_ids, slow_values = _read_by_line(path)
    assert fast_ids == slow_ids and len(fast_ids) == 300
    np.testing.assert_array_equal(fast_values, slow_values)
