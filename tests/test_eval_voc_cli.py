"""``python -m model.evaluation.voc`` on the real BCCD annotations with devkit-format results files."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_in_process import run_main

from model.detections import Detections
from model.evaluation.results_io import write_voc_results
from model.evaluation.voc import main
from model.evaluation.voc_ap import evaluate_voc

BCCD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "BCCD" / "BCCD"
IMAGE_SET = BCCD / "ImageSets" / "Main" / "test.txt"

pytestmark = pytest.mark.skipif(not BCCD.is_dir(), reason=f"BCCD dataset not found at {BCCD}")


@pytest.fixture(scope="module")
def test_split():
    from model.data.voc import load_voc

    return load_voc(BCCD, "test", check_images=False)


def run_cli(results: Path, *extra: str) -> subprocess.CompletedProcess:
    """``python -m model.evaluation.voc`` (its ``main``, in-process)."""
    return run_main(
        main,
        "--annotations", str(BCCD / "Annotations"),
        "--image-set", str(IMAGE_SET),
        "--results", str(results),
        *extra,
    )


def perfect_detections(dataset):
    out = {}
    for record in dataset.records:
        objs = record.objects
        out[record.image_id] = Detections(
            boxes=torch.tensor([o.box for o in objs], dtype=torch.float32).reshape(-1, 4),
            scores=torch.full((len(objs),), 0.99),
            labels=torch.tensor([dataset.classes.index(o.name) + 1 for o in objs], dtype=torch.int64),
        )
    return out


def perturbed_detections(dataset, seed=0):
    """Jittered gt boxes (whole pixels, so the 1-decimal files are exact), a few dropped,
    duplicates and random false positives; distinct scores (no rank ties to break)."""
    rng = np.random.default_rng(seed)
    rows = []
    for record in dataset.records:
        for obj in record.objects:
            if rng.random() < 0.15:
                continue  # missed
            box = np.round(np.array(obj.box) + rng.normal(0, 6, 4))
            rows.append((record.image_id, box, dataset.classes.index(obj.name) + 1))
            if rng.random() < 0.1:  # a duplicate
                rows.append((record.image_id, np.round(np.array(obj.box) + rng.normal(0, 2, 4)), rows[-1][2]))
        for _ in range(3):  # random false positives
            x, y = rng.integers(0, 560), rng.integers(0, 400)
            rows.append((record.image_id, np.array([x, y, x + 79, y + 79], dtype=float), int(rng.integers(1, 4))))
    scores = rng.permutation(len(rows)) / len(rows) + 0.5 / len(rows)
    out = {}
    for (image_id, box, label), score in zip(rows, scores):
        out.setdefault(image_id, []).append((box, score, label))
    return {
        image_id: Detections(
            boxes=torch.tensor(np.array([r[0] for r in items]), dtype=torch.float32),
            scores=torch.tensor([r[1] for r in items], dtype=torch.float64),
            labels=torch.tensor([r[2] for r in items], dtype=torch.int64),
        )
        for image_id, items in out.items()
    }


@pytest.mark.parametrize("metric", ["voc07", "area"])
def test_perfect_detections_score_one(tmp_path, test_split, metric):
    write_voc_results(perfect_detections(test_split), test_split.classes, tmp_path, "test")
    completed = run_cli(tmp_path, "--metric", metric)
    assert completed.returncode == 0, completed.stderr
    payload = json.loads(completed.stdout)  # exactly one JSON object on stdout
    assert set(payload) == {"mAP", "ap"}
    assert payload["mAP"] == pytest.approx(1.0, abs=1e-12)
    assert set(payload["ap"]) == {"Platelets", "RBC", "WBC"}
    assert all(v == pytest.approx(1.0, abs=1e-12) for v in payload["ap"].values())
    assert "mAP" in completed.stderr  # logs go to stderr


@pytest.mark.parametrize("metric", ["voc07", "area"])
def test_perturbed_detections_match_evaluate_voc(tmp_path, test_split, metric):
    detections = perturbed_detections(test_split)
    write_voc_results(detections, test_split.classes, tmp_path, "test")
    completed = run_cli(tmp_path, "--metric", metric)
    assert completed.returncode == 0, completed.stderr
    payload = json.loads(completed.stdout)
    expected = evaluate_voc(test_split, detections, metric=metric)
    assert payload["mAP"] == pytest.approx(expected.mAP, abs=1e-12)
    for name, value in expected.ap.items():
        assert payload["ap"][name] == pytest.approx(value, abs=1e-12)
    assert 0.3 < payload["mAP"] < 0.95  # not a degenerate case


def test_class_selection_and_discovery(tmp_path, test_split):
    write_voc_results(perfect_detections(test_split), test_split.classes, tmp_path, "test")
    chosen = run_cli(tmp_path, "--metric", "area", "--classes", "WBC,RBC")
    assert chosen.returncode == 0, chosen.stderr
    assert list(json.loads(chosen.stdout)["ap"]) == ["WBC", "RBC"]
    # Two class files lost: every class of the annotations is still scored, the lost ones AP 0.
    (tmp_path / "comp4_det_test_RBC.txt").unlink()
    (tmp_path / "comp4_det_test_WBC.txt").unlink()
    found = run_cli(tmp_path)
    assert found.returncode == 0, found.stderr
    payload = json.loads(found.stdout)
    assert payload["ap"] == {"Platelets": pytest.approx(1.0), "RBC": 0.0, "WBC": 0.0}
    assert payload["mAP"] == pytest.approx(1 / 3)
    assert "comp4_det_test_RBC.txt: results file for class 'RBC' not found" in found.stderr


def test_bad_input_exits_nonzero_with_message(tmp_path, test_split):
    write_voc_results(perfect_detections(test_split), test_split.classes, tmp_path, "test")
    missing = run_cli(tmp_path, "--classes", "RBC,Nope")
    assert missing.returncode == 1 and missing.stdout == ""
    assert "--classes names ['Nope'], which no annotation has" in missing.stderr

    wrong_set = tmp_path / "comp4_det_test_RBC.txt"
    wrong_set.write_text(wrong_set.read_text() + "BloodImage_99999 0.5 1 1 10 10\n")
    wrong = run_cli(tmp_path)
    assert wrong.returncode == 1 and "BloodImage_99999" in wrong.stderr

    wrong_set.write_text("BloodImage_00000 0.5 1 1 10\n")
    malformed = run_cli(tmp_path)
    assert malformed.returncode == 1 and f"{wrong_set}:1:" in malformed.stderr
