"""COCO identifiers are unique and flags are flags: what pycocotools would merge or guess is refused,
exact repeats are kept once as a named fix-up. Through ``load_coco`` and the ``validate`` CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.data.__main__ import main as data_main
from model.data.coco import load_coco
from model.data.records import DatasetError


def image(i: int, name: str | None = None) -> dict:
    return {"id": i, "file_name": name or f"im{i}.jpg", "width": 100, "height": 80}


def ann(i: int, image_id: int, category_id: int = 1, bbox=(10, 10, 20, 20), **extra) -> dict:
    return {"id": i, "image_id": image_id, "category_id": category_id, "bbox": list(bbox), "iscrowd": 0, **extra}


def write(tmp_path: Path, images=None, annotations=None, categories=None) -> Path:
    content = {
        "images": images if images is not None else [image(1), image(2)],
        "annotations": annotations if annotations is not None else [ann(1, 1), ann(2, 2, 2)],
        "categories": categories if categories is not None else [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(content))
    return path


def test_clean_file_loads(tmp_path):
    dataset = load_coco(write(tmp_path), tmp_path / "images")
    assert [r.image_id for r in dataset.records] == ["im1", "im2"]
    assert [o.name for r in dataset.records for o in r.objects] == ["cat", "dog"]


@pytest.mark.parametrize(
    "field, content, message",
    [
        # Two images with id 1: pycocotools would give both the boxes of either.
        ("images", [image(1, "a.jpg"), image(1, "b.jpg")], "image id 1 is used twice, by entries 0 and 1 of 'images'"),
        # Two categories with id 1: one class's boxes would be labelled as the other.
        ("categories", [{"id": 1, "name": "cat"}, {"id": 1, "name": "dog"}, {"id": 2, "name": "cow"}],
         "category id 1 is used twice, by entries 0 and 1 of 'categories'"),
        ("annotations", [ann(5, 1), ann(5, 2, 2)], "annotation id 5 is used twice, by entries 0 and 1 of 'annotations'"),
        ("images", [image(1), {"id": "2", "file_name": "x.jpg", "width": 4, "height": 4}],
         "image entry 1 has id '2'; ids must be integers"),
        ("images", [image(1), {"id": True, "file_name": "x.jpg", "width": 4, "height": 4}],
         "image entry 1 has id True; ids must be integers"),
    ],
)
def test_duplicate_or_malformed_ids_are_refused(tmp_path, capsys, field, content, message):
    path = write(tmp_path, **{field: content})
    with pytest.raises(DatasetError) as caught:
        load_coco(path, tmp_path / "images")
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    assert data_main(["validate", "--root", str(path), "--layout", "coco", "--no-decode"]) == 1
    out = capsys.readouterr().out
    assert message in out and "INVALID" in out


@pytest.mark.parametrize("key, value", [("image_id", True), ("image_id", "1"), ("category_id", True), ("category_id", 1.0)])
def test_references_must_be_integer_ids(tmp_path, key, value):
    path = write(tmp_path, annotations=[ann(1, 1), {**ann(2, 2, 2), key: value}])
    with pytest.raises(DatasetError) as caught:
        load_coco(path, tmp_path / "images")
    assert str(caught.value) == f"{path}: annotation 2: {key} must be an integer id, got {value!r}"


@pytest.mark.parametrize("key, value", [("iscrowd", 2), ("iscrowd", "1"), ("iscrowd", None), ("iscrowd", 0.5), ("ignore", -1)])
def test_non_boolean_flags_are_refused(tmp_path, capsys, key, value):
    path = write(tmp_path, annotations=[ann(1, 1), ann(2, 2, 2, **{key: value})])
    with pytest.raises(DatasetError) as caught:
        load_coco(path, tmp_path / "images")
    assert f"{path}: annotation 2 (image 2): {key} must be 0 or 1, got {value!r}" == str(caught.value)
    assert data_main(["validate", "--root", str(path), "--layout", "coco", "--no-decode"]) == 1
    assert f"{key} must be 0 or 1" in capsys.readouterr().out


@pytest.mark.parametrize("value, difficult", [(0, False), (1, True), (True, True), (False, False)])
def test_boolean_flags_are_read(tmp_path, value, difficult):
    dataset = load_coco(write(tmp_path, annotations=[ann(1, 1, iscrowd=value)]), tmp_path / "images")
    assert dataset.records[0].objects[0].difficult is difficult


def test_exact_repeat_is_kept_once_as_a_fixup(tmp_path):
    path = write(tmp_path, annotations=[ann(1, 1), ann(2, 1), ann(3, 1, 2), ann(4, 2)])
    dataset = load_coco(path, tmp_path / "images")
    assert [o.name for o in dataset.records[0].objects] == ["cat", "dog"]
    assert len(dataset.records[1].objects) == 1  # same box in another image: its own object
    assert len(dataset.fixups) == 1
    assert dataset.fixups[0].startswith(f"{path}: image 1: annotation 2 (cat) has the same class and box")
