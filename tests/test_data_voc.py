"""VOC reader: 1-based -> 0-based boxes, fix-ups, hard errors on untrusted input, and the real BCCD set."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from PIL import Image

from model.data.records import DatasetError
from model.data.voc import (
    VOC_CLASSES,
    discover_classes,
    load_voc,
    load_voc_annotations,
    parse_voc_annotation,
    read_image_set,
    training_objects,
)


def write_annotation(
    path: Path,
    objects: list[tuple] = (),
    size: tuple[int, int] | None = (100, 80),
    filename: str | None = "img.jpg",
) -> Path:
    """A VOC XML file; objects are ``(name, xmin, ymin, xmax, ymax[, difficult])`` as written (1-based)."""
    parts = ["<annotation>", "<folder>JPEGImages</folder>"]
    if filename is not None:
        parts.append(f"<filename>{filename}</filename>")
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for obj in objects:
        name, xmin, ymin, xmax, ymax = obj[:5]
        difficult = obj[5] if len(obj) > 5 else 0
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
            f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def write_image(path: Path, size: tuple[int, int] = (100, 80)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 60, 30)).save(path)
    return path


@pytest.fixture
def voc_dirs(tmp_path):
    return tmp_path / "Annotations", tmp_path / "JPEGImages"


# ---------------------------------------------------------------- conversion and flags


def test_one_based_corners_become_zero_based(voc_dirs):
    annotations, images = voc_dirs
    write_image(images / "img.jpg")
    # Worked by hand: VOC pixel 1 is library pixel 0; (1, 1, 10, 20) covers 10x20 pixels.
    xml = write_annotation(annotations / "a.xml", [("dog", 1, 1, 10, 20), ("cat", 12.5, 30, 100, 80, 1)])
    record, fixups = parse_voc_annotation(xml, images)
    assert fixups == []
    assert record.image_id == "a" and record.path == images / "img.jpg"
    assert (record.width, record.height) == (100, 80)
    assert [o.name for o in record.objects] == ["dog", "cat"]
    assert record.objects[0].box == (0.0, 0.0, 9.0, 19.0)
    assert record.objects[1].box == (11.5, 29.0, 99.0, 79.0)  # the image's last pixel, not clipped
    assert [o.difficult for o in record.objects] == [False, True]


def test_difficult_objects_are_kept_but_not_for_training(voc_dirs):
    annotations, images = voc_dirs
    write_image(images / "img.jpg")
    xml = write_annotation(annotations / "a.xml", [("dog", 5, 5, 20, 20, 1), ("dog", 30, 30, 50, 50, 0)])
    record, _ = parse_voc_annotation(xml, images)
    assert len(record.objects) == 2
    kept = training_objects(record)
    assert len(kept) == 1 and kept[0].box == (29.0, 29.0, 49.0, 49.0)


def test_voc_classes_are_the_twenty_in_standard_order():
    assert len(VOC_CLASSES) == 20
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[14] == "person" and VOC_CLASSES[-1] == "tvmonitor"


# ---------------------------------------------------------------- counted fix-ups


def test_box_partly_outside_is_clipped_and_counted(voc_dirs):
    annotations, images = voc_dirs
    write_image(images / "img.jpg")
    xml = write_annotation(annotations / "a.xml", [("dog", 0, -4, 150, 50), ("dog", 10, 10, 20, 20)])
    record, fixups = parse_voc_annotation(xml, images)
    assert record.objects[0].box == (0.0, 0.0, 99.0, 49.0)
    assert record.objects[1].box == (9.0, 9.0, 19.0, 19.0)
    assert len(fixups) == 1 and str(xml) in fixups[0] and "clipped" in fixups[0]


def test_box_entirely_outside_is_dropped_and_counted(voc_dirs):
    annotations, images = voc_dirs
    write_image(images / "img.jpg")
    xml = write_annotation(annotations / "a.xml", [("dog", 120, 10, 140, 20)])
    record, fixups = parse_voc_annotation(xml, images)
    assert record.objects == ()
    assert len(fixups) == 1 and "outside" in fixups[0] and str(xml) in fixups[0]


@pytest.mark.parametrize("corners, kind", [((30, 40, 30, 40), "zero-area"), ((30, 40, 30, 60), "zero-area"), ((50, 40, 30, 60), "inverted")])
def test_degenerate_box_is_dropped_with_a_warning(voc_dirs, caplog, corners, kind):
    annotations, images = voc_dirs
    write_image(images / "img.jpg")
    xml = write_annotation(annotations / "bad.xml", [("dog", *corners), ("dog", 1, 1, 5, 5)])
    with caplog.at_level(logging.WARNING, logger="model.data.voc"):
        record, fixups = parse_voc_annotation(xml, images)
    assert len(record.objects) == 1 and record.objects[0].box == (0.0, 0.0, 4.0, 4.0)
    assert len(fixups) == 1 and kind in fixups[0] and "bad.xml" in fixups[0]
    assert any("bad.xml" in message and kind in message for message in caplog.messages)


def test_missing_size_is_read_from_the_image(voc_dirs):
    annotations, images = voc_dirs
    write_image(images / "img.jpg", size=(64, 48))
    xml = write_annotation(annotations / "a.xml", [("dog", 1, 1, 64, 48)], size=None)
    record, fixups = parse_voc_annotation(xml, images)
    assert (record.width, record.height) == (64, 48)
    assert record.objects[0].box == (0.0, 0.0, 63.0, 47.0)
    assert len(fixups) == 1 and "size" in fixups[0] and str(xml) in fixups[0]


def test_zero_size_counts_as_missing(voc_dirs):
    annotations, images = voc_dirs
    write_image(images / "img.jpg", size=(64, 48))
    xml = write_annotation(annotations / "a.xml", [("dog", 1, 1, 5, 5)], size=(0, 0))
    record, fixups = parse_voc_annotation(xml, images)
    assert (record.width, record.height) == (64, 48) and len(fixups) == 1


def test_missing_size_without_images_is_an_error(voc_dirs):
    annotations, _ = voc_dirs
    xml = write_annotation(annotations / "a.xml", [("dog", 1, 1, 5, 5)], size=None)
    with pytest.raises(DatasetError, match="a.xml.*size"):
        parse_voc_annotation(xml, None)


def test_filename_fallback_to_image_id(voc_dirs):
    annotations, images = voc_dirs
    write_image(images / "a.png")
    # No <filename>: <id>.<ext> is the convention, not a repair.
    record, fixups = parse_voc_annotation(write_annotation(annotations / "a.xml", filename=None), images)
    assert record.path == images / "a.png" and fixups == []
    # A <filename> that does not exist while <id>.png does: used, and counted.
    record, fixups = parse_voc_annotation(write_annotation(annotations / "a.xml", filename="old_name.jpg"), images)
    assert record.path == images / "a.png"
    assert len(fixups) == 1 and "old_name.jpg" in fixups[0]


# ---------------------------------------------------------------- hard errors


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotation><filename>img.jpg</filename><object><name>&lol9;</name></object></annotation>
"""


