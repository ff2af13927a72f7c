"""``python -m model.evaluation.voc``: score devkit results files against VOC annotations.

    python -m model.evaluation.voc --annotations DIR --image-set FILE --results DIR \\
        --metric voc07|area [--classes a,b,c] [--iou-threshold 0.5] [--images DIR]

Prints one JSON object ``{"mAP": float, "ap": {"<class>": float, ...}}`` on
stdout (a class without non-difficult ground truth is ``null`` and left out of
the mean); logs go to stderr. The image-set file's stem names the results
files: ``<results>/comp4_det_<stem>_<class>.txt`` (1-based boxes).

Classes: ``--classes`` if given; else the classes whose results files are
present (sorted); else every class named in the annotations. Each class file is
ranked in its own line order, so score ties break exactly as in the devkit.
Exit status 0 on success, 1 on bad input (message on stderr), 2 on bad usage.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from model.data.records import DetectionDataset
from model.data.voc import load_voc_annotations, read_image_set
from model.evaluation.results_io import RESULTS_PREFIX, read_class_results, results_file_name
from model.evaluation.voc_ap import METRICS, VOCResult, evaluate_class, ground_truth_by_class

logger = logging.getLogger("model.evaluation.voc")


def discover_result_classes(results_dir: Path, image_set: str) -> list[str]:
    """Class names of the ``comp4_det_<image_set>_<class>.txt`` files in ``results_dir``, sorted."""
    prefix = f"{RESULTS_PREFIX}{image_set}_"
    return sorted(
        path.name[len(prefix) : -len(".txt")]
        for path in Path(results_dir).glob(f"{prefix}*.txt")
        if path.is_file() and len(path.name) > len(prefix) + len(".txt")
    )


def evaluate_results_dir(
    dataset: DetectionDataset,
    results_dir: Path,
    image_set: str,
    classes: Sequence[str],
    metric: str = "voc07",
    iou_threshold: float = 0.5,
) -> VOCResult:
    """AP per class of the results files in ``results_dir`` against ``dataset``'s ground truth."""
    if metric not in METRICS:
        raise ValueError(f"unknown VOC metric {metric!r}; expected one of {METRICS}")
    curves = {}
    ground_truth = ground_truth_by_class(dataset, classes)
    for name in classes:
        path = Path(results_dir) / results_file_name(image_set, name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: results file for class {name!r} not found")
        image_ids, scores, boxes = read_class_results(path)
        try:
            curves[name] = evaluate_class(
                ground_truth[name],
                image_ids,
                scores,
                boxes,
                iou_threshold=iou_threshold,
                use_07_metric=metric == "voc07",
            )
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        logger.info(
            "%s: AP %.4f (%d detections, %d positives)",
            name, curves[name].ap, curves[name].num_detections, curves[name].num_positives,
        )
    return VOCResult.from_curves(curves, metric, iou_threshold)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m model.evaluation.voc",
        description="PASCAL VOC mAP of devkit results files (comp4_det_<image set>_<class>.txt).",
    )
    parser.add_argument("--annotations", type=Path, required=True, help="folder of VOC XML annotations")
    parser.add_argument("--image-set", type=Path, required=True, help="image-set file; its stem names the results files")
    parser.add_argument("--results", type=Path, required=True, help="folder holding the results files")
    parser.add_argument("--metric", choices=METRICS, default="voc07", help="voc07: 11-point AP; area: VOC2010+ AP")
    parser.add_argument("--classes", default=None, help="comma-separated class names (default: discovered)")
    parser.add_argument("--iou-threshold", type=float, default=0.5, help="a match needs IoU > this (default 0.5)")
    parser.add_argument(
        "--images", type=Path, default=None,
        help="images folder, only needed when annotations lack <size> (default: not read)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        image_set = args.image_set.stem
        image_ids = read_image_set(args.image_set)
        if args.classes is not None:
            classes = [name.strip() for name in args.classes.split(",") if name.strip()]
            if not classes or len(set(classes)) != len(classes):
                raise ValueError(f"--classes must name distinct classes, got {args.classes!r}")
        else:
            classes = discover_result_classes(args.results, image_set)
            if classes:
                logger.info("classes from the results files: %s", ", ".join(classes))
        # Every class the annotations name is read; only the chosen ones are scored.
        dataset = load_voc_annotations(args.annotations, image_ids, images_dir=args.images, classes=None)
        if not classes:
            classes = list(dataset.classes)
            logger.info("no results files found; classes from the annotations: %s", ", ".join(classes))
        if not classes:
            raise ValueError("no classes: none given, no results files found, none in the annotations")
        dataset = DetectionDataset(root=dataset.root, classes=tuple(classes), records=dataset.records, fixups=dataset.fixups)
        result = evaluate_results_dir(dataset, args.results, image_set, classes, args.metric, args.iou_threshold)
    except (OSError, ValueError) as error:
        logger.error("%s", error)
        return 1
    logger.info("mAP (%s) over %d images: %.4f", args.metric, len(dataset), result.mAP)
    print(json.dumps(result.to_json_dict(), allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
