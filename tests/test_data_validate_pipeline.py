"""VALID means every stage can use the data: the checks of ``pipeline_problems``, through the
``validate`` CLI (in process) and ``prepare_data``, each asserting the exit code and that the
message names the file and the problem."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.data.__main__ import main as data_main
from model.data.records import DatasetError
from model.data.voc import load_voc, parse_voc_annotation

CLASSES = ("cat", "dog")


def _xml(image_id: str, size: tuple[int, int], objects, filename: str | None = None) -> str:
    parts = [f"<annotation><filename>{filename or image_id + '.png'}</filename>",
             f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"]
    for name, boxes in objects:
        boxes = [boxes] if isinstance(boxes[0], (int, float)) else boxes
        inner = "".join(
            f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox>" for b in boxes
        )
        parts.append(f"<object><name>{name}</name><difficult>0</difficult>{inner}</object>")
    return "".join(parts) + "</annotation>"


def make_voc(root: Path, sizes: dict[str, tuple[int, int]], sets: dict[str, list[str]], objects=None, filenames=None) -> Path:
    """A small VOC root: PNG images of the given (w, h), one cat per image unless ``objects`` says otherwise."""
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image_id, (w, h) in sizes.items():
        filename = (filenames or {}).get(image_id)
        if filename is None or not (root / "JPEGImages" / filename).exists():
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "JPEGImages" / (filename or f"{image_id}.png"))
        default = [("cat", (1, 1, max(2, w // 2), max(2, h // 2)))]
        xml = _xml(image_id, (w, h), (objects or {}).get(image_id, default), filename)
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
    for name, ids in sets.items():
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def validate(capsys, *args: str) -> tuple[int, str]:
    code = data_main(["validate", *args])
    return code, capsys.readouterr().out


def problems_of(out: str) -> str:
    return out.split("problems (")[1]


SIZES = {f"{i:03d}": (64, 48) for i in range(6)}


def test_small_clean_dataset_is_valid(tmp_path, capsys):
    root = make_voc(tmp_path / "voc", SIZES, {"trainval": ["000", "001", "002", "003"], "test": ["004", "005"]})
    code, out = validate(capsys, "--root", str(root))
    assert code == 0, out
    assert "result: VALID" in out


# ---------------------------------------------------------------- splits


def test_empty_split_is_invalid(tmp_path, capsys):
    root = make_voc(tmp_path / "voc", SIZES, {"trainval": list(SIZES), "test": []})
    code, out = validate(capsys, "--root", str(root))
    assert code == 1
    assert f"{root}: split 'test' has no images" in problems_of(out)
    # Asked for that split alone: the same answer.
    code, out = validate(capsys, "--root", str(root), "--split", "test")
    assert code == 1 and "split 'test' has no images" in out


def test_empty_coco_file_is_invalid(tmp_path, capsys):
    from model.data.coco import write_coco_json
    from model.data.records import DetectionDataset

    coco = tmp_path / "empty.json"
    write_coco_json(DetectionDataset(root=tmp_path, classes=("cat",), records=[]), coco)
    code, out = validate(capsys, "--root", str(coco), "--layout", "coco")
    assert code == 1 and "has no images" in problems_of(out) and str(coco) in out


def test_splits_sharing_an_id_are_invalid(tmp_path, capsys):
    root = make_voc(tmp_path / "voc", SIZES, {"trainval": ["000", "001", "002", "003"], "test": ["003", "004"]})
    code, out = validate(capsys, "--root", str(root))
    assert code == 1
    assert "splits 'trainval' and 'test' share 1 image id(s), e.g. ['003']" in problems_of(out)


def test_splits_sharing_an_image_file_under_two_ids_are_invalid(tmp_path, capsys):
    # 004 (test) names the very image file of 000 (trainval): the same picture scored on what it trained on.
    root = make_voc(tmp_path / "voc", SIZES, {"trainval": ["000", "001", "002"], "test": ["004", "005"]},
                    filenames={"000": "000.png", "004": "000.png"})
    code, out = validate(capsys, "--root", str(root))
    assert code == 1
    problems = problems_of(out)
    image = root / "JPEGImages" / "000.png"
    assert (f"splits 'trainval' and 'test' share 1 image(s) under different ids, e.g. {image} ('004' in 'test')"
            f" is the same file as {image} ('000' in 'trainval')") in problems


def test_splits_sharing_a_file_through_a_symlink_are_invalid(tmp_path, capsys):
    root = make_voc(tmp_path / "voc", SIZES, {"trainval": ["000", "001", "002"], "test": ["004", "005"]})
    (root / "JPEGImages" / "004.png").unlink()
    os.symlink(root / "JPEGImages" / "000.png", root / "JPEGImages" / "004.png")
    code, out = validate(capsys, "--root", str(root))
    assert code == 1 and "share 1 image(s) under different ids" in problems_of(out)
    assert "004.png ('004' in 'test') is the same file as" in problems_of(out)


def test_splits_sharing_a_hard_link_or_a_copy_are_invalid(tmp_path, capsys):
    root = make_voc(tmp_path / "voc", SIZES, {"trainval": ["000", "001", "002"], "test": ["004", "005"]})
    images = root / "JPEGImages"
    (images / "004.png").unlink()
    os.link(images / "000.png", images / "004.png")
    (images / "005.png").write_bytes((images / "001.png").read_bytes())
    code, out = validate(capsys, "--root", str(root))
    assert code == 1
    problems = problems_of(out)
    assert "splits 'trainval' and 'test' share 2 image(s) under different ids" in problems
    assert f"{images / '004.png'} ('004' in 'test') is the same file as {images / '000.png'}" in problems
    # A copy in the same split is no leak between train and test: that split alone is valid.
    code, out = validate(capsys, "--root", str(root), "--split", "test")
    assert code == 0, out


def test_byte_identical_copy_across_splits_is_named(tmp_path, capsys):
    root = make_voc(tmp_path / "voc", SIZES, {"trainval": ["000", "001", "002"], "test": ["004", "005"]})
    images = root / "JPEGImages"
    (images / "005.png").write_bytes((images / "001.png").read_bytes())
    code, out = validate(capsys, "--root", str(root))
    assert code == 1
    assert (f"e.g. {images / '005.png'} ('005' in 'test') is a byte-identical copy of {images / '001.png'}"
            " ('001' in 'trainval')") in problems_of(out)


def test_named_splits_are_checked_and_must_exist(tmp_path, capsys):
    root = make_voc(tmp_path / "voc", SIZES, {"train": ["000", "001"], "val": ["001", "002"], "test": ["004"]})
    code, out = validate(capsys, "--root", str(root), "--train-split", "train", "--test-split", "val")
    assert code == 1 and "splits 'train' and 'val' share 1 image id(s)" in out
    code, out = validate(capsys, "--root", str(root), "--train-split", "nope")
    assert code == 1 and "nope.txt: image set for split 'nope' not found" in problems_of(out)
    # Defaults that do not exist (no trainval here) are a note, not a problem.
    code, out = validate(capsys, "--root", str(root))
    assert code == 0 and "note:" in out and "trainval.txt" in out


def test_two_annotation_files_naming_one_image_are_invalid(tmp_path, capsys):
    root = make_voc(tmp_path / "voc", SIZES, {"trainval": ["000", "001", "002", "003"], "test": ["004", "005"]},
                    filenames={"001": "000.png"})
    code, out = validate(capsys, "--root", str(root))
    assert code == 1
    assert f"{root / 'JPEGImages' / '000.png'}: image file named by two annotations, ids '000' and '001'" in problems_of(out)


# ---------------------------------------------------------------- devkit-writable names


def test_image_id_with_whitespace_is_invalid(tmp_path, capsys):
    # The flat layout takes ids from file names; "a b" would split a results line in two fields.
    root = make_voc(tmp_path / "flat", {"a b": (64, 48), "c": (64, 48), "d": (64, 48)}, {})
    code, out = validate(capsys, "--root", str(root), "--layout", "flat")
    assert code == 1
    assert "image id 'a b' contains whitespace: it cannot be written in a devkit results line" in problems_of(out)
    assert "a b.png" in problems_of(out)


def test_class_name_with_whitespace_is_invalid(tmp_path, capsys):
    objects = {i: [("red cell", (1, 1, 20, 20))] for i in SIZES}
    root = make_voc(tmp_path / "voc", SIZES, {"trainval": ["000", "001", "002"], "test": ["003"]}, objects=objects)
    code, out = validate(capsys, "--root", str(root))
    assert code == 1 and "class name 'red cell' contains whitespace" in problems_of(out)


def test_split_name_with_whitespace_is_invalid(tmp_path, capsys):
    root = make_voc(tmp_path / "voc", SIZES, {"trainval": ["000", "001"], "my test": ["004"]})
    code, out = validate(capsys, "--root", str(root), "--test-split", "my test")
    assert code == 1 and "split name 'my test' contains whitespace" in problems_of(out)


# ---------------------------------------------------------------- image sizes


def test_too_thin_image_is_invalid_for_the_given_input_size(tmp_path, capsys):
    sizes = dict(SIZES, **{"004": (1000, 20)})
    root = make_voc(tmp_path / "voc", sizes, {"trainval": ["000", "001"], "test": ["004"]})
    code, out = validate(capsys, "--root", str(root), "--min-size", "240", "--max-size", "320")
    assert code == 1
    problem = problems_of(out)
    assert "004.png: image of 1000x20 pixels is too thin" in problem
    assert "(min_size 240, max_size 320) it becomes 320x6" in problem
    # A larger cap on the long side resizes it to a usable height: the same file is then fine.
    code, out = validate(capsys, "--root", str(root), "--min-size", "240", "--max-size", "4000")
    assert code == 0, out


def test_too_small_image_is_invalid(tmp_path, capsys):
    sizes = dict(SIZES, **{"004": (12, 40)})
    root = make_voc(tmp_path / "voc", sizes, {"trainval": ["000", "001"], "test": ["004"]},
                    objects={"004": [("cat", (1, 1, 10, 30))]})
    code, out = validate(capsys, "--root", str(root))
    assert code == 1
    assert "004.png: image of 12x40 pixels is too small: a side under 16 pixels keeps no proposal" in problems_of(out)


def test_size_options_must_be_positive(tmp_path, capsys):
    root = make_voc(tmp_path / "voc", SIZES, {"trainval": ["000"], "test": ["001"]})
    assert data_main(["validate", "--root", str(root), "--min-size", "0"]) == 2
    assert "--min-size" in capsys.readouterr().err


# ---------------------------------------------------------------- objects and boxes


def test_object_with_two_boxes_is_refused(tmp_path, capsys):
    objects = {"001": [("cat", [(1, 1, 20, 20), (30, 10, 50, 40)])]}
    root = make_voc(tmp_path / "voc", SIZES, {"trainval": ["000", "001"], "test": ["004"]}, objects=objects)
    code, out = validate(capsys, "--root", str(root))
    assert code == 1
    assert f"{root / 'Annotations' / '001.xml'}: object 0 (cat) has 2 <bndbox> elements; an object has one box" in out
    with pytest.raises(DatasetError, match=r"001\.xml: object 0 \(cat\) has 2 <bndbox>"):
        load_voc(root, "trainval")


@pytest.mark.parametrize("old, new, message", [
    ("<name>cat</name>", "<name>cat</name><name>dog</name>", "object 0 has 2 <name> elements"),
    ("<xmin>1</xmin>", "<xmin>1</xmin><xmin>5</xmin>", "object 0 (cat) <bndbox> has 2 <xmin> elements"),
    ("<difficult>0</difficult>", "<difficult>0</difficult><difficult>1</difficult>", "object 0 (cat) has 2 <difficult>"),
    ("<width>64</width>", "<width>64</width><width>32</width>", "<size> has 2 <width> elements"),
    ("<filename>001.png</filename>", "<filename>001.png</filename><filename>000.png</filename>", "<annotation> has 2 <filename>"),
])
def test_repeated_single_valued_elements_are_refused(tmp_path, capsys, old, new, message):
    root = make_voc(tmp_path / "voc", SIZES, {"trainval": ["000", "001"], "test": ["004"]})
    xml = root / "Annotations" / "001.xml"
    assert old in xml.read_text()
    xml.write_text(xml.read_text().replace(old, new, 1))
    code, out = validate(capsys, "--root", str(root))
    assert code == 1 and f"{xml}: {message}" in problems_of(out)


def test_repeated_identical_box_is_kept_once_as_a_fixup(tmp_path, capsys):
    twice = [("cat", (1, 1, 20, 20)), ("dog", (5, 5, 30, 30)), ("cat", (1, 1, 20, 20))]
    root = make_voc(tmp_path / "voc", SIZES, {"trainval": ["000", "001"], "test": ["004"]}, objects={"001": twice})
    record, fixups = parse_voc_annotation(root / "Annotations" / "001.xml", root / "JPEGImages")
    assert [(o.name, o.box) for o in record.objects] == [("cat", (0.0, 0.0, 19.0, 19.0)), ("dog", (4.0, 4.0, 29.0, 29.0))]
    assert len(fixups) == 1 and "001.xml: object 2 (cat) has the same class and box" in fixups[0]
    code, out = validate(capsys, "--root", str(root))
    assert code == 0 and "fix-ups (1)" in out and "dropped the repeat" in out
    # The same box under another class is two objects, not a repeat.
    other = [("cat", (1, 1, 20, 20)), ("dog", (1, 1, 20, 20))]
    (root / "Annotations" / "000.xml").write_text(_xml("000", (64, 48), other))
    record, fixups = parse_voc_annotation(root / "Annotations" / "000.xml", root / "JPEGImages")
    assert len(record.objects) == 2 and not fixups


def test_repeat_keeps_the_positive_copy(tmp_path):
    root = make_voc(tmp_path / "voc", {"000": (64, 48)}, {"trainval": ["000"]})
    box = "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>20</xmax><ymax>20</ymax></bndbox>"
    (root / "Annotations" / "000.xml").write_text(
        "<annotation><filename>000.png</filename><size><width>64</width><height>48</height></size>"
        f"<object><name>cat</name><difficult>1</difficult>{box}</object>"
        f"<object><name>cat</name><difficult>0</difficult>{box}</object></annotation>"
    )
    record, fixups = parse_voc_annotation(root / "Annotations" / "000.xml", root / "JPEGImages")
    assert len(record.objects) == 1 and record.objects[0].difficult is False
    assert len(fixups) == 1 and "object 1 (cat)" in fixups[0]


# ---------------------------------------------------------------- prepare_data runs the same checks


def _params(source: Path, **data):
    """prepare_data's typed settings (``tasks.settings``) for the dataset at ``source``."""
    from tasks.settings import decode

    base = {"name": "t", "layout": "voc", "source": str(source), "train_split": "trainval", "test_split": "test",
            "classes": None, "synthetic": None, "input": {"min_size": 240, "max_size": 320}}
    return decode({"data": base | data}, declared=["data"])


