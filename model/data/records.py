"""The in-memory form of a detection dataset, whatever layout it came from.

Boxes are 0-based inclusive pixel coordinates (see ``model``); the readers
convert from their file convention once, on the way in.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path


class DatasetError(ValueError):
    """Invalid dataset content; the message names the file and the problem."""


def devkit_token_problem(value: str) -> str | None:
    """Why ``value`` cannot be a field of a devkit results file, or None when it can.

    Image ids are the first space-separated field of a results line, class and
    image-set names are parts of its file name ``comp4_det_<set>_<class>.txt``:
    none may be empty or hold whitespace, a path separator or a NUL byte.
    """
    if not value:
        return "is empty"
    if any(c.isspace() for c in value):
        return "contains whitespace"
    if "/" in value or "\\" in value:
        return "contains a path separator"
    if "\x00" in value:
        return "contains a NUL byte"
    return None


@dataclass(frozen=True)
class ObjectAnnotation:
    """One annotated object: class name, box ``(x1, y1, x2, y2)`` 0-based inclusive, difficult flag.

    ``truncated`` and ``occluded`` are the VOC files' descriptive flags (dataset statistics
    only; nothing trains or scores on them), so they take no part in equality.
    """

    name: str
    box: tuple[float, float, float, float]
    difficult: bool = False
    truncated: bool = field(default=False, compare=False)
    occluded: bool = field(default=False, compare=False)


def drop_duplicate_objects(
    objects: Sequence[ObjectAnnotation], labels: Sequence[str], source: str
) -> tuple[tuple[ObjectAnnotation, ...], list[str]]:
    """``objects`` with exact repeats (same class, same box) kept once, plus one fix-up line per repeat.

    Two identical boxes of one class in one image are one object annotated twice (a
    double click in the annotation tool, a merge of two label files): as two ground
    truths, one of them could never be matched and would cap that image's recall.
    The copy kept is the first; it is ``difficult`` only when every copy says so.
    ``labels[i]`` names ``objects[i]`` in the messages (``object 3``, ``annotation 17``).
    """
    first: dict[tuple[str, tuple[float, float, float, float]], int] = {}
    kept: list[ObjectAnnotation] = []
    fixups: list[str] = []
    for obj, label in zip(objects, labels):
        key = (obj.name, obj.box)
        index = first.get(key)
        if index is None:
            first[key] = len(kept)
            kept.append(obj)
            continue
        if kept[index].difficult and not obj.difficult:
            kept[index] = replace(kept[index], difficult=False)
        fixups.append(
            f"{source}: {label} ({obj.name}) has the same class and box {obj.box} (0-based) as an earlier one;"
            " dropped the repeat"
        )
    return tuple(kept), fixups


@dataclass(frozen=True)
class ImageRecord:
    """One image and its annotations. ``image_id`` is what results files name it by."""

    image_id: str
    path: Path
    width: int
    height: int
    objects: tuple[ObjectAnnotation, ...] = ()


@dataclass
class DetectionDataset:
    """Records of one split plus the class list and every fix-up made while reading.

    ``classes`` excludes the background; label ``i + 1`` means ``classes[i]``.
    ``fixups`` holds one human-readable line per counted repair (clipped box,
    dropped degenerate box, ...), each naming the file.
    """

    root: Path
    classes: tuple[str, ...]
    records: list[ImageRecord]
    fixups: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)
