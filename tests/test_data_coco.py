"""COCO json conversion: inclusive boxes <-> [x, y, w, h], ids, difficult/crowd, bad files, the to-coco CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_in_process import run_main

from model.data.coco import dataset_to_coco, load_coco, main, write_coco_json
from model.data.records import DatasetError, DetectionDataset, ImageRecord, ObjectAnnotation

BCCD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "BCCD" / "BCCD"


def small_dataset() -> DetectionDataset:
    return DetectionDataset(
        root=Path("/data/toy"),
        classes=("cat", "dog"),
        records=[
            ImageRecord(
                "img_a",
                Path("/data/toy/JPEGImages/img_a.jpg"),
                width=100,
                height=80,
                objects=(
                    ObjectAnnotation("dog", (10.0, 20.0, 29.0, 59.0)),
                    ObjectAnnotation("cat", (0.0, 0.0, 0.0, 0.0), difficult=True),
                ),
            ),
            ImageRecord("img_b", Path("/data/toy/JPEGImages/img_b.jpg"), width=50, height=40),
        ],
    )


def test_dataset_to_coco_fields():
    coco = dataset_to_coco(small_dataset())
    assert coco["images"] == [
        {"id": 1, "file_name": "img_a.jpg", "width": 100, "height": 80},
        {"id": 2, "file_name": "img_b.jpg", "width": 50, "height": 40},
    ]
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "cat"), (2, "dog")]
    dog, cat = coco["annotations"]
    # Inclusive (10, 20, 29, 59): w = 29 - 10 + 1 = 20, h = 59 - 20 + 1 = 40, area 800.
    assert dog == {
        "id": 1, "image_id": 1, "category_id": 2, "bbox": [10.0, 20.0, 20.0, 40.0],
        "area": 800.0, "iscrowd": 0, "ignore": 0,
    }
    # A single-pixel box is 1 x 1, and difficult becomes ignore = 1.
    assert cat["bbox"] == [0.0, 0.0, 1.0, 1.0] and cat["ignore"] == 1 and cat["iscrowd"] == 0
    assert len(dataset_to_coco(small_dataset(), include_difficult=False)["annotations"]) == 1


def test_write_and_load_round_trip(tmp_path):
    path = write_coco_json(small_dataset(), tmp_path / "sub" / "gt.json")
    assert not list(path.parent.glob(".*tmp"))
    back = load_coco(path, tmp_path / "images")
    assert back.classes == ("cat", "dog")
    assert [r.image_id for r in back.records] == ["img_a", "img_b"]
    assert back.records[0].path == tmp_path / "images" / "img_a.jpg"
    assert (back.records[0].width, back.records[0].height) == (100, 80)
    assert back.records[0].objects == small_dataset().records[0].objects  # difficult survives via ignore
    assert back.records[1].objects == ()
    assert back.fixups == []


def coco_file(tmp_path, **overrides) -> Path:
    payload = {
        "images": [{"id": 7, "file_name": "x/0001.jpg", "width": 64, "height": 48}],
        "categories": [{"id": 5, "name": "b"}, {"id": 3, "name": "a"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 5, "bbox": [1.5, 2, 10, 4], "iscrowd": 0, "area": 40},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 64, 48], "iscrowd": 1, "area": 1},
            {"id": 3, "image_id": 7, "category_id": 3, "bbox": [60, 40, 10, 10], "iscrowd": 0, "area": 1},
            {"id": 4, "image_id": 7, "category_id": 3, "bbox": [3, 3, 0, 5], "iscrowd": 0, "area": 0},
        ],
    }
    payload.update(overrides)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(payload))
    return path


def test_load_coco_conventions(tmp_path):
    dataset = load_coco(coco_file(tmp_path), tmp_path)
    # Classes in category-id order: id 3 "a" is label 1, id 5 "b" label 2.
    assert dataset.classes == ("a", "b")
    record = dataset.records[0]
    assert record.image_id == "0001"  # the file stem
    objects = record.objects
    # [1.5, 2, 10, 4] -> x2 = 1.5 + 10 - 1 = 10.5, y2 = 2 + 4 - 1 = 5.
    assert objects[0] == ObjectAnnotation("b", (1.5, 2.0, 10.5, 5.0), False)
    # The crowd box is kept as difficult.
    assert objects[1] == ObjectAnnotation("a", (0.0, 0.0, 63.0, 47.0), True)
    # [60, 40, 10, 10] -> (60, 40, 69, 49) clipped to the 64x48 image; the w = 0 box dropped.
    assert objects[2] == ObjectAnnotation("a", (60.0, 40.0, 63.0, 47.0), False)
    assert len(objects) == 3
    assert len(dataset.fixups) == 2
    assert all(str(tmp_path / "instances.json") in line for line in dataset.fixups)


def test_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    with pytest.raises(DatasetError, match=r"broken\.json: malformed JSON"):
        load_coco(path, tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(DatasetError, match=r"broken\.json: top level must be a JSON object"):
        load_coco(path, tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        load_coco(tmp_path / "absent.json", tmp_path)


def test_bad_content_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="unknown category_id 9"):
        load_coco(coco_file(tmp_path, annotations=[{"id": 1, "image_id": 7, "category_id": 9, "bbox": [0, 0, 1, 1]}]), tmp_path)
    with pytest.raises(DatasetError, match="unknown image ids"):
        load_coco(coco_file(tmp_path, annotations=[{"id": 1, "image_id": 8, "category_id": 3, "bbox": [0, 0, 1, 1]}]), tmp_path)
    with pytest.raises(DatasetError, match="bbox must be"):
        load_coco(coco_file(tmp_path, annotations=[{"id": 1, "image_id": 7, "category_id": 3, "bbox": [0, 0, 1]}]), tmp_path)
    with pytest.raises(DatasetError, match="escapes the images folder"):
        load_coco(coco_file(tmp_path, images=[{"id": 7, "file_name": "../../etc/x.jpg", "width": 4, "height": 4}]), tmp_path)
    two = [{"id": 7, "file_name": "a/s.jpg", "width": 4, "height": 4}, {"id": 8, "file_name": "b/s.jpg", "width": 4, "height": 4}]
    with pytest.raises(DatasetError, match="share the file stem 's'"):
        load_coco(coco_file(tmp_path, images=two, annotations=[]), tmp_path)
    with pytest.raises(DatasetError, match="bad or missing field"):
        load_coco(coco_file(tmp_path, annotations=[{"image_id": 7, "category_id": 3, "bbox": [0, 0, 1, 1]}]), tmp_path)


@pytest.mark.skipif(not BCCD.is_dir(), reason=f"BCCD dataset not found at {BCCD}")
def test_to_coco_cli_on_bccd(tmp_path):
    from model.data.voc import load_voc

    out = tmp_path / "bccd_test.json"
    completed = run_main(main, "to-coco", "--voc-root", str(BCCD), "--split", "test", "--out", str(out))
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == ""
    coco = json.loads(out.read_text())
    voc = load_voc(BCCD, "test")
    assert len(coco["images"]) == len(voc) == 72
    assert [c["name"] for c in coco["categories"]] == list(voc.classes)
    assert len(coco["annotations"]) == sum(len(r.objects) for r in voc.records)
    # And back: the same records, boxes and all.
    back = load_coco(out, BCCD / "JPEGImages")
    assert [r.image_id for r in back.records] == [r.image_id for r in voc.records]
    assert [r.objects for r in back.records] == [r.objects for r in voc.records]
    assert back.records[0].path == voc.records[0].path


def test_quiet_stdout_from_two_threads_leaves_stdout_as_it_was() -> None:
    # The pipeline flow scores ablation rows in two threads: overlapping redirects of the
    # process-wide sys.stdout once left it pointing at one thread's buffer for good.
    import sys
    import threading
    import time

    from model.data.coco import quiet_stdout

    original = sys.stdout
    first_inside, second_starting, first_done = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with quiet_stdout("first"):
            first_inside.set()
            second_starting.wait(5)
            time.sleep(0.3)  # the second thread tries to redirect meanwhile
        first_done.set()

    def second() -> None:
        first_inside.wait(5)
        second_starting.set()
        with quiet_stdout("second"):
            first_done.wait(5)  # ends its redirect after the first thread ended its own

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sys.stdout is original
