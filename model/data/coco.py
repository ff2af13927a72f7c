"""COCO json <-> ``DetectionDataset``, and a VOC -> COCO converter CLI.

Box conventions: the library's boxes are 0-based *inclusive* ``(x1, y1, x2, y2)``
(width ``x2 - x1 + 1``); COCO's ``bbox`` is ``[x, y, w, h]`` over continuous
pixel extents. Pixel ``i`` covers ``[i, i + 1)``, so ``x = x1``,
``w = x2 - x1 + 1`` and back ``x2 = x + w - 1``: the +1 IoU of the library and
pycocotools' IoU then agree exactly.

Written json (``dataset_to_coco``): images with integer ids ``1..N`` in record
order and ``file_name`` = the image's file name; categories ``1..K`` in
``dataset.classes`` order; annotations with ``bbox``, ``area = w * h``,
``iscrowd = 0`` and ``ignore`` = the VOC ``difficult`` flag (Detectron's
convention). Note that pycocotools itself overwrites ``ignore`` with
``iscrowd`` when it evaluates, so difficult boxes written this way count as
ordinary positives there; ``include_difficult=False`` leaves them out.

Read json (``load_coco``, through pycocotools' ``COCO``): the image id is the
file name's stem (what VOC-style results files name images by); two images
with the same stem are an error, as are two images, categories or annotations
with the same ``id`` (pycocotools would keep only the last one, or hand one
image's boxes to another) and an ``iscrowd``/``ignore`` that is not 0 or 1.
Exact repeats (same class and box in one image) are kept once, a fix-up.
Crowd (``iscrowd=1``) and ``ignore=1`` boxes
become ``difficult`` objects: evaluation then neither rewards nor punishes
them, training drops them. Degenerate boxes (``w <= 0`` or ``h <= 0``) and
boxes outside the image are dropped, boxes partly outside are clipped; each
such repair is a fix-up line naming the file.

CLI: ``python -m model.data.coco to-coco --voc-root DIR --split NAME --out FILE``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from model.atomic import atomic_write_text
from model.data.records import DatasetError, DetectionDataset, ImageRecord, ObjectAnnotation, drop_duplicate_objects

if TYPE_CHECKING:  # model.data imports no torch; detections arrive already built
    from model.detections import Detections

logger = logging.getLogger(__name__)


def _coco_box(box: Sequence[float]) -> list[float]:
    """Inclusive ``(x1, y1, x2, y2)`` -> COCO ``[x, y, w, h]``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1 + 1.0, y2 - y1 + 1.0]