def test_billion_laughs_is_refused_quickly(voc_dirs):
    annotations, images = voc_dirs
    write_image(images / "img.jpg")
    xml = annotations / "laughs.xml"
    xml.parent.mkdir(parents=True)
    xml.write_text(BILLION_LAUGHS)
    start = time.monotonic()
    with pytest.raises(DatasetError, match="laughs.xml.*forbidden"):
        parse_voc_annotation(xml, images)
    assert time.monotonic() - start < 2.0


def test_external_entity_is_refused(voc_dirs, tmp_path):
    annotations, images = voc_dirs
    secret = tmp_path / "secret.txt"
    secret.write_text("dog")
    xml = annotations / "xxe.xml"
    xml.parent.mkdir(parents=True)
    xml.write_text(
        f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file://{secret}">]>'
        "<annotation><object><name>&x;</name></object></annotation>"
    )
    with pytest.raises(DatasetError, match="xxe.xml.*forbidden"):
        parse_voc_annotation(xml, None)


@pytest.mark.parametrize("filename", ["../../etc/passwd", "/etc/passwd", "sub/../../outside.jpg"])
def test_filename_may_not_escape_the_images_folder(voc_dirs, filename):
    annotations, images = voc_dirs
    write_image(images / "img.jpg")
    xml = write_annotation(annotations / "escape.xml", [("dog", 1, 1, 5, 5)], filename=filename)
    with pytest.raises(DatasetError, match="escape.xml.*(escapes|absolute)"):
        parse_voc_annotation(xml, images)
    # Also when images are not read (evaluation).
    with pytest.raises(DatasetError, match="escape.xml"):
        parse_voc_annotation(xml, None)


def test_filename_in_a_subfolder_is_allowed(voc_dirs):
    annotations, images = voc_dirs
    write_image(images / "sub" / "img.jpg")
    record, _ = parse_voc_annotation(write_annotation(annotations / "a.xml", filename="sub/./img.jpg"), images)
    assert record.path == images / "sub" / "img.jpg"


