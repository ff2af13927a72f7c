"""Checking a whole dataset and reporting *every* problem, each naming its file.

The readers run in collecting mode (``errors=[...]``), so one bad file does
not hide the next. Hard problems make the dataset invalid; counted fix-ups
(clipped or dropped boxes, size read from the image, ...) are listed but do not.
``python -m model.data validate`` is the command-line front end.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.data.images import load_image_rgb
from model.data.loading import LAYOUTS, load_dataset
from model.data.records import DatasetError, DetectionDataset
from model.data.voc import (
    IMAGE_EXTENSIONS,
    annotation_ids,
    discover_classes,
    load_voc_annotations,
    read_image_set,
)

# Per image-set file, how many missing ids are named before summarising the rest.
_MAX_NAMED = 20


@dataclass
class ValidationReport:
    """What :func:`validate_dataset` found. ``ok`` is False when any hard problem was found."""

    root: Path
    layout: str
    split: str | None
    classes: tuple[str, ...] = ()
    num_images: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    difficult_counts: dict[str, int] = field(default_factory=dict)
    images_without_objects: int = 0
    fixups: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def num_objects(self) -> int:
        return sum(self.class_counts.values())

    @property
    def num_difficult(self) -> int:
        return sum(self.difficult_counts.values())


def _check_voc_image_sets(root: Path, known_ids: set[str], classes: Sequence[str], problems: list[str], notes: list[str]) -> None:
    """Every id in every ``ImageSets/Main`` file must have an annotation file."""
    main = root / "ImageSets" / "Main"
    if not main.is_dir():
        problems.append(f"{main}: image sets folder not found")
        return
    listed: set[str] = set()
    per_class_prefixes = tuple(f"{name}_" for name in classes)
    set_files = sorted(main.glob("*.txt"))
    if not set_files:
        problems.append(f"{main}: no image set files (*.txt)")
    for set_file in set_files:
        if set_file.stem.startswith(per_class_prefixes):
            continue  # VOC's per-class files repeat the main splits
        try:
            ids = read_image_set(set_file)
        except DatasetError as error:
            problems.append(str(error))
            continue
        listed.update(ids)
        missing = [image_id for image_id in ids if image_id not in known_ids]
        for image_id in missing[:_MAX_NAMED]:
            problems.append(f"{set_file}: lists image id {image_id!r} but {root / 'Annotations' / (image_id + '.xml')} does not exist")
        if len(missing) > _MAX_NAMED:
            problems.append(f"{set_file}: ... and {len(missing) - _MAX_NAMED} more ids without annotation files")
        notes.append(f"split {set_file.stem}: {len(ids)} images")
    unlisted = len(known_ids - listed)
    if unlisted:
        notes.append(f"{unlisted} annotation files are in no image set")


def _load_all_voc(root: Path, classes: Sequence[str] | None, errors: list[DatasetError], problems: list[str], notes: list[str], check_images: bool) -> DetectionDataset:
    """Every annotation file of a VOC root, plus a check of all image-set files."""
    annotations_dir = root / "Annotations"
    ids = annotation_ids(annotations_dir)
    names = tuple(classes) if classes is not None else discover_classes(root, errors=errors)
    _check_voc_image_sets(root, set(ids), names, problems, notes)
    images_dir = root / "JPEGImages"
    if images_dir.is_dir():
        stems = {p.stem for p in images_dir.iterdir() if p.suffix in IMAGE_EXTENSIONS}
        orphans = len(stems - set(ids))
        if orphans:
            notes.append(f"{orphans} images in {images_dir} have no annotation file")
    dataset = load_voc_annotations(annotations_dir, ids, images_dir, names, errors=errors, check_images=check_images)
    dataset.root = root
    return dataset


def _check_records(dataset: DetectionDataset, problems: list[str], decode_images: bool) -> None:
    """Checks that hold whatever reader made the records (COCO's included)."""
    known = set(dataset.classes)
    for record in dataset.records:
        for obj in record.objects:
            x1, y1, x2, y2 = obj.box
            if obj.name not in known:
                problems.append(f"{record.path}: object of unknown class {obj.name!r}")
            if not (0 <= x1 <= x2 <= record.width - 1 and 0 <= y1 <= y2 <= record.height - 1):
                problems.append(f"{record.path}: box {obj.box} ({obj.name}) outside the {record.width}x{record.height} image")
        if decode_images:
            try:
                pixels = load_image_rgb(record.path)
            except DatasetError as error:
                problems.append(str(error))
                continue
            if pixels.shape[:2] != (record.height, record.width):
                problems.append(
                    f"{record.path}: decoded size {pixels.shape[1]}x{pixels.shape[0]} differs from the annotated {record.width}x{record.height}"
                )


def validate_dataset(
    root: Path,
    layout: str = "voc",
    split: str | None = None,
    classes: Sequence[str] | None = None,
    *,
    decode_images: bool = True,
    **kwargs: Any,
) -> ValidationReport:
    """Check a dataset and collect every problem and fix-up.

    ``split=None`` checks everything: for ``voc`` all annotation files plus every
    image-set file, for ``flat`` the ``all`` split, for ``coco`` the whole file.
    ``decode_images`` fully decodes each image (finds truncated files).
    Extra keyword arguments go to :func:`model.data.loading.load_dataset`.
    """
    root = Path(root)
    report = ValidationReport(root=root, layout=layout, split=split)
    errors: list[DatasetError] = []
    dataset: DetectionDataset | None = None
    try:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
        if not root.exists():
            raise DatasetError(f"{root}: dataset root not found")
        if layout == "voc" and split is None:
            dataset = _load_all_voc(root, classes, errors, report.problems, report.notes, kwargs.get("check_images", True))
        elif layout == "coco":
            dataset = load_dataset(root, layout, split or "", classes, **kwargs)
        else:
            default_split = "all" if layout == "flat" else "trainval"
            dataset = load_dataset(root, layout, split or default_split, classes, errors=errors, **kwargs)
    except (DatasetError, ValueError) as error:
        report.problems.append(str(error))
    except ImportError as error:
        report.problems.append(f"{root}: the {layout} reader is not available ({error})")
    report.problems.extend(str(error) for error in errors)

    if dataset is not None:
        _check_records(dataset, report.problems, decode_images)
        report.classes = dataset.classes
        report.num_images = len(dataset.records)
        counts: Counter[str] = Counter()
        difficult: Counter[str] = Counter()
        for record in dataset.records:
            if not record.objects:
                report.images_without_objects += 1
            for obj in record.objects:
                counts[obj.name] += 1
                difficult[obj.name] += int(obj.difficult)
        report.class_counts = {name: counts[name] for name in dataset.classes} | dict(counts)
        report.difficult_counts = {name: difficult[name] for name in report.class_counts}
        report.fixups = list(dataset.fixups)
    # The class scan and the per-file load can report the same broken file twice.
    report.problems = list(dict.fromkeys(report.problems))
    return report


def format_report(report: ValidationReport) -> str:
    """A human-readable summary: counts, per-class objects, every fix-up and problem."""
    split = report.split if report.split is not None else "all"
    lines = [
        f"dataset: {report.root} (layout {report.layout}, split {split})",
        f"images: {report.num_images}  objects: {report.num_objects}  difficult: {report.num_difficult}"
        f"  images without objects: {report.images_without_objects}",
        f"classes ({len(report.classes)}):",
    ]
    width = max((len(name) for name in report.class_counts), default=0)
    for name, count in report.class_counts.items():
        lines.append(f"  {name:<{width}}  {count:6d} objects  ({report.difficult_counts.get(name, 0)} difficult)")
    lines += [f"note: {note}" for note in report.notes]
    lines.append(f"fix-ups ({len(report.fixups)}):")
    lines += [f"  - {line}" for line in report.fixups]
    lines.append(f"problems ({len(report.problems)}):")
    lines += [f"  - {line}" for line in report.problems]
    if report.ok:
        lines.append(f"result: VALID ({len(report.fixups)} fix-ups)")
    else:
        lines.append(f"result: INVALID ({len(report.problems)} problems, {len(report.fixups)} fix-ups)")
    return "\n".join(lines)
