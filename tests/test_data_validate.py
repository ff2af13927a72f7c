"""The validate CLI and API: every problem collected and named, exit codes, all three layouts."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_in_process import run_main

from model.data.__main__ import main as data_cli
from model.data.loading import load_dataset
from model.data.synthetic import SyntheticSpec, generate_synthetic_voc
from model.data.validate import format_report, validate_dataset

REPO = Path(__file__).resolve().parents[1]
SPEC = SyntheticSpec(num_images=8, image_size=(128, 96), seed=5, object_size=(20.0, 80.0))


def run_validate(*args: str) -> subprocess.CompletedProcess:
    """``python -m model.data validate ...`` (its ``main``, in-process)."""
    return run_main(data_cli, "validate", *args)


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory) -> Path:
    return generate_synthetic_voc(tmp_path_factory.mktemp("valid") / "voc", SPEC)


@pytest.fixture
def copy_root(clean_root, tmp_path) -> Path:
    return Path(shutil.copytree(clean_root, tmp_path / "voc"))


def _add_zero_area_box(xml: Path) -> None:
    text = xml.read_text()
    extra = ("<object><name>circle</name><difficult>0</difficult><bndbox><xmin>7</xmin><ymin>9</ymin>"
             "<xmax>7</xmax><ymax>9</ymax></bndbox></object></annotation>")
    xml.write_text(text.replace("</annotation>", extra))


def test_clean_dataset_is_valid(clean_root):
    out = run_validate("--root", str(clean_root))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "result: VALID (0 fix-ups)" in out.stdout
    assert "images: 8" in out.stdout


def test_fixups_only_still_exit_zero_and_name_the_file(copy_root):
    _add_zero_area_box(copy_root / "Annotations" / "000004.xml")
    out = run_validate("--root", str(copy_root))
    assert out.returncode == 0, out.stdout
    assert "fix-ups (1)" in out.stdout and "000004.xml" in out.stdout and "zero-area" in out.stdout


def test_every_problem_is_reported_with_its_file(copy_root):
    annotations, images = copy_root / "Annotations", copy_root / "JPEGImages"
    data = (images / "000002.jpg").read_bytes()
    (images / "000002.jpg").write_bytes(data[: len(data) // 2])  # truncated: only a full decode finds it
    (annotations / "000003.xml").write_text("<annotation><object>")
    with open(copy_root / "ImageSets" / "Main" / "test.txt", "a") as handle:
        handle.write("999999\n")
    escape = annotations / "000005.xml"
    escape.write_text(escape.read_text().replace("<filename>000005.jpg</filename>", "<filename>../../etc/passwd</filename>"))
    (images / "000006.jpg").unlink()
    _add_zero_area_box(annotations / "000007.xml")

    out = run_validate("--root", str(copy_root))
    assert out.returncode == 1, out.stdout
    assert "result: INVALID (5 problems, 1 fix-ups)" in out.stdout
    problems = out.stdout.split("problems (")[1]
    for name in ("000002.jpg", "000003.xml", "999999", "000005.xml", "000006.jpg"):
        assert name in problems, name
    assert "000007.xml" in out.stdout.split("problems (")[0]  # the fix-up, listed as such

    # The same through the API, one split: only that split's files are read.
    report = validate_dataset(copy_root, split="test", decode_images=False)
    assert not report.ok and any("999999" in line for line in report.problems)


def test_split_option_and_no_decode(copy_root):
    data = (copy_root / "JPEGImages" / "000002.jpg").read_bytes()
    (copy_root / "JPEGImages" / "000002.jpg").write_bytes(data[: len(data) // 2])
    assert run_validate("--root", str(copy_root), "--no-decode").returncode == 0
    assert run_validate("--root", str(copy_root)).returncode == 1
    split = "trainval" if "000002" in (copy_root / "ImageSets/Main/trainval.txt").read_text() else "test"
    out = run_validate("--root", str(copy_root), "--split", split)
    assert out.returncode == 1 and "000002.jpg" in out.stdout and f"split {split}" in out.stdout


def test_class_list_is_enforced(clean_root):
    out = run_validate("--root", str(clean_root), "--classes", "circle")
    dataset = load_dataset(clean_root, "voc", "trainval")
    assert set(dataset.classes) != {"circle"}  # the data has other shapes
    assert out.returncode == 1 and "unknown class" in out.stdout


def test_flat_layout(clean_root):
    out = run_validate("--root", str(clean_root), "--layout", "flat")
    assert out.returncode == 0, out.stdout
    assert "images: 8" in out.stdout and "layout flat" in out.stdout


def test_coco_layout(clean_root, tmp_path):
    from model.data.coco import write_coco_json

    coco_root = tmp_path / "coco"
    shutil.copytree(clean_root / "JPEGImages", coco_root / "images")
    write_coco_json(load_dataset(clean_root, "voc", "trainval"), coco_root / "annotations.json")
    out = run_validate("--root", str(coco_root), "--layout", "coco")
    assert out.returncode == 0, out.stdout + out.stderr
    assert load_dataset(coco_root / "annotations.json", "coco").classes == load_dataset(coco_root, "coco").classes
    victim = sorted((coco_root / "images").iterdir())[0]
    victim.unlink()
    out = run_validate("--root", str(coco_root), "--layout", "coco")
    assert out.returncode == 1 and victim.name in out.stdout


def test_bccd_is_valid_with_its_two_fixups(bccd_root):
    out = run_validate("--root", str(bccd_root))
    assert out.returncode == 0, out.stdout
    assert "images: 364  objects: 4886" in out.stdout
    assert "fix-ups (2)" in out.stdout
    assert "BloodImage_00338.xml" in out.stdout and "BloodImage_00343.xml" in out.stdout


def test_missing_root_and_bad_arguments(tmp_path):
    out = run_validate("--root", str(tmp_path / "nothing"))
    assert out.returncode == 1 and "nothing" in out.stdout and "not found" in out.stdout
    assert run_validate("--root", str(tmp_path), "--layout", "yolo").returncode == 2
    report = validate_dataset(tmp_path, layout="voc", split="train")
    assert not report.ok and "INVALID" in format_report(report)


def test_package_imports_without_torch():
    # The validate/synthesize CLIs stay quick: the data layer (COCO aside) does not need torch.
    code = "import sys, model.data, model.data.__main__; assert 'torch' not in sys.modules, 'torch imported'"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
