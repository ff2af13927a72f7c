"""The in-memory form of a detection dataset, whatever layout it came from.

Boxes are 0-based inclusive pixel coordinates (see ``model``); the readers
convert from their file convention once, on the way in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class DatasetError(ValueError):
    """Invalid dataset content; the message names the file and the problem."""


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
