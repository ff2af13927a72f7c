"""No score is silently inflated: every ground-truth class is scored, a missing results file is
AP 0 (warned by name), no class with ground truth is an error, options outside their domain are
refused - in ``evaluate_voc``, the ``python -m model.evaluation.voc`` CLI (in process), COCO AP
and the pipeline's evaluate stage. Property: removing a class's detections never raises the mAP."""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.data.records import DetectionDataset, ImageRecord, ObjectAnnotation
from model.detections import Detections
from model.evaluation.coco_eval import evaluate_coco
from model.evaluation.results_io import write_voc_results
from model.evaluation.voc import evaluate_results_dir, main as voc_main
from model.evaluation.voc_ap import NoGroundTruthError, check_options, evaluate_class, evaluate_voc

CLASSES = ("cat", "dog", "cow")


def dataset_of(objects_per_image: list[list[tuple[str, tuple[float, float, float, float], bool]]]) -> DetectionDataset:
    records = [
        ImageRecord(f"im{i}", Path(f"/toy/im{i}.jpg"), 100, 80, tuple(ObjectAnnotation(n, b, d) for n, b, d in objs))
        for i, objs in enumerate(objects_per_image)
    ]
    return DetectionDataset(root=Path("/toy"), classes=CLASSES, records=records)


TOY = dataset_of([
    [("cat", (0, 0, 19, 19), False), ("dog", (40, 40, 59, 59), False)],
    [("cow", (10, 10, 49, 39), False), ("cat", (60, 10, 89, 39), False)],
    [("dog", (5, 5, 24, 44), False)],
])


def perfect(dataset: DetectionDataset, drop: str | None = None) -> dict[str, Detections]:
    out = {}
    for record in dataset.records:
        objs = [o for o in record.objects if o.name != drop and not o.difficult]
        out[record.image_id] = Detections(
            boxes=torch.tensor([o.box for o in objs], dtype=torch.float64).reshape(-1, 4),
            scores=torch.full((len(objs),), 0.9, dtype=torch.float64),
            labels=torch.tensor([dataset.classes.index(o.name) + 1 for o in objs], dtype=torch.int64),
        )
    return out


def write_annotations(folder: Path, dataset: DetectionDataset) -> tuple[Path, Path]:
    """VOC XML (1-based) for ``dataset`` and an image set ``test.txt``; returns (annotations, image set)."""
    annotations = folder / "Annotations"
    annotations.mkdir(parents=True)
    for record in dataset.records:
        objs = "".join(
            f"<object><name>{o.name}</name><difficult>{int(o.difficult)}</difficult><bndbox><xmin>{o.box[0] + 1:g}</xmin>"
            f"<ymin>{o.box[1] + 1:g}</ymin><xmax>{o.box[2] + 1:g}</xmax><ymax>{o.box[3] + 1:g}</ymax></bndbox></object>"
            for o in record.objects
        )
        (annotations / f"{record.image_id}.xml").write_text(
            f"<annotation><filename>{record.image_id}.jpg</filename><size><width>{record.width}</width>"
            f"<height>{record.height}</height></size>{objs}</annotation>"
        )
    image_set = folder / "test.txt"
    image_set.write_text("".join(f"{r.image_id}\n" for r in dataset.records))
    return annotations, image_set


@pytest.fixture
def scored(tmp_path):
    """Annotations of TOY and perfect results files of every class; returns (run, results dir)."""
    annotations, image_set = write_annotations(tmp_path / "voc", TOY)
    results = tmp_path / "results"
    write_voc_results(perfect(TOY), CLASSES, results, "test")

    def run(*extra: str) -> int:
        return voc_main(["--annotations", str(annotations), "--image-set", str(image_set), "--results", str(results), *extra])

    return run, results


# ---------------------------------------------------------------- every class is scored


def test_all_files_present_scores_one(scored, capsys):
    run, _ = scored
    assert run() == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload == {"mAP": pytest.approx(1.0), "ap": {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0), "cow": pytest.approx(1.0)}}


@pytest.mark.parametrize("missing", ["cat", "cow"])
def test_missing_class_file_scores_zero_and_names_the_file(scored, capsys, caplog, missing):
    run, results = scored
    lost = results / f"comp4_det_test_{missing}.txt"
    lost.unlink()
    with caplog.at_level(logging.WARNING):
        assert run() == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["ap"][missing] == 0.0  # in the mean, not dropped from it
    assert payload["mAP"] == pytest.approx(2 / 3)
    assert f"{lost}: results file for class {missing!r} not found: scored as no detections (AP 0)" in caplog.text


