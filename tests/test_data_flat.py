"""Flat layout: seeded hash split (stable, disjoint, exact sizes) and the loader, incl. the dispatcher."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from model.data.flat import hash_order, load_flat, split_ids
from model.data.loading import load_dataset
from model.data.records import DatasetError

REPO = Path(__file__).resolve().parents[1]
IDS = [f"img_{i:03d}" for i in range(50)]


def test_split_is_an_exact_disjoint_cover():
    train, test = split_ids(IDS, "train", 0.2, seed=3), split_ids(IDS, "test", 0.2, seed=3)
    assert len(test) == 10 and len(train) == 40
    assert not set(train) & set(test) and sorted(train + test) == IDS
    assert train == sorted(train) and test == sorted(test)
    assert split_ids(IDS, "all") == IDS
    assert split_ids(IDS, "trainval", 0.2, seed=3) == train


def test_split_matches_the_documented_hash_rule():
    # Recomputed independently: order by sha256("<seed>:<id>"), the first round(n * f) are test.
    digests = sorted(IDS, key=lambda i: hashlib.sha256(f"7:{i}".encode()).digest())
    assert split_ids(IDS, "test", 0.3, seed=7) == sorted(digests[:15])
    assert hash_order(IDS, 7) == digests


def test_split_is_independent_of_input_order_and_depends_on_seed():
    shuffled = IDS[::-1]
    assert split_ids(shuffled, "test", 0.2, seed=1) == split_ids(IDS, "test", 0.2, seed=1)
    assert split_ids(IDS, "test", 0.2, seed=1) != split_ids(IDS, "test", 0.2, seed=2)


def test_split_is_stable_across_interpreters():
    # A different PYTHONHASHSEED must not change anything (hashlib, not hash()).
    code = "from model.data.flat import split_ids; print(','.join(split_ids([f'img_{i:03d}' for i in range(50)], 'test', 0.2, 3)))"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().split(",") == split_ids(IDS, "test", 0.2, seed=3)


def test_split_edge_cases():
    assert split_ids(["a", "b"], "test", 0.01) != []  # at least one test id
    assert split_ids(["a", "b"], "train", 0.99) != []  # and one train id
    assert split_ids(["a"], "test", 0.5) == []  # round(0.5) is 1 would empty train; one image stays train
    assert split_ids(IDS, "test", 0.0) == [] and split_ids(IDS, "train", 1.0) == []
    with pytest.raises(ValueError, match="split"):
        split_ids(IDS, "val")
    with pytest.raises(ValueError, match="test_fraction"):
        split_ids(IDS, "test", 1.5)


def _flat_dataset(root: Path, images_folder: str = "images") -> Path:
    for i in range(10):
        name = "a" if i % 2 else "b"
        (root / images_folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30)).save(root / images_folder / f"p{i}.png")
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"p{i}.xml").write_text(
            f"<annotation><filename>p{i}.png</filename><size><width>40</width><height>30</height></size>"
            f"<object><name>{name}</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object>"
            "</annotation>"
        )
    return root


def test_load_flat_splits_and_classes(tmp_path):
    root = _flat_dataset(tmp_path / "flat")
    train = load_flat(root / "Annotations", root / "images", "train", test_fraction=0.3, seed=5)
    test = load_flat(root / "Annotations", root / "images", "test", test_fraction=0.3, seed=5)
    assert len(train) == 7 and len(test) == 3
    assert {r.image_id for r in train.records} | {r.image_id for r in test.records} == {f"p{i}" for i in range(10)}
    assert train.classes == test.classes == ("a", "b")
    record = test.records[0]
    assert record.path == root / "images" / f"{record.image_id}.png"
    assert record.objects[0].box == (1.0, 2.0, 19.0, 29.0)


def test_load_dataset_dispatches_flat_with_images_folder(tmp_path):
    root = _flat_dataset(tmp_path / "flat")
    dataset = load_dataset(root, "flat", "all")
    assert len(dataset) == 10 and dataset.classes == ("a", "b")
    dataset = load_dataset(root, "flat", "test", test_fraction=0.5, seed=1)
    assert len(dataset) == 5


def test_load_flat_errors(tmp_path):
    root = _flat_dataset(tmp_path / "flat")
    with pytest.raises(DatasetError, match="nowhere.*images folder not found"):
        load_flat(root / "Annotations", root / "nowhere")
    (root / "empty").mkdir()
    with pytest.raises(DatasetError, match="no \\*.xml"):
        load_flat(root / "empty", root / "images")
    with pytest.raises(ValueError, match="layout"):
        load_dataset(root, "yolo")


def test_bccd_as_a_flat_dataset(bccd_root):
    train = load_flat(bccd_root / "Annotations", bccd_root / "JPEGImages", "train", test_fraction=0.2, seed=0)
    test = load_flat(bccd_root / "Annotations", bccd_root / "JPEGImages", "test", test_fraction=0.2, seed=0)
    assert (len(train), len(test)) == (291, 73)  # round(364 * 0.2) = 73
    assert train.classes == test.classes == ("Platelets", "RBC", "WBC")
    assert len(train.fixups) + len(test.fixups) == 2