def test_missing_image_names_the_file(voc_dirs):
    annotations, images = voc_dirs
    images.mkdir()
    xml = write_annotation(annotations / "a.xml", [("dog", 1, 1, 5, 5)], filename="gone.jpg")
    with pytest.raises(DatasetError, match="a.xml.*gone.jpg.*not found"):
        parse_voc_annotation(xml, images)


def test_corrupt_image_names_the_file(voc_dirs):
    annotations, images = voc_dirs
    images.mkdir()
    (images / "img.jpg").write_bytes(b"\x00garbage" * 50)
    xml = write_annotation(annotations / "a.xml", [("dog", 1, 1, 5, 5)])
    with pytest.raises(DatasetError, match="img.jpg"):
        parse_voc_annotation(xml, images)


def test_size_disagreeing_with_image_is_an_error(voc_dirs):
    annotations, images = voc_dirs
    write_image(images / "img.jpg", size=(50, 50))
    xml = write_annotation(annotations / "a.xml", [("dog", 1, 1, 5, 5)], size=(100, 80))
    with pytest.raises(DatasetError, match="a.xml.*100x80.*50x50"):
        parse_voc_annotation(xml, images)


def test_unknown_class_is_an_error_only_with_a_class_list(voc_dirs):
    annotations, images = voc_dirs
    write_image(images / "img.jpg")
    xml = write_annotation(annotations / "a.xml", [("unicorn", 1, 1, 5, 5)])
    record, _ = parse_voc_annotation(xml, images)
    assert record.objects[0].name == "unicorn"
    with pytest.raises(DatasetError, match="a.xml.*unknown class 'unicorn'"):
        parse_voc_annotation(xml, images, classes=VOC_CLASSES)


@pytest.mark.parametrize(
    "text, message",
    [
        ("<annotation><object>", "malformed XML"),
        ("", "malformed XML"),
        ("<notvoc/>", "expected <annotation>"),
        ("<annotation><size><width>9</width><height>9</height></size><object><name>a</name></object></annotation>", "no <bndbox>"),
        ("<annotation><size><width>9</width><height>9</height></size><object><bndbox/></object></annotation>", "no <name>"),
        (
            "<annotation><size><width>9</width><height>9</height></size><object><name>a</name><bndbox>"
            "<xmin>one</xmin><ymin>1</ymin><xmax>3</xmax><ymax>3</ymax></bndbox></object></annotation>",
            "not a number",
        ),
        (
            "<annotation><size><width>9</width><height>9</height></size><object><name>a</name><bndbox>"
            "<xmin>1</xmin><ymin>1</ymin><xmax>3</xmax></bndbox></object></annotation>",
            "missing .*ymax",
        ),
        (
            "<annotation><size><width>9</width><height>9</height></size><object><name>a</name><difficult>maybe</difficult>"
            "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax><ymax>3</ymax></bndbox></object></annotation>",
            "difficult",
        ),
    ],
)
def test_malformed_annotations_are_errors_naming_the_file(tmp_path, text, message):
    xml = tmp_path / "broken.xml"
    xml.write_text(text)
    with pytest.raises(DatasetError, match=f"broken.xml.*{message}"):
        parse_voc_annotation(xml, None)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DatasetError, match="nope.xml.*not found"):
        parse_voc_annotation(tmp_path / "nope.xml", None)


# ---------------------------------------------------------------- image sets and loaders


