"""Flat custom layout: a folder of VOC XML files and a folder of images, no ImageSets.

The train/test split is made here, deterministically from a seed: ids are
ordered by ``sha256("<seed>:<id>")`` and the first ``round(n * test_fraction)``
form the test split. The hash does not depend on the Python version, on
``PYTHONHASHSEED``, on numpy, or on the order files are listed in; adding an
image moves at most the one id at the boundary.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

from model.data.records import DatasetError, DetectionDataset
from model.data.voc import annotation_ids, discover_classes, load_voc_annotations, merge_errors

FLAT_SPLITS = ("train", "test", "all")


def hash_order(image_ids: Sequence[str], seed: int) -> list[str]:
    """``image_ids`` in a seed-determined pseudo-random order, stable everywhere."""
    def key(image_id: str) -> tuple[bytes, str]:
        digest = hashlib.sha256(f"{int(seed)}:{image_id}".encode("utf-8")).digest()
        return digest, image_id

    return sorted(image_ids, key=key)


def split_ids(image_ids: Sequence[str], split: str, test_fraction: float = 0.2, seed: int = 0) -> list[str]:
    """The ids of ``split`` (``train``, ``test`` or ``all``), sorted by id.

    ``trainval`` is accepted as ``train`` (this layout has no separate val
    split). The test split holds ``round(n * test_fraction)`` ids (half rounds
    up); when ``0 < test_fraction < 1`` each side keeps at least one id if
    ``n >= 2``, and a single id goes to train.
    """
    if not 0.0 <= test_fraction <= 1.0 or math.isnan(test_fraction):
        raise ValueError(f"test_fraction must lie in [0, 1], got {test_fraction}")
    if split == "trainval":
        split = "train"
    if split not in FLAT_SPLITS:
        raise ValueError(f"split must be one of {FLAT_SPLITS} (or trainval), got {split!r}")
    ordered = sorted(set(image_ids))
    if split == "all":
        return ordered
    n = len(ordered)
    n_test = int(math.floor(n * test_fraction + 0.5))
    if 0.0 < test_fraction < 1.0:
        # Both sides keep at least one id when they can; the train side wins a tie at n = 1.
        n_test = min(max(n_test, 1), n - 1) if n >= 2 else 0
    test = set(hash_order(ordered, seed)[:n_test])
    return [image_id for image_id in ordered if (image_id in test) == (split == "test")]


def load_flat(
    annotations_dir: Path,
    images_dir: Path,
    split: str = "train",
    test_fraction: float = 0.2,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    *,
    errors: list[DatasetError] | None = None,
    check_images: bool = True,
) -> DetectionDataset:
    """One split of a flat dataset: every ``annotations_dir/*.xml`` with images in ``images_dir``.

    Each XML's ``<filename>`` names its image inside ``images_dir`` (falling back
    to ``<id>.jpg``/``.png``/...). ``classes=None`` takes the sorted class names
    of *all* annotation files, so the train and test splits agree.
    """
    annotations_dir = Path(annotations_dir)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir}: images folder not found")
    all_ids = annotation_ids(annotations_dir)
    if not all_ids:
        raise DatasetError(f"{annotations_dir}: no *.xml annotation files found")
    chosen = split_ids(all_ids, split, test_fraction, seed)
    scan_errors: list[DatasetError] | None = None if errors is None else []
    names = discover_classes(annotations_dir, errors=scan_errors) if classes is None else classes
    dataset = load_voc_annotations(
        annotations_dir, chosen, images_dir, names, errors=errors, check_images=check_images
    )
    merge_errors(errors, scan_errors)
    dataset.root = annotations_dir.parent
    return dataset
