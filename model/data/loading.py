"""One entry point for every dataset layout: :func:`load_dataset`.

Layouts and what ``root`` means:

* ``voc``: a VOC root with ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``.
* ``flat``: ``root`` holds ``Annotations/`` and ``JPEGImages/`` (or ``images/``);
  or pass ``annotations_dir=`` / ``images_dir=``. Splits ``train`` (alias
  ``trainval``), ``test``, ``all``; ``test_fraction=`` and ``seed=`` choose the cut.
* ``coco``: ``root`` is the annotation JSON file (images in ``images_dir=``, else
  ``images/`` beside the file), or a folder holding ``<split>.json`` or
  ``annotations.json`` and ``images/``. The JSON *is* the split, so ``split``
  only picks ``<split>.json`` when that exists.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.data.flat import load_flat
from model.data.records import DatasetError, DetectionDataset
from model.data.voc import load_voc

LAYOUTS = ("voc", "flat", "coco")


def flat_dirs(root: Path, annotations_dir: Path | None = None, images_dir: Path | None = None) -> tuple[Path, Path]:
    """``(annotations_dir, images_dir)`` of a flat dataset under ``root`` (explicit ones win)."""
    root = Path(root)
    annotations = Path(annotations_dir) if annotations_dir is not None else root / "Annotations"
    if images_dir is not None:
        images = Path(images_dir)
    else:
        images = root / "JPEGImages"
        if not images.is_dir() and (root / "images").is_dir():
            images = root / "images"
    return annotations, images


def coco_paths(root: Path, split: str | None = None, images_dir: Path | None = None) -> tuple[Path, Path]:
    """``(annotation_json, images_dir)`` for a COCO-style ``root`` (see the module docstring)."""
    root = Path(root)
    if root.is_dir():
        candidates = ([root / f"{split}.json"] if split else []) + [root / "annotations.json"]
        annotation_json = next((path for path in candidates if path.is_file()), None)
        if annotation_json is None:
            raise DatasetError(f"{root}: no COCO annotation file ({', '.join(p.name for p in candidates)})")
        default_images = root / "images"
    else:
        annotation_json = root
        if not annotation_json.is_file():
            raise DatasetError(f"{annotation_json}: COCO annotation file not found")
        default_images = root.parent / "images"
    return annotation_json, Path(images_dir) if images_dir is not None else default_images


def _load_coco(root: Path, split: str, classes: Sequence[str] | None, images_dir: Path | None) -> DetectionDataset:
    # Imported here: the COCO reader is optional for VOC-only users and lives in its own module.
    from model.data.coco import load_coco

    annotation_json, images = coco_paths(root, split, images_dir)
    dataset = load_coco(annotation_json, images)
    if classes is not None:
        names = tuple(classes)
        unknown = sorted({obj.name for rec in dataset.records for obj in rec.objects} - set(names))
        if unknown:
            raise DatasetError(f"{annotation_json}: classes {unknown} are not in the given class list {names}")
        dataset.classes = names
    return dataset


def load_dataset(
    root: Path,
    layout: str = "voc",
    split: str = "trainval",
    classes: Sequence[str] | None = None,
    **kwargs: Any,
) -> DetectionDataset:
    """Load one split of a dataset in any supported layout (see the module docstring).

    Extra keyword arguments go to the layout's reader: ``errors`` (a list to
    collect :class:`DatasetError` s instead of raising) and ``check_images`` for
    voc and flat; ``annotations_dir``, ``images_dir``, ``test_fraction``,
    ``seed`` for flat; ``images_dir`` for coco.
    """
    root = Path(root)
    if layout == "voc":
        return load_voc(root, split, classes, **kwargs)
    if layout == "flat":
        annotations, images = flat_dirs(root, kwargs.pop("annotations_dir", None), kwargs.pop("images_dir", None))
        return load_flat(annotations, images, split, classes=classes, **kwargs)
    if layout == "coco":
        images_dir = kwargs.pop("images_dir", None)
        if kwargs:
            raise TypeError(f"unexpected arguments for the coco layout: {sorted(kwargs)}")
        return _load_coco(root, split, classes, images_dir)
    raise ValueError(f"unknown dataset layout {layout!r}; expected one of {LAYOUTS}")