def test_read_image_set(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("000005\n\n000007 -1\n  000009  \n")
    assert read_image_set(path) == ["000005", "000007", "000009"]
    path.write_text("a\nb\na\n")
    with pytest.raises(DatasetError, match="train.txt:3.*twice"):
        read_image_set(path)
    path.write_text("a\n../../etc/passwd\n")
    with pytest.raises(DatasetError, match="train.txt:2.*not a plain file name"):
        read_image_set(path)
    with pytest.raises(DatasetError, match="missing.txt.*not found"):
        read_image_set(tmp_path / "missing.txt")


def test_load_annotations_without_images(tmp_path):
    annotations = tmp_path / "Annotations"
    write_annotation(annotations / "x.xml", [("cat", 2, 2, 5, 5)], filename="x.jpg")
    write_annotation(annotations / "y.xml", [("ant", 2, 2, 5, 5, 1)], filename="y.jpg")
    dataset = load_voc_annotations(annotations, ["y", "x"])
    assert [r.image_id for r in dataset.records] == ["y", "x"]
    assert dataset.classes == ("ant", "cat")
    assert dataset.records[1].objects[0].box == (1.0, 1.0, 4.0, 4.0)


def test_collecting_mode_reports_every_bad_file(voc_dirs):
    annotations, images = voc_dirs
    write_image(images / "img.jpg")
    write_annotation(annotations / "good.xml", [("dog", 1, 1, 5, 5)])
    write_annotation(annotations / "escape.xml", [("dog", 1, 1, 5, 5)], filename="../x.jpg")
    (annotations / "broken.xml").write_text("<annotation>")
    ids = ["good", "escape", "broken", "absent"]
    with pytest.raises(DatasetError, match="escape.xml"):
        load_voc_annotations(annotations, ids, images)
    errors: list[DatasetError] = []
    dataset = load_voc_annotations(annotations, ids, images, errors=errors)
    assert [r.image_id for r in dataset.records] == ["good"]
    assert len(errors) == 3
    assert "escape.xml" in str(errors[0]) and "broken.xml" in str(errors[1]) and "absent.xml" in str(errors[2])


def _tiny_voc(root: Path) -> Path:
    """Three images; the test split holds only class 'b', train both."""
    for image_id, objects in [("1", [("a", 1, 1, 9, 9)]), ("2", [("b", 1, 1, 9, 9), ("a", 3, 3, 6, 6)]), ("3", [("b", 2, 2, 9, 9)])]:
        write_image(root / "JPEGImages" / f"{image_id}.jpg")
        write_annotation(root / "Annotations" / f"{image_id}.xml", objects, filename=f"{image_id}.jpg")
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text("1\n2\n")
    (main / "test.txt").write_text("3\n")
    return root


def test_train_and_test_splits_share_the_class_list(tmp_path):
    root = _tiny_voc(tmp_path / "voc")
    assert discover_classes(root) == ("a", "b")
    train, test = load_voc(root, "train"), load_voc(root, "test")
    assert train.classes == test.classes == ("a", "b")
    assert [r.image_id for r in test.records] == ["3"]
    assert load_voc(root, "test", classes=["b", "a"]).classes == ("b", "a")
    with pytest.raises(DatasetError, match="val.*available.*test.*train"):
        load_voc(root, "val")


# ---------------------------------------------------------------- the real BCCD set


def test_bccd_counts_splits_and_fixups(bccd_root):
    splits = {name: read_image_set(bccd_root / "ImageSets" / "Main" / f"{name}.txt") for name in ("train", "val", "trainval", "test")}
    assert {name: len(ids) for name, ids in splits.items()} == {"train": 205, "val": 87, "trainval": 292, "test": 72}
    assert sorted(splits["train"] + splits["val"]) == sorted(splits["trainval"])
    assert not set(splits["trainval"]) & set(splits["test"])

    trainval, test = load_voc(bccd_root, "trainval"), load_voc(bccd_root, "test")
    assert trainval.classes == test.classes == ("Platelets", "RBC", "WBC")
    assert len(trainval) + len(test) == 364
    kept = sum(len(r.objects) for d in (trainval, test) for r in d.records)
    fixups = trainval.fixups + test.fixups
    dropped = [line for line in fixups if "dropped" in line]
    assert len(fixups) == len(dropped) == 2
    assert kept + len(dropped) == 4888  # every box of the files, before fix-ups
    assert any("BloodImage_00338.xml" in line for line in dropped)
    assert any("BloodImage_00343.xml" in line for line in dropped)
    assert all(r.width == 640 and r.height == 480 for d in (trainval, test) for r in d.records)
    boxes = [o.box for d in (trainval, test) for r in d.records for o in r.objects]
    assert min(b[0] for b in boxes) >= 0 and max(b[2] for b in boxes) <= 639 and max(b[3] for b in boxes) <= 479


def test_oversized_and_non_regular_annotation_files_are_refused(tmp_path, monkeypatch):
    import os

    import model.data.voc as voc

    xml = write_annotation(tmp_path / "big.xml", [("dog", 1, 1, 5, 5)] * 20)
    monkeypatch.setattr(voc, "MAX_ANNOTATION_BYTES", 200)
    with pytest.raises(DatasetError, match="big.xml.*over the 200 limit"):
        parse_voc_annotation(xml, None)
    fifo = tmp_path / "pipe.xml"
    os.mkfifo(fifo)  # reading it would block forever
    with pytest.raises(DatasetError, match="pipe.xml.*not a regular file"):
        parse_voc_annotation(fifo, None)


def test_collecting_load_voc_reports_a_broken_file_once(tmp_path):
    root = _tiny_voc(tmp_path / "voc")
    (root / "Annotations" / "3.xml").write_text("<annotation>")
    errors: list[DatasetError] = []
    dataset = load_voc(root, "test", errors=errors)
    assert dataset.records == [] and len(errors) == 1 and "3.xml" in str(errors[0])
    with pytest.raises(DatasetError, match="3.xml"):
        load_voc(root, "train")  # the class scan reads every file, strictly