def test_missing_file_of_a_named_class_scores_zero(scored, capsys, caplog):
    run, results = scored
    (results / "comp4_det_test_dog.txt").unlink()
    assert run("--classes", "dog,cat") == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload == {"mAP": pytest.approx(0.5), "ap": {"dog": 0.0, "cat": pytest.approx(1.0)}}
    assert "comp4_det_test_dog.txt" in caplog.text


def test_results_files_of_unscored_classes_are_named(scored, capsys, caplog):
    run, results = scored
    (results / "comp4_det_test_Cat.txt").write_text("im0 0.9 1 1 20 20\n")  # a case typo
    assert run() == 0
    assert "results files of classes not scored" in caplog.text and "Cat" in caplog.text


def test_results_path_that_is_not_a_file_is_an_error_not_a_zero(scored, capsys, caplog):
    run, results = scored
    fifo = results / "comp4_det_test_dog.txt"
    fifo.unlink()
    os.mkfifo(fifo)
    assert run() == 1 and capsys.readouterr().out == ""
    assert f"{fifo}: results path is not a regular file (a FIFO)" in caplog.text


def test_no_results_file_at_all_is_an_error(scored, capsys, caplog):
    run, results = scored
    for path in results.iterdir():
        path.unlink()
    assert run() == 1
    assert capsys.readouterr().out == ""
    assert f"{results}: no results file for image set 'test'" in caplog.text
    assert run("--results", str(results / "absent")) == 1  # the later --results wins
    assert "absent: results folder not found" in caplog.text


def test_unknown_class_in_classes_is_an_error(scored, capsys, caplog):
    run, _ = scored
    assert run("--classes", "cat,Dog") == 1
    assert capsys.readouterr().out == ""
    assert "--classes names ['Dog'], which no annotation has" in caplog.text


def test_no_class_with_ground_truth_is_an_error(tmp_path, capsys, caplog):
    only_difficult = dataset_of([[("cat", (0, 0, 19, 19), True)], []])
    annotations, image_set = write_annotations(tmp_path / "voc", only_difficult)
    write_voc_results(perfect(only_difficult), CLASSES, tmp_path / "res", "test")
    code = voc_main(["--annotations", str(annotations), "--image-set", str(image_set), "--results", str(tmp_path / "res")])
    assert code == 1 and capsys.readouterr().out == ""  # not {"mAP": null} with exit 0
    assert "no evaluated class has non-difficult ground truth" in caplog.text and "the mAP is undefined" in caplog.text
    with pytest.raises(NoGroundTruthError, match="no evaluated class has non-difficult ground truth"):
        evaluate_voc(only_difficult, perfect(only_difficult))
    empty = DetectionDataset(root=Path("/toy"), classes=(), records=TOY.records)
    with pytest.raises(NoGroundTruthError, match=r"classes: none"):
        evaluate_voc(empty, {})


# ---------------------------------------------------------------- options outside their domain


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2", "nan", "half"])
def test_cli_refuses_iou_threshold_outside_zero_one(scored, capsys, value):
    run, _ = scored
    with pytest.raises(SystemExit) as caught:
        run("--iou-threshold", value)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "--iou-threshold" in err and repr(value) in err


def test_cli_refuses_unknown_metric(scored, capsys):
    run, _ = scored
    with pytest.raises(SystemExit) as caught:
        run("--metric", "voc12")
    assert caught.value.code == 2 and "voc12" in capsys.readouterr().err


@pytest.mark.parametrize("metric, iou, message", [
    ("voc12", 0.5, "unknown VOC metric 'voc12'"),
    ("voc07", 0.0, "strictly between 0 and 1, got 0.0"),
    ("area", 1.0, "strictly between 0 and 1, got 1.0"),
    ("voc07", math.nan, "strictly between 0 and 1, got nan"),
    ("voc07", "0.5", "must be a number in (0, 1), got '0.5'"),
])
def test_library_refuses_options_outside_their_domain(tmp_path, metric, iou, message):
    with pytest.raises(ValueError) as caught:
        check_options(metric, iou)
    assert message in str(caught.value)
    with pytest.raises(ValueError, match="VOC metric|between 0 and 1|a number"):
        evaluate_voc(TOY, perfect(TOY), metric=metric, iou_threshold=iou)
    write_voc_results(perfect(TOY), CLASSES, tmp_path, "test")
    with pytest.raises(ValueError, match="VOC metric|between 0 and 1|a number"):
        evaluate_results_dir(TOY, tmp_path, "test", CLASSES, metric, iou)
    if metric in ("voc07", "area"):
        with pytest.raises(ValueError, match="between 0 and 1|a number"):
            evaluate_class({"im0": (np.zeros((0, 4)), np.zeros(0, bool))}, [], [], np.zeros((0, 4)), iou_threshold=iou)