@pytest.mark.parametrize(
    "case, expected",
    [
        ("overlap", "splits 'trainval' and 'test' share 1 image id(s)"),
        ("thin", "004.png: image of 1000x20 pixels is too thin"),
        ("same_file", "image file named by two annotations, ids '000' and '001'"),
        ("empty", "split 'test' has no images"),
    ],
)
def test_prepare_data_refuses_what_validate_refuses(tmp_path, monkeypatch, capsys, case, expected):
    from tasks.data import prepare

    sizes = dict(SIZES, **{"004": (1000, 20)}) if case == "thin" else SIZES
    sets = {"trainval": ["000", "001", "002"], "test": {"overlap": ["002", "004"], "empty": []}.get(case, ["004"])}
    root = make_voc(tmp_path / "voc", sizes, sets, filenames={"001": "000.png"} if case == "same_file" else None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError) as caught:
        prepare(_params(root))
    message = str(caught.value)
    assert str(root) in message and "cannot be used" in message and expected in message
    assert not (tmp_path / "data" / "prepared").exists()  # nothing half-written
    # validate says the same about the same data, with the same sizes.
    code, out = validate(capsys, "--root", str(root), "--min-size", "240", "--max-size", "320")
    assert code == 1 and expected in out


def test_prepare_data_lists_every_bad_file_at_once(tmp_path, monkeypatch):
    from tasks.data import prepare

    root = make_voc(tmp_path / "voc", SIZES, {"trainval": ["000", "001", "002"], "test": ["004", "005"]})
    (root / "Annotations" / "001.xml").write_text("<annotation><object>")
    (root / "JPEGImages" / "005.png").unlink()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError) as caught:
        prepare(_params(root))
    message = str(caught.value)
    assert "001.xml: malformed XML" in message and "005.png not found" in message


