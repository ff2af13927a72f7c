"""Speed of ``evaluate_voc`` on a VOC07-test-sized synthetic case, against a plain devkit loop.

    python benchmarks/eval_speed.py [--images 5000] [--classes 20] [--detections 100] [--seed 0]

The case (seeded numpy RNG): ``--images`` images of 500x375 with 1-6 objects
each (random class, 20 % difficult, as in VOC07 test), and exactly
``--detections`` detections per image over all classes (the detector's cap):
up to three jittered copies of each ground-truth box (90 % with the right class),
the rest random boxes of random classes with lower scores.

Both implementations score the same detections, in the same input order; the
reference is py-faster-rcnn's ``voc_eval`` written as the obvious per-detection
loop (written here, not imported). The script prints both times, their ratio,
and the largest AP difference (it must be 0), for the 11-point and area metrics.
It also times writing and re-reading the devkit results files.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.data.records import DetectionDataset, ImageRecord, ObjectAnnotation  # noqa: E402
from model.detections import Detections  # noqa: E402
from model.evaluation.results_io import write_voc_results  # noqa: E402
from model.evaluation.voc import evaluate_results_dir  # noqa: E402
from model.evaluation.voc_ap import average_precision, evaluate_voc  # noqa: E402

WIDTH, HEIGHT = 500, 375


def random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``[n, 4]`` boxes inside the image, sides 16..200 px."""
    w = rng.uniform(16, 200, n)
    h = rng.uniform(16, 200, n)
    x1 = rng.uniform(0, WIDTH - w)
    y1 = rng.uniform(0, HEIGHT - h)
    return np.stack([x1, y1, x1 + w - 1, y1 + h - 1], axis=1)


def synthetic_case(num_images: int, num_classes: int, per_image: int, seed: int):
    """Ground truth as a ``DetectionDataset`` and detections as ``{image_id: Detections}``."""
    rng = np.random.default_rng(seed)
    classes = tuple(f"class{k:02d}" for k in range(num_classes))
    records, detections = [], {}
    for i in range(num_images):
        image_id = f"{i:06d}"
        g = int(rng.integers(1, 7))
        gt_boxes = random_boxes(rng, g)
        gt_labels = rng.integers(0, num_classes, g)
        difficult = rng.random(g) < 0.2
        objects = tuple(
            ObjectAnnotation(classes[gt_labels[j]], tuple(float(v) for v in gt_boxes[j]), bool(difficult[j]))
            for j in range(g)
        )
        records.append(ImageRecord(image_id, Path(f"{image_id}.jpg"), WIDTH, HEIGHT, objects))

        copies = np.repeat(np.arange(g), 3)[: per_image]
        sizes = np.stack([gt_boxes[copies, 2] - gt_boxes[copies, 0], gt_boxes[copies, 3] - gt_boxes[copies, 1]], 1)
        jitter = rng.normal(0, 0.12, (len(copies), 4)) * np.concatenate([sizes, sizes], 1)
        near = gt_boxes[copies] + jitter
        near_labels = np.where(rng.random(len(copies)) < 0.9, gt_labels[copies], rng.integers(0, num_classes, len(copies)))
        near_scores = np.clip(rng.normal(0.7, 0.2, len(copies)), 0.05, 1.0)
        n_rand = per_image - len(copies)
        boxes = np.concatenate([near, random_boxes(rng, n_rand)])
        labels = np.concatenate([near_labels, rng.integers(0, num_classes, n_rand)]) + 1
        scores = np.concatenate([near_scores, rng.uniform(0.05, 0.6, n_rand)])
        detections[image_id] = Detections(
            boxes=torch.from_numpy(boxes.astype(np.float32)),
            scores=torch.from_numpy(scores.astype(np.float32)),
            labels=torch.from_numpy(labels.astype(np.int64)),
        )
    return DetectionDataset(root=Path("synthetic"), classes=classes, records=records), detections