def test_evaluate_stage_refuses_a_bad_metric_before_detecting():
    from tasks.evaluate import evaluate_detector

    # No model is needed to find the mistake: it is refused before any detection runs.
    with pytest.raises(ValueError, match="unknown VOC metric 'map'"):
        evaluate_detector(None, TOY, "map")


# ---------------------------------------------------------------- COCO


def test_coco_scores_every_class_and_refuses_no_ground_truth():
    full = evaluate_coco(TOY, perfect(TOY))
    assert full["AP50"] == pytest.approx(1.0)
    without_cow = evaluate_coco(TOY, perfect(TOY, drop="cow"))
    assert without_cow["AP50"] == pytest.approx(2 / 3)  # cow scores 0, it does not drop out
    only_difficult = dataset_of([[("cat", (0, 0, 19, 19), True)]])
    with pytest.raises(NoGroundTruthError, match="no non-difficult ground-truth box"):
        evaluate_coco(only_difficult, perfect(only_difficult))


# ---------------------------------------------------------------- the property


boxes = st.tuples(st.integers(0, 70), st.integers(0, 50), st.integers(4, 30), st.integers(4, 30)).map(
    lambda t: (float(t[0]), float(t[1]), float(t[0] + t[2]), float(t[1] + t[3]))
)
gt_object = st.tuples(st.sampled_from(CLASSES), boxes, st.booleans())
detection = st.tuples(st.sampled_from(CLASSES), boxes, st.floats(0.01, 1.0))


@settings(max_examples=150, deadline=None)
@given(
    images=st.lists(st.tuples(st.lists(gt_object, max_size=4), st.lists(detection, max_size=6)), min_size=1, max_size=5),
    removed=st.sampled_from(CLASSES),
    metric=st.sampled_from(["voc07", "area"]),
)
def test_removing_a_class_detections_never_raises_the_map(images, removed, metric):
    dataset = dataset_of([objs for objs, _ in images])

    def detections(without: str | None) -> dict[str, Detections]:
        out = {}
        for record, (_, dets) in zip(dataset.records, images):
            kept = [d for d in dets if d[0] != without]
            out[record.image_id] = Detections(
                boxes=torch.tensor([d[1] for d in kept], dtype=torch.float64).reshape(-1, 4),
                scores=torch.tensor([d[2] for d in kept], dtype=torch.float64),
                labels=torch.tensor([CLASSES.index(d[0]) + 1 for d in kept], dtype=torch.int64),
            )
        return out

    try:
        before = evaluate_voc(dataset, detections(None), metric=metric)
    except NoGroundTruthError:
        with pytest.raises(NoGroundTruthError):  # no ground truth: no mAP either way
            evaluate_voc(dataset, detections(removed), metric=metric)
        return
    after = evaluate_voc(dataset, detections(removed), metric=metric)
    assert after.mAP <= before.mAP + 1e-12
    assert set(after.ap) == set(before.ap) == set(CLASSES)  # the class stays in the report
    if before.curves[removed].num_positives:
        assert after.ap[removed] == 0.0


def test_removing_a_class_file_never_raises_the_map(tmp_path):
    """The same property through results files, where a file can go missing (seeded random cases)."""
    rng = np.random.default_rng(11)
    for case in range(12):
        objects = [
            [(str(rng.choice(CLASSES)), (x := float(rng.integers(0, 60)), y := float(rng.integers(0, 40)),
              x + float(rng.integers(5, 30)), y + float(rng.integers(5, 30))), bool(rng.random() < 0.2))
             for _ in range(int(rng.integers(1, 4)))]
            for _ in range(4)
        ]
        dataset = dataset_of(objects)
        dets = {}
        for record in dataset.records:
            jitter = rng.normal(0, 3, (len(record.objects), 4))
            dets[record.image_id] = Detections(
                boxes=torch.tensor([o.box for o in record.objects], dtype=torch.float64).reshape(-1, 4) + torch.from_numpy(jitter).round(),
                scores=torch.from_numpy(rng.random(len(record.objects))),
                labels=torch.tensor([CLASSES.index(o.name) + 1 for o in record.objects], dtype=torch.int64),
            )
        folder = tmp_path / f"case{case}"
        write_voc_results(dets, CLASSES, folder, "test")
        try:
            before = evaluate_results_dir(dataset, folder, "test", CLASSES)
        except NoGroundTruthError:
            continue
        removed = str(rng.choice(CLASSES))
        (folder / f"comp4_det_test_{removed}.txt").unlink()
        after = evaluate_results_dir(dataset, folder, "test", CLASSES)
        assert after.mAP <= before.mAP + 1e-12, case
        assert before.mAP == pytest.approx(evaluate_voc(dataset, dets).mAP, abs=1e-9)