def dataset_to_coco(dataset: DetectionDataset, include_difficult: bool = True) -> dict:
    """The dataset as a COCO instances dict (see the module docstring for the fields).

    Objects whose class is not in ``dataset.classes`` are left out, as are
    difficult ones when ``include_difficult`` is False.
    """
    category_ids = {name: k + 1 for k, name in enumerate(dataset.classes)}
    images, annotations = [], []
    for i, record in enumerate(dataset.records):
        images.append(
            {"id": i + 1, "file_name": Path(record.path).name, "width": int(record.width), "height": int(record.height)}
        )
        for obj in record.objects:
            category = category_ids.get(obj.name)
            if category is None or (obj.difficult and not include_difficult):
                continue
            bbox = _coco_box(obj.box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": category,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                    "ignore": int(obj.difficult),
                }
            )
    return {
        "info": {"description": f"converted from {dataset.root}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k, "name": name, "supercategory": "none"} for name, k in category_ids.items()],
    }


def detections_to_coco(dataset: DetectionDataset, detections: Mapping[str, Detections]) -> list[dict]:
    """COCO results list (``image_id``, ``category_id``, ``bbox``, ``score``) matching ``dataset_to_coco``'s ids.

    Labels ``1..K`` are the category ids. An image id not in the dataset raises ``ValueError``.
    """
    coco_ids = {record.image_id: i + 1 for i, record in enumerate(dataset.records)}
    num_classes = len(dataset.classes)
    results = []
    for image_id, dets in detections.items():
        coco_id = coco_ids.get(image_id)
        if coco_id is None:
            raise ValueError(f"detections for image {image_id!r}, which is not in the dataset (wrong split?)")
        boxes = dets.boxes.detach().cpu().double().reshape(-1, 4).tolist()
        scores = dets.scores.detach().cpu().double().reshape(-1).tolist()
        labels = dets.labels.detach().cpu().reshape(-1).tolist()
        for box, score, label in zip(boxes, scores, labels):
            if not 1 <= label <= num_classes:
                raise ValueError(f"detections of image {image_id!r}: label {label} outside 1..{num_classes}")
            results.append({"image_id": coco_id, "category_id": int(label), "bbox": _coco_box(box), "score": score})
    return results


def write_coco_json(dataset: DetectionDataset, path: Path, include_difficult: bool = True) -> Path:
    """Write ``dataset_to_coco(dataset)`` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    atomic_write_text(path, json.dumps(dataset_to_coco(dataset, include_difficult=include_difficult), allow_nan=False))
    return path


# ``redirect_stdout`` swaps the process-wide ``sys.stdout``: two threads (the pipeline flow
# scores ablation rows concurrently) overlapping their redirects would restore each other's
# buffers and leave ``sys.stdout`` pointing at a StringIO for good. One redirect at a time.
_STDOUT_LOCK = threading.RLock()


@contextlib.contextmanager
def quiet_stdout(what: str):
    """Route pycocotools' ``print`` output to the debug log instead of stdout (thread-safe)."""
    buffer = io.StringIO()
    try:
        with _STDOUT_LOCK, contextlib.redirect_stdout(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines():
            if line.strip():
                logger.debug("%s: %s", what, line)


def _number(value: object, what: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DatasetError(f"{path}: {what} must be a finite number, got {value!r}")
    return float(value)


def _image_path(images_dir: Path, file_name: object, path: Path) -> Path:
    """``images_dir / file_name``, refusing names that are absolute or climb out with ``..``."""
    if not isinstance(file_name, str) or not file_name or "\x00" in file_name:
        raise DatasetError(f"{path}: image file_name must be a non-empty string, got {file_name!r}")
    normal = os.path.normpath(file_name)
    if os.path.isabs(file_name) or normal == ".." or normal.startswith(".." + os.sep) or normal == ".":
        raise DatasetError(f"{path}: image file_name {file_name!r} escapes the images folder {images_dir}")
    return images_dir / normal


def _check_unique_ids(entries: list, what: str, key: str, path: Path) -> None:
    """Every entry is an object with an integer ``id`` that no other entry of the list has."""
    first_index: dict[int, int] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DatasetError(f"{path}: {what} entry {index} is not a JSON object")
        value = entry.get("id")
        if isinstance(value, bool) or not isinstance(value, int):
            raise DatasetError(f"{path}: {what} entry {index} has id {value!r}; ids must be integers")
        if value in first_index:
            raise DatasetError(
                f"{path}: {what} id {value} is used twice, by entries {first_index[value]} and {index} of {key!r};"
                " ids must be unique (pycocotools would merge them)"
            )
        first_index[value] = index


def _flag(ann: dict, key: str, where: str, path: Path) -> bool:
    """A 0/1 (or false/true) field such as ``iscrowd``; anything else is refused, not guessed."""
    value = ann.get(key, 0)
    if isinstance(value, (bool, int, float)) and value in (0, 1):
        return bool(value)
    raise DatasetError(f"{path}: {where}: {key} must be 0 or 1, got {value!r}")


def load_coco(annotation_json: Path, images_dir: Path) -> DetectionDataset:
    """Read a COCO instances json into a ``DetectionDataset`` (0-based inclusive boxes).

    ``classes`` are the category names in category-id order (label ``k + 1`` is
    the k-th category by id). Images keep the json's order; ``record.path`` is
    ``images_dir / file_name`` (not checked: evaluation does not need images).
    ``root`` is ``images_dir``'s parent. Raises ``DatasetError`` naming the file.
    """
    from pycocotools.coco import COCO

    path = Path(annotation_json)
    images_dir = Path(images_dir)
    if not path.is_file():
        raise DatasetError(f"{path}: COCO annotation file not found")
    try:
        with quiet_stdout("pycocotools"):
            coco = COCO(str(path))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: malformed JSON ({error})") from None
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not UTF-8 text ({error})") from None
    except AssertionError:
        raise DatasetError(f"{path}: top level must be a JSON object") from None
    except (KeyError, TypeError) as error:
        raise DatasetError(f"{path}: not a COCO instances file (bad or missing field {error})") from None

    raw = coco.dataset
    for key in ("images", "annotations", "categories"):
        if not isinstance(raw.get(key), list):
            raise DatasetError(f"{path}: missing list {key!r}")
    # pycocotools indexes by id and keeps the last entry of each: check before trusting its index.
    for key, what in (("images", "image"), ("categories", "category"), ("annotations", "annotation")):
        _check_unique_ids(raw[key], what, key, path)
    categories = sorted(coco.cats.values(), key=lambda cat: cat["id"])
    names = [cat.get("name") for cat in categories]
    if any(not isinstance(name, str) or not name for name in names) or len(set(names)) != len(names):
        raise DatasetError(f"{path}: category names must be distinct non-empty strings, got {names}")
    class_of = {cat["id"]: cat["name"] for cat in categories}

    for ann in raw["annotations"]:
        for key in ("image_id", "category_id"):
            value = ann.get(key)
            if isinstance(value, bool) or not isinstance(value, int):  # True == 1 would match image/category 1
                raise DatasetError(f"{path}: annotation {ann.get('id')}: {key} must be an integer id, got {value!r}")
    known_images = set(coco.imgs)
    stray = {ann.get("image_id") for ann in raw["annotations"]} - known_images
    if stray:
        raise DatasetError(f"{path}: annotations refer to unknown image ids, e.g. {sorted(map(str, stray))[:3]}")

    records: list[ImageRecord] = []
    fixups: list[str] = []
    seen: dict[str, object] = {}
    for image in raw["images"]:
        coco_id = image["id"]
        image_path = _image_path(images_dir, image.get("file_name"), path)
        image_id = image_path.stem
        if image_id in seen:
            raise DatasetError(f"{path}: images {seen[image_id]} and {coco_id} share the file stem {image_id!r}")
        seen[image_id] = coco_id
        width = _number(image.get("width"), f"image {coco_id} width", path)
        height = _number(image.get("height"), f"image {coco_id} height", path)
        if width < 1 or height < 1 or width != int(width) or height != int(height):
            raise DatasetError(f"{path}: image {coco_id} size {width}x{height} is not a positive whole pixel count")
        objects: list[ObjectAnnotation] = []
        object_labels: list[str] = []
        for ann in coco.imgToAnns.get(coco_id, []):
            where = f"annotation {ann.get('id')} (image {coco_id})"
            name = class_of.get(ann.get("category_id"))
            if name is None:
                raise DatasetError(f"{path}: {where}: unknown category_id {ann.get('category_id')!r}")
            bbox = ann.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise DatasetError(f"{path}: {where}: bbox must be [x, y, w, h], got {bbox!r}")
            x, y, w, h = (_number(v, f"{where} bbox", path) for v in bbox)
            if w <= 0 or h <= 0:
                fixups.append(f"{path}: {where}: dropped degenerate bbox {bbox}")
                continue
            x1, y1, x2, y2 = x, y, x + w - 1.0, y + h - 1.0
            if x1 > width - 1 or y1 > height - 1 or x2 < 0 or y2 < 0:
                fixups.append(f"{path}: {where}: dropped bbox {bbox} outside the {width:g}x{height:g} image")
                continue
            clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, width - 1.0), min(y2, height - 1.0))
            if clipped != (x1, y1, x2, y2):
                fixups.append(f"{path}: {where}: bbox {bbox} clipped to the {width:g}x{height:g} image")
            difficult = _flag(ann, "iscrowd", where, path) or _flag(ann, "ignore", where, path)
            objects.append(ObjectAnnotation(name=name, box=clipped, difficult=difficult))
            object_labels.append(f"annotation {ann.get('id')}")
        unique, repeats = drop_duplicate_objects(objects, object_labels, f"{path}: image {coco_id}")
        fixups.extend(repeats)
        records.append(
            ImageRecord(image_id=image_id, path=image_path, width=int(width), height=int(height), objects=unique)
        )
    for line in fixups:
        logger.warning("fix-up: %s", line)
    return DetectionDataset(root=images_dir.parent, classes=tuple(names), records=records, fixups=fixups)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m model.data.coco", description="COCO json conversion.")
    sub = parser.add_subparsers(dest="command", required=True)
    to_coco = sub.add_parser("to-coco", help="convert one split of a VOC-layout dataset to a COCO instances json")
    to_coco.add_argument("--voc-root", type=Path, required=True, help="VOC root (Annotations/, JPEGImages/, ImageSets/)")
    to_coco.add_argument("--split", required=True, help="image set name, e.g. test")
    to_coco.add_argument("--out", type=Path, required=True, help="json file to write")
    to_coco.add_argument("--classes", default=None, help="comma-separated class list (default: discovered)")
    to_coco.add_argument("--no-difficult", action="store_true", help="leave difficult objects out")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from model.data.voc import load_voc

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    try:
        dataset = load_voc(args.voc_root, args.split, classes)
        write_coco_json(dataset, args.out, include_difficult=not args.no_difficult)
    except (OSError, ValueError) as error:
        logger.error("%s", error)
        return 1
    num_objects = sum(len(record.objects) for record in dataset.records)
    logger.info("wrote %s: %d images, %d objects, %d classes", args.out, len(dataset), num_objects, len(dataset.classes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