def test_prepare_data_accepts_clean_data_and_refuses_equal_splits(tmp_path, monkeypatch):
    from tasks.data import prepare
    from tasks.params import ParamsError

    root = make_voc(tmp_path / "voc", SIZES, {"trainval": ["000", "001", "002"], "test": ["004", "005"]})
    monkeypatch.chdir(tmp_path)
    metrics = prepare(_params(root))
    assert metrics["train"]["images"] == 3 and metrics["test"]["images"] == 2
    manifest = tmp_path / "data" / "prepared" / "manifest.json"
    before = manifest.read_bytes()
    # Broken data later: refused, and the manifest already written is kept as it was.
    (root / "ImageSets" / "Main" / "test.txt").write_text("002\n004\n")
    with pytest.raises(DatasetError, match="share 1 image id"):
        prepare(_params(root))
    assert manifest.read_bytes() == before
    with pytest.raises(ParamsError, match="data.train_split and data.test_split are both 'test'"):
        prepare(_params(root, train_split="test"))


def test_no_object_of_any_class_is_invalid_and_names_the_folder(tmp_path, capsys):
    root = make_voc(tmp_path / "voc", SIZES, {"trainval": ["000", "001"], "test": ["004"]},
                    objects={i: [] for i in SIZES})
    code, out = validate(capsys, "--root", str(root))
    assert code == 1 and f"{root / 'Annotations'}: class list is empty" in problems_of(out)


def test_split_with_only_difficult_objects_is_invalid(tmp_path, capsys):
    root = make_voc(tmp_path / "voc", SIZES, {"trainval": ["000", "001"], "test": ["004"]})
    xml = root / "Annotations" / "004.xml"
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>"))
    code, out = validate(capsys, "--root", str(root))
    assert code == 1
    assert f"{root}: split 'test' has no object that is not difficult: it can neither train nor be scored" in problems_of(out)
