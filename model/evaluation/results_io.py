"""PASCAL VOC devkit results files: ``comp4_det_<image_set>_<class>.txt``.

One file per class, one line per detection: ``image_id score x1 y1 x2 y2``
with 1-based inclusive pixel coordinates, as the devkit reads them. In memory
the library is 0-based, so writing adds 1 and reading subtracts 1 (the only
place besides ``model.data.voc`` where the convention changes).

Precision: the devkit (py-faster-rcnn) writes ``{:.3f}`` scores and ``{:.1f}``
coordinates. Three decimals create score ties that the ranking then breaks by
file order, so scores are written with six; coordinates keep one decimal.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model.atomic import atomic_write_text
from model.data.records import devkit_token_problem

if TYPE_CHECKING:  # imported where needed: reading and scoring files needs no torch
    from model.detections import Detections

RESULTS_PREFIX = "comp4_det_"


def results_file_name(image_set: str, class_name: str) -> str:
    """``comp4_det_<image_set>_<class>.txt``."""
    return f"{RESULTS_PREFIX}{image_set}_{class_name}.txt"


def _check_token(value: str, what: str) -> None:
    """Image ids, class names and image-set names become file names or space-separated fields."""
    problem = devkit_token_problem(value)
    if problem is not None:
        raise ValueError(f"{what} {value!r} {problem}: it cannot appear in a results file name or line")


def write_voc_results(
    detections: Mapping[str, Detections],
    class_names: Sequence[str],
    out_dir: Path,
    image_set: str,
) -> list[Path]:
    """Write one devkit results file per class (empty ones too); returns their paths in class order.

    ``detections``: image id -> ``Detections`` with 0-based boxes and labels
    ``1..K`` naming ``class_names[label - 1]``. Lines follow the mapping's order,
    then each image's detection order. Each file is replaced atomically.
    """
    out_dir = Path(out_dir)
    _check_token(image_set, "image set")
    for name in class_names:
        _check_token(name, "class name")
    num_classes = len(class_names)
    lines: list[list[str]] = [[] for _ in class_names]
    for image_id, dets in detections.items():
        _check_token(image_id, "image id")
        if len(dets) == 0:
            continue
        boxes = dets.boxes.detach().cpu().double().numpy().reshape(-1, 4) + 1.0
        scores = dets.scores.detach().cpu().double().numpy().reshape(-1)
        labels = dets.labels.detach().cpu().numpy().astype(np.int64).reshape(-1)
        if labels.min() < 1 or labels.max() > num_classes:
            raise ValueError(f"detections of image {image_id!r}: labels must be in 1..{num_classes}")
        for score, box, label in zip(scores.tolist(), boxes.tolist(), labels.tolist()):
            lines[label - 1].append(
                f"{image_id} {score:.6f} {box[0]:.1f} {box[1]:.1f} {box[2]:.1f} {box[3]:.1f}\n"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, class_lines in zip(class_names, lines):
        path = out_dir / results_file_name(image_set, name)
        atomic_write_text(path, "".join(class_lines))
        paths.append(path)
    return paths


def read_class_results(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """One results file: image ids ``[D]``, scores ``[D]``, 0-based boxes ``[D, 4]`` in file order.

    Blank lines are skipped. A line that is not ``image_id score x1 y1 x2 y2``
    with finite numbers raises ``ValueError`` naming the file and line number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: results file not found")
    parsed = _read_fast(path)
    if parsed is None:  # something is off: the line-by-line reader says what, and where
        parsed = _read_by_line(path)
    image_ids, values = parsed
    return image_ids, values[:, 0].copy(), values[:, 1:] - 1.0


def _read_fast(path: Path) -> tuple[list[str], np.ndarray] | None:
    """numpy's C tokenizer over the whole file; ``None`` on anything unusual."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file warns
            table = np.loadtxt(path, dtype=str, comments=None, ndmin=2, encoding="utf-8")
        if table.size == 0:
            return [], np.zeros((0, 5))
        if table.shape[1] != 6:
            return None
        values = table[:, 1:].astype(np.float64)
    except (ValueError, UnicodeDecodeError):
        return None
    if not np.isfinite(values).all():
        return None
    return table[:, 0].tolist(), values


def _read_by_line(path: Path) -> tuple[list[str], np.ndarray]:
    """The slow, exact reader: raises at the first bad line with its number."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a UTF-8 text file ({error})") from None
    image_ids: list[str] = []
    rows: list[list[float]] = []
    for line_number, line in enumerate(text.split("\n"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise ValueError(
                f"{path}:{line_number}: expected 'image_id score x1 y1 x2 y2', got {len(fields)} fields: {line.rstrip()!r}"
            )
        try:
            numbers = [float(field) for field in fields[1:]]
        except ValueError:
            raise ValueError(f"{path}:{line_number}: non-numeric score or coordinate: {line.rstrip()!r}") from None
        if not all(math.isfinite(v) for v in numbers):
            raise ValueError(f"{path}:{line_number}: non-finite score or coordinate: {line.rstrip()!r}")
        image_ids.append(fields[0])
        rows.append(numbers)
    return image_ids, np.array(rows, dtype=np.float64).reshape(-1, 5)


def read_voc_results(results_dir: Path, image_set: str, class_names: Sequence[str]) -> dict[str, Detections]:
    """Read ``comp4_det_<image_set>_<class>.txt`` for every class back into per-image ``Detections``.

    Boxes come back 0-based (file value - 1) and scores as read, both float64 so
    that nothing is lost to rounding; labels ``1..K`` by ``class_names``. Only
    images with at least one detection appear; an image's detections are grouped
    by class (class order), file order within. Score ties across images may
    therefore rank differently from the files' line order; the CLI evaluates the
    files class by class (``read_class_results``) to rank exactly as the devkit.
    A missing class file raises ``FileNotFoundError``; a malformed line ``ValueError``.
    """
    import torch

    from model.detections import Detections

    results_dir = Path(results_dir)
    _check_token(image_set, "image set")
    per_image: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for k, name in enumerate(class_names):
        _check_token(name, "class name")
        path = results_dir / results_file_name(image_set, name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: results file for class {name!r} not found")
        image_ids, scores, boxes = read_class_results(path)
        if not image_ids:
            continue
        ids = np.array(image_ids)
        # Group this class's lines by image, keeping file order inside each image.
        order = np.argsort(ids, kind="stable")
        unique, starts = np.unique(ids[order], return_index=True)
        ends = np.r_[starts[1:], len(order)]
        for image_id, start, end in zip(unique.tolist(), starts.tolist(), ends.tolist()):
            rows = order[start:end]
            per_image.setdefault(image_id, []).append(
                (boxes[rows], scores[rows], np.full(len(rows), k + 1, dtype=np.int64))
            )
    result = {}
    for image_id, parts in per_image.items():
        result[image_id] = Detections(
            boxes=torch.from_numpy(np.concatenate([p[0] for p in parts])),
            scores=torch.from_numpy(np.concatenate([p[1] for p in parts])),
            labels=torch.from_numpy(np.concatenate([p[2] for p in parts])),
        )
    return result
