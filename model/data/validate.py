"""Checking a whole dataset and reporting *every* problem, each naming its file.

The readers run in collecting mode (``errors=[...]``), so one bad file does
not hide the next. Hard problems make the dataset invalid; counted fix-ups
(clipped or dropped boxes, size read from the image, ...) are listed but do not.
``python -m model.data validate`` is the command-line front end.

VALID promises that every pipeline stage can use the data. Besides what the
readers check (see ``model.data.voc``), :func:`pipeline_problems` - which
``prepare_data`` runs too, before anything trains - refuses:

* an empty split, or one whose every object is difficult (nothing to train on or
  to score), and a train and test split that share an image id or an image (one
  file under two ids, through a symbolic or hard link, or a byte-identical copy);
* two annotations naming one image file within a split;
* an image id, class name or split name that cannot be written in the devkit
  results format (whitespace, path separators: see ``records.devkit_token_problem``);
* an image too small (a side under ``scale.MIN_IMAGE_SIDE`` pixels: no proposal
  survives) or too thin (a side of the resized network input, for the given
  ``min_size``/``max_size``, under ``scale.MIN_INPUT_SIDE``);
* boxes outside the image, objects of unknown classes, images that do not decode
  (or decode to another size than annotated).
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.config import DetectorConfig
from model.data.flat import split_ids
from model.data.images import load_image_rgb
from model.data.loading import LAYOUTS, load_dataset
from model.data.records import DatasetError, DetectionDataset, ImageRecord, devkit_token_problem
from model.data.scale import MIN_IMAGE_SIDE, MIN_INPUT_SIDE, compute_scale, resized_size
from model.data.voc import (
    IMAGE_EXTENSIONS,
    annotation_ids,
    discover_classes,
    load_voc_annotations,
    read_image_set,
)

# Per image-set file, how many missing ids are named before summarising the rest.
_MAX_NAMED = 20
# The network input validation assumes unless told: the detector's defaults (the paper's).
DEFAULT_MIN_SIZE = DetectorConfig.min_size
DEFAULT_MAX_SIZE = DetectorConfig.max_size
# The image sets a VOC pipeline trains and tests on unless told.
DEFAULT_SPLITS = {"voc": ("trainval", "test"), "flat": ("train", "test")}


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


def _file_identity(path: Path) -> tuple:
    """What makes two image paths one file: device and inode (symbolic and hard links alike)."""
    try:
        status = os.stat(path)
    except OSError:  # missing files are reported elsewhere; compare them by name
        return ("path", os.path.realpath(path))
    return ("inode", status.st_dev, status.st_ino)


def _file_digest(path: Path) -> str | None:
    hasher = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(chunk)
    except OSError:
        return None
    return hasher.hexdigest()


def _shared_images(first: DetectionDataset, second: DetectionDataset) -> list[tuple[ImageRecord, ImageRecord, str]]:
    """``(record of first, record of second, how)`` for images of ``second`` that are images of ``first``.

    ``how`` is "the same file as" (one inode: the same path, or linked) or "a byte-identical
    copy of". Only files of equal size are hashed, so the check costs a ``stat`` per image.
    """
    by_identity = {_file_identity(r.path): r for r in first.records}
    shared = []
    rest = []
    for record in second.records:
        twin = by_identity.get(_file_identity(record.path))
        if twin is not None:
            if twin.image_id != record.image_id:  # equal ids are reported as such
                shared.append((twin, record, "the same file as"))
        else:
            rest.append(record)
    sizes: dict[int, list] = {}
    for record in first.records:
        try:
            sizes.setdefault(os.stat(record.path).st_size, []).append(record)
        except OSError:
            continue
    digests: dict[Path, str | None] = {}

    def digest(path: Path) -> str | None:
        if path not in digests:
            digests[path] = _file_digest(path)
        return digests[path]

    for record in rest:
        try:
            candidates = sizes.get(os.stat(record.path).st_size, [])
        except OSError:
            continue
        mine = digest(record.path) if candidates else None
        for twin in candidates:
            if mine is not None and digest(twin.path) == mine and twin.image_id != record.image_id:
                shared.append((twin, record, "a byte-identical copy of"))
                break
    return shared


def split_problems(splits: Mapping[str, DetectionDataset], source: Path | str) -> list[str]:
    """Problems between the splits of one pipeline: empty ones, shared ids, shared images.

    ``splits`` maps a split's name (``trainval``, ``test``) to its records; every pair
    must be disjoint, by id and by image (one file under two ids, or a byte-identical
    copy). ``source`` (the dataset root) starts each message.
    """
    problems: list[str] = []
    for name, dataset in splits.items():
        if not dataset.records:
            problems.append(f"{source}: split {name!r} has no images")
        elif not any(not obj.difficult for record in dataset.records for obj in record.objects):
            # Training drops difficult objects and the mAP leaves them out: such a split is of no use.
            problems.append(f"{source}: split {name!r} has no object that is not difficult: it can neither train nor be scored")
        problem = devkit_token_problem(name)
        if problem is not None:  # the split names the results files: comp4_det_<split>_<class>.txt
            problems.append(f"{source}: split name {name!r} {problem}: it cannot name a devkit results file")
    names = list(splits)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            ids = {r.image_id for r in splits[first].records} & {r.image_id for r in splits[second].records}
            if ids:
                problems.append(
                    f"{source}: splits {first!r} and {second!r} share {len(ids)} image id(s), e.g. {sorted(ids)[:3]}"
                )
            shared = _shared_images(splits[first], splits[second])
            if shared:
                a, b, how = shared[0]
                problems.append(
                    f"{source}: splits {first!r} and {second!r} share {len(shared)} image(s) under different ids,"
                    f" e.g. {b.path} ({b.image_id!r} in {second!r}) is {how} {a.path} ({a.image_id!r} in {first!r})"
                )
    return problems


def record_problems(
    dataset: DetectionDataset,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    decode_images: bool = True,
) -> list[str]:
    """Per-image problems that hold whatever reader made the records (COCO's included).

    Unknown classes, boxes outside the image, ids and class names that no results
    file can hold, images too small or too thin for the network input of
    ``min_size``/``max_size``, two records naming one image file, and (with
    ``decode_images``) images that do not decode to their annotated size.
    """
    problems: list[str] = []
    _check_records(dataset, problems, decode_images)
    for name in dataset.classes:
        problem = devkit_token_problem(name)
        if problem is not None:
            problems.append(f"{dataset.root}: class name {name!r} {problem}: it cannot name a devkit results file")
    owner: dict[tuple, str] = {}
    for record in dataset.records:
        problem = devkit_token_problem(record.image_id)
        if problem is not None:
            problems.append(
                f"{record.path}: image id {record.image_id!r} {problem}: it cannot be written in a devkit results line"
            )
        key = _file_identity(record.path)
        if key in owner:
            problems.append(f"{record.path}: image file named by two annotations, ids {owner[key]!r} and {record.image_id!r}")
        else:
            owner[key] = record.image_id
        problems.extend(_size_problems(record.path, record.width, record.height, min_size, max_size))
    return problems


def _size_problems(path: Path, width: int, height: int, min_size: int, max_size: int) -> list[str]:
    if min(width, height) < MIN_IMAGE_SIDE:
        return [
            f"{path}: image of {width}x{height} pixels is too small: a side under {MIN_IMAGE_SIDE:g} pixels"
            " keeps no proposal (smaller ones are dropped)"
        ]
    scale = compute_scale(height, width, min_size, max_size)
    input_h, input_w = resized_size(height, width, scale)
    if min(input_h, input_w) < MIN_INPUT_SIDE:
        return [
            f"{path}: image of {width}x{height} pixels is too thin: resized to the network input"
            f" (min_size {min_size}, max_size {max_size}) it becomes {input_w}x{input_h},"
            f" a side under {MIN_INPUT_SIDE} pixels"
        ]
    return []


def pipeline_problems(
    splits: Mapping[str, DetectionDataset],
    source: Path | str,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    decode_images: bool = True,
) -> list[str]:
    """Everything that would stop or mislead a stage using these splits (``prepare_data`` runs this).

    ``splits``: split name -> records, e.g. ``{"trainval": ..., "test": ...}``. Each
    problem is one line naming the file (or the dataset root) and what is wrong;
    an empty list means the pipeline can use the data.
    """
    problems = split_problems(splits, source)
    for dataset in splits.values():
        problems.extend(record_problems(dataset, min_size=min_size, max_size=max_size, decode_images=decode_images))
    return list(dict.fromkeys(problems))


def _subset(dataset: DetectionDataset, image_ids: Sequence[str]) -> DetectionDataset:
    by_id = {record.image_id: record for record in dataset.records}
    records = [by_id[i] for i in image_ids if i in by_id]
    return DetectionDataset(root=dataset.root, classes=dataset.classes, records=records)


def _pipeline_splits(
    root: Path,
    layout: str,
    dataset: DetectionDataset,
    train_split: str,
    test_split: str,
    kwargs: Mapping[str, Any],
    problems: list[str],
) -> dict[str, DetectionDataset]:
    """The train and test splits of an everything-loaded dataset, as the pipeline would read them.

    A VOC image set that does not exist is a problem when it was named, a note when defaulted.
    """
    if layout == "voc":
        splits = {}
        for name in (train_split, test_split):
            path = root / "ImageSets" / "Main" / f"{name}.txt"
            if not path.is_file():
                problems.append(f"{path}: image set for split {name!r} not found")
                continue
            try:
                splits[name] = _subset(dataset, read_image_set(path))
            except DatasetError:
                continue  # reported by the image-set check
        return splits
    if layout == "flat":
        ids = [record.image_id for record in dataset.records]
        options = {k: kwargs[k] for k in ("test_fraction", "seed") if k in kwargs}
        return {name: _subset(dataset, split_ids(ids, name, **options)) for name in (train_split, test_split)}
    return {}


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
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    train_split: str | None = None,
    test_split: str | None = None,
    **kwargs: Any,
) -> ValidationReport:
    """Check a dataset and collect every problem and fix-up.

    ``split=None`` checks everything: for ``voc`` all annotation files plus every
    image-set file, for ``flat`` the ``all`` split, for ``coco`` the whole file;
    and for ``voc``/``flat`` that ``train_split`` and ``test_split`` (default
    ``trainval``/``test``, flat ``train``/``test``) are non-empty and disjoint.
    ``decode_images`` fully decodes each image (finds truncated files).
    ``min_size``/``max_size``: the network input the images must resize to
    (``data.input`` of params.yaml; default the detector's 600/1000).
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
        report.problems.extend(record_problems(dataset, min_size=min_size, max_size=max_size, decode_images=decode_images))
        if split is not None and layout != "coco":
            report.problems.extend(split_problems({split: dataset}, root))
        elif layout in DEFAULT_SPLITS:
            default_train, default_test = DEFAULT_SPLITS[layout]
            named = train_split is not None or test_split is not None
            missing: list[str] = []
            pair = _pipeline_splits(
                root, layout, dataset, train_split or default_train, test_split or default_test, kwargs, missing
            )
            (report.problems if named else report.notes).extend(
                line if named else f"{line} (the default; --train-split/--test-split name others)" for line in missing
            )
            if (train_split or default_train) == (test_split or default_test):
                report.problems.append(f"{root}: the train and test split are both {train_split or default_train!r}")
            report.problems.extend(split_problems(pair, root))
        else:  # coco: the file is the split
            report.problems.extend(split_problems({split or "annotations": dataset}, root))
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
