"""``python -m model.evaluation.voc``: score devkit results files against VOC annotations.

    python -m model.evaluation.voc --annotations DIR --image-set FILE --results DIR \\
        --metric voc07|area [--classes a,b,c] [--iou-threshold 0.5] [--images DIR]

Prints one JSON object ``{"mAP": float, "ap": {"<class>": float, ...}}`` on
stdout (a class without non-difficult ground truth is ``null`` and left out of
the mean); logs go to stderr. The image-set file's stem names the results
files: ``<results>/comp4_det_<stem>_<class>.txt`` (1-based boxes).

Classes: ``--classes`` if given, else every class named in the annotations (of
any image, so that a class absent from this image set is still reported). Every
one is scored: a class whose results file is missing scores AP 0, with a warning
naming the file, so a lost file can never raise the mAP; results files of
classes not scored are named in a warning. Each class file is ranked in its own
line order, so score ties break exactly as in the devkit.

Exit status 0 on success; 1 on bad input (message on stderr), which includes no
results file at all for the image set and no class with ground truth (no mAP
to report); 2 on bad usage (unknown ``--metric``, ``--iou-threshold`` outside (0, 1)).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from model.data.images import not_regular_file
from model.data.records import DatasetError, DetectionDataset
from model.data.voc import discover_classes, load_voc_annotations, read_image_set
from model.evaluation.results_io import RESULTS_PREFIX, read_class_results, results_file_name
from model.evaluation.voc_ap import (
    DEFAULT_IOU_THRESHOLD,
    METRICS,
    VOCResult,
    check_options,
    evaluate_class,
    ground_truth_by_class,
    require_ground_truth,
)

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
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> VOCResult:
    """AP per class of the results files in ``results_dir`` against ``dataset``'s ground truth.

    Every class in ``classes`` is scored; a missing results file means no detections
    (AP 0, or undefined without ground truth) and is warned about by name. No results
    file at all is ``FileNotFoundError``; no class with ground truth
    :class:`~model.evaluation.voc_ap.NoGroundTruthError`.
    """
    use_07_metric = check_options(metric, iou_threshold)
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"{results_dir}: results folder not found")
    paths = {name: results_dir / results_file_name(image_set, name) for name in classes}
    for path in paths.values():
        kind = not_regular_file(path)
        if kind is not None:  # present but unreadable as a file: an error, not "no detections"
            raise ValueError(f"{path}: results path is not a regular file ({kind})")
    if not any(path.is_file() for path in paths.values()):
        raise FileNotFoundError(
            f"{results_dir}: no results file for image set {image_set!r} "
            f"({results_file_name(image_set, '<class>')}) of any class {list(classes)}"
        )
    curves = {}
    ground_truth = ground_truth_by_class(dataset, classes)
    for name in classes:
        path = paths[name]
        if path.is_file():
            image_ids, scores, boxes = read_class_results(path)
        else:
            logger.warning("%s: results file for class %r not found: scored as no detections (AP 0)", path, name)
            image_ids, scores, boxes = [], np.zeros(0), np.zeros((0, 4))
        try:
            curves[name] = evaluate_class(
                ground_truth[name],
                image_ids,
                scores,
                boxes,
                iou_threshold=iou_threshold,
                use_07_metric=use_07_metric,
            )
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        logger.info(
            "%s: AP %.4f (%d detections, %d positives)",
            name, curves[name].ap, curves[name].num_detections, curves[name].num_positives,
        )
    return require_ground_truth(VOCResult.from_curves(curves, metric, iou_threshold), f"{results_dir} ({image_set})")


def _iou_threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text!r}")
    return value


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m model.evaluation.voc",
        description="PASCAL VOC mAP of devkit results files (comp4_det_<image set>_<class>.txt).",
    )
    parser.add_argument("--annotations", type=Path, required=True, help="folder of VOC XML annotations")
    parser.add_argument("--image-set", type=Path, required=True, help="image-set file; its stem names the results files")
    parser.add_argument("--results", type=Path, required=True, help="folder holding the results files")
    parser.add_argument("--metric", choices=METRICS, default="voc07", help="voc07: 11-point AP; area: VOC2010+ AP")
    parser.add_argument("--classes", default=None, help="comma-separated class names (default: every class of the annotations)")
    parser.add_argument("--iou-threshold", type=_iou_threshold, default=DEFAULT_IOU_THRESHOLD, help="a match needs IoU > this, in (0, 1) (default 0.5)")
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
            known = discover_classes(args.annotations, errors=[])
            unknown = [name for name in classes if name not in known]
            if unknown:  # a typo would otherwise drop out of the mean as "no ground truth"
                raise ValueError(
                    f"{args.annotations}: --classes names {unknown}, which no annotation has; known: {', '.join(known)}"
                )
        else:
            # Every image's annotations, not only this set's: a class absent from the set is reported (null).
            unreadable: list[DatasetError] = []
            classes = list(discover_classes(args.annotations, errors=unreadable))
            for error in unreadable:  # outside this image set they do not matter; inside, loading fails below
                logger.warning("class scan: %s", error)
            if not classes:
                raise ValueError(f"{args.annotations}: no classes: none given with --classes and none in the annotations")
            logger.info("classes from the annotations: %s", ", ".join(classes))
        dataset = load_voc_annotations(args.annotations, image_ids, images_dir=args.images, classes=None)
        unscored = sorted(set(discover_result_classes(args.results, image_set)) - set(classes))
        if unscored:
            logger.warning(
                "%s: results files of classes not scored (not in %s): %s",
                args.results, "--classes" if args.classes is not None else "the annotations", ", ".join(unscored),
            )
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