def reference_voc_eval(dataset: DetectionDataset, detections, use_07_metric: bool) -> dict[str, float]:
    """py-faster-rcnn ``voc_eval`` per class as a per-detection loop (stable score sort)."""
    aps = {}
    for k, name in enumerate(dataset.classes):
        class_recs, npos = {}, 0
        for record in dataset.records:
            objs = [o for o in record.objects if o.name == name]
            bbox = np.array([o.box for o in objs], dtype=np.float64).reshape(-1, 4)
            difficult = np.array([o.difficult for o in objs], dtype=bool)
            npos += int((~difficult).sum())
            class_recs[record.image_id] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(objs)}
        image_ids, confidence, boxes = [], [], []
        for image_id, dets in detections.items():
            keep = (dets.labels == k + 1).numpy()
            image_ids += [image_id] * int(keep.sum())
            confidence.append(dets.scores.numpy()[keep].astype(np.float64))
            boxes.append(dets.boxes.numpy()[keep].astype(np.float64))
        confidence = np.concatenate(confidence)
        boxes = np.concatenate(boxes).reshape(-1, 4)
        order = np.argsort(-confidence, kind="stable")
        nd = len(order)
        tp, fp = np.zeros(nd), np.zeros(nd)
        for d in range(nd):
            r = class_recs[image_ids[order[d]]]
            bb = boxes[order[d]]
            ovmax, gt = -np.inf, r["bbox"]
            if gt.size > 0:
                iw = np.maximum(np.minimum(gt[:, 2], bb[2]) - np.maximum(gt[:, 0], bb[0]) + 1.0, 0.0)
                ih = np.maximum(np.minimum(gt[:, 3], bb[3]) - np.maximum(gt[:, 1], bb[1]) + 1.0, 0.0)
                inters = iw * ih
                uni = (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0) + (gt[:, 2] - gt[:, 0] + 1.0) * (gt[:, 3] - gt[:, 1] + 1.0) - inters
                overlaps = inters / uni
                ovmax, jmax = np.max(overlaps), int(np.argmax(overlaps))
            if ovmax > 0.5:
                if not r["difficult"][jmax]:
                    if not r["det"][jmax]:
                        tp[d] = 1.0
                        r["det"][jmax] = True
                    else:
                        fp[d] = 1.0
            else:
                fp[d] = 1.0
        fp, tp = np.cumsum(fp), np.cumsum(tp)
        rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps[name] = average_precision(rec, prec, use_07_metric)
    return aps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--detections", type=int, default=100, help="detections per image, all classes together")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-reference", action="store_true", help="time only the vectorised evaluation")
    args = parser.parse_args()
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    dataset, detections = synthetic_case(args.images, args.classes, args.detections, args.seed)
    num_dets = sum(len(d) for d in detections.values())
    num_gt = sum(len(r.objects) for r in dataset.records)
    print(f"case: {args.images} images, {args.classes} classes, {num_dets} detections, {num_gt} gt boxes "
          f"(built in {time.perf_counter() - t0:.1f} s)")

    worst = 0.0
    for metric in ("voc07", "area"):
        t0 = time.perf_counter()
        result = evaluate_voc(dataset, detections, metric=metric)
        fast = time.perf_counter() - t0
        line = f"{metric}: evaluate_voc {fast:.3f} s, mAP {result.mAP:.6f}"
        if not args.skip_reference:
            t0 = time.perf_counter()
            reference = reference_voc_eval(dataset, detections, metric == "voc07")
            slow = time.perf_counter() - t0
            diff = max(abs(result.ap[name] - reference[name]) for name in dataset.classes)
            worst = max(worst, diff)
            line += f"; reference loop {slow:.2f} s ({slow / fast:.0f}x slower); max |AP diff| {diff:.3g}"
        print(line)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_voc_results(detections, dataset.classes, Path(tmp), "test")
        written = time.perf_counter() - t0
        t0 = time.perf_counter()
        from_files = evaluate_results_dir(dataset, Path(tmp), "test", dataset.classes, "voc07")
        scored = time.perf_counter() - t0
    print(f"results files: write {written:.2f} s, read + score (CLI path) {scored:.2f} s, mAP {from_files.mAP:.6f}")
    if worst != 0.0:
        print("MISMATCH between evaluate_voc and the reference loop", file=sys.stderr)
        return 1
    if not args.skip_reference:
        print("APs of evaluate_voc and the reference loop agree exactly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
