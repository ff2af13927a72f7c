"""PASCAL VOC layout: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``.

VOC XML boxes are 1-based inclusive pixels; this module subtracts 1 once, on
the way in, so every record holds the library's 0-based inclusive boxes.

Annotation files are untrusted. They are parsed with defusedxml (no entity
expansion, no external entities), capped in size, and an image filename may not
leave the images folder. Problems are handled in one of two ways:

* a hard :class:`DatasetError` naming the file: unreadable/forbidden XML,
  missing or corrupt image, image size disagreeing with ``<size>``, unknown
  class (when a class list is given), missing/non-numeric box, path escape;
* a counted fix-up (one line naming the file, logged as a warning, kept in
  ``DetectionDataset.fixups``): missing ``<size>`` (read from the image
  header instead), box partly outside the image (clipped), degenerate box
  (dropped), box entirely outside the image (dropped), ``<filename>`` not
  found but ``<image id>.<ext>`` present (used instead), an object repeated
  with the same class and box (kept once, see ``records.drop_duplicate_objects``).

An ``<object>`` with more than one ``<bndbox>`` is a hard error: which box is the
object cannot be told, and taking the first would silently lose the others. So is
any other repeated single-valued element (``<name>``, ``<difficult>``, ``<xmin>``
..., ``<size>``, ``<width>``, ``<filename>``).

A box is *degenerate* when its corners coincide on an axis or are inverted
(``xmax <= xmin`` or ``ymax <= ymin`` in the file): annotation tools write the
two corners of a drag, and equal corners are a click without a drag (BCCD has
two: BloodImage_00338 and BloodImage_00343).

Loaders take ``errors``: ``None`` (default) raises at the first hard error; a
list collects every error and skips the offending image, which is how the
``validate`` CLI reports all problems at once.
"""
from __future__ import annotations

import logging
import math
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from model.data.images import image_size, not_regular_file
from model.data.records import (
    DatasetError,
    DetectionDataset,
    ImageRecord,
    ObjectAnnotation,
    drop_duplicate_objects,
)

logger = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

# Tried, in order, when <filename> is absent or names no existing file.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")

# VOC annotation files are a few KB; anything this large is not one and
# would only cost memory and time to parse.
MAX_ANNOTATION_BYTES = 8 * 1024 * 1024


def _report(errors: list[DatasetError] | None, error: DatasetError) -> None:
    """Raise ``error`` in strict mode (``errors is None``), else collect it."""
    if errors is None:
        raise error
    errors.append(error)


def check_plain_name(name: str, source: Path | str, what: str = "image id") -> str:
    """``name`` if it is a plain file name (no separators, not ``.``/``..``), else DatasetError."""
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
    ):
        raise DatasetError(f"{source}: {what} {name!r} is not a plain file name")
    return name


def read_image_set(path: Path) -> list[str]:
    """Image ids listed in an image-set file, in file order.

    Blank lines are skipped; only the first token of a line counts, so the
    per-class files (``000005 -1``) read too. Ids must be plain file names
    (they become ``Annotations/<id>.xml``), and may not repeat.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image set file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read image set ({exc})") from exc
    ids: list[str] = []
    seen: set[str] = set()
    for line_number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        image_id = check_plain_name(tokens[0], f"{path}:{line_number}")
        if image_id in seen:
            raise DatasetError(f"{path}:{line_number}: image id {image_id!r} listed twice")
        seen.add(image_id)
        ids.append(image_id)
    return ids


def read_annotation_xml(xml_path: Path) -> Element:
    """Parse an annotation file safely and return its ``<annotation>`` root element."""
    xml_path = Path(xml_path)
    try:
        status = xml_path.stat()
    except FileNotFoundError:
        raise DatasetError(f"{xml_path}: annotation file not found") from None
    except OSError as exc:
        raise DatasetError(f"{xml_path}: cannot read annotation file ({exc})") from exc
    if not stat.S_ISREG(status.st_mode):
        # A FIFO or device would block or never end.
        raise DatasetError(f"{xml_path}: annotation path is not a regular file")
    size = status.st_size
    if size > MAX_ANNOTATION_BYTES:
        raise DatasetError(f"{xml_path}: annotation file is {size} bytes, over the {MAX_ANNOTATION_BYTES} limit")
    try:
        root = SafeET.parse(str(xml_path)).getroot()
    except DefusedXmlException as exc:
        raise DatasetError(
            f"{xml_path}: forbidden XML construct ({type(exc).__name__}: entities/DTDs are not allowed)"
        ) from exc
    except ParseError as exc:
        raise DatasetError(f"{xml_path}: malformed XML ({exc})") from exc
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{xml_path}: cannot read annotation file ({exc})") from exc
    if root.tag != "annotation":
        raise DatasetError(f"{xml_path}: root element is <{root.tag}>, expected <annotation>")
    return root


def _text(element: Element, tag: str) -> str | None:
    child = element.find(tag)
    if child is None or child.text is None:
        return None
    text = child.text.strip()
    return text or None


def _check_single(element: Element, tags: Sequence[str], where: str, xml_path: Path) -> None:
    """Each of ``tags`` at most once under ``element``: a second one would be silently ignored."""
    for tag in tags:
        count = len(element.findall(tag))
        if count > 1:
            raise DatasetError(f"{xml_path}: {where} has {count} <{tag}> elements; expected at most one")


def _number(text: str | None, what: str, xml_path: Path) -> float:
    if text is None:
        raise DatasetError(f"{xml_path}: missing {what}")
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{xml_path}: {what} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise DatasetError(f"{xml_path}: {what} is not finite: {text!r}")
    return value


def _difficult(text: str | None, where: str, xml_path: Path) -> bool:
    if text is None:
        return False
    lowered = text.lower()
    if lowered in ("0", "false"):
        return False
    if lowered in ("1", "true"):
        return True
    raise DatasetError(f"{xml_path}: {where}: <difficult> must be 0 or 1, got {text!r}")


def _descriptive_flag(obj: Element, tag: str, where: str, xml_path: Path, fixups: list[str]) -> bool:
    """``<truncated>`` / ``<occluded>``: 0 or 1 when present; anything else is a counted fix-up (read as 0).

    Unlike ``difficult`` these flags only describe the data (statistics), so a tool's odd
    value is no reason to refuse a dataset.
    """
    text = _text(obj, tag)
    if text is None or text in ("0", "1"):
        return text == "1"
    fixups.append(f"{xml_path}: {where}: <{tag}> {text!r} is not 0 or 1; read as 0")
    return False


def _inside(images_dir: Path, filename: str, xml_path: Path) -> Path:
    """``images_dir / filename``, refusing names that leave ``images_dir``.

    The check is lexical (``normpath``), not ``resolve()``: DVC and other
    caches link image files to places outside the dataset, which is fine; a
    ``..`` or an absolute name in an annotation is not.
    """
    if "\x00" in filename:
        raise DatasetError(f"{xml_path}: <filename> contains a NUL byte")
    if os.path.isabs(filename) or filename.startswith(("/", "\\")):
        raise DatasetError(f"{xml_path}: <filename> {filename!r} is absolute; it must lie inside {images_dir}")
    normal = os.path.normpath(filename)
    if normal == ".." or normal.startswith(".." + os.sep) or normal == ".":
        raise DatasetError(f"{xml_path}: <filename> {filename!r} escapes the images folder {images_dir}")
    return images_dir / normal


def _locate_image(
    images_dir: Path, filename: str | None, image_id: str, xml_path: Path
) -> tuple[Path, str | None]:
    """The image file for an annotation, plus a fix-up line when a fallback name was used."""
    named = _inside(images_dir, filename, xml_path) if filename is not None else None
    if named is not None and named.is_file():
        return named, None
    # A FIFO or device under the image's name is refused, not replaced by a fallback;
    # a folder of that name (``<filename>`` without extension) may sit beside the image.
    if named is not None and (kind := not_regular_file(named)) not in (None, "a directory"):
        raise DatasetError(f"{xml_path}: image {named} is not a regular file ({kind})")
    candidates: list[Path] = []
    if named is not None and not named.suffix:
        candidates += [named.with_name(named.name + ext) for ext in IMAGE_EXTENSIONS]
    candidates += [images_dir / (image_id + ext) for ext in IMAGE_EXTENSIONS]
    for candidate in candidates:
        if candidate.is_file():
            if named is None:
                return candidate, None
            return candidate, f"{xml_path}: image {named} named by <filename> not found; used {candidate}"
        if (kind := not_regular_file(candidate)) is not None:
            raise DatasetError(f"{xml_path}: image {candidate} is not a regular file ({kind})")
    missing = named if named is not None else images_dir / (image_id + IMAGE_EXTENSIONS[0])
    raise DatasetError(f"{xml_path}: image file {missing} not found")


def parse_voc_annotation(
    xml_path: Path,
    images_dir: Path | None,
    classes: Sequence[str] | None = None,
    *,
    check_image: bool = True,
) -> tuple[ImageRecord, list[str]]:
    """Read one VOC XML file into an :class:`ImageRecord` with 0-based boxes.

    Returns ``(record, fixups)``; each fix-up line names ``xml_path``. With
    ``images_dir=None`` (e.g. evaluation with annotations only) the image is not
    looked at and ``record.path`` is the conventional ``../JPEGImages/<filename>``
    beside the annotations folder, unchecked. ``check_image`` (with an
    ``images_dir``) reads the image header to confirm it exists, is an image,
    and matches ``<size>``. Raises :class:`DatasetError` on hard errors.
    """
    xml_path = Path(xml_path)
    image_id = xml_path.stem
    root = read_annotation_xml(xml_path)
    fixups: list[str] = []

    _check_single(root, ("filename", "size"), "<annotation>", xml_path)
    filename = _text(root, "filename")
    if images_dir is not None:
        images_dir = Path(images_dir)
        if check_image:
            image_path, fixup = _locate_image(images_dir, filename, image_id, xml_path)
            if fixup:
                fixups.append(fixup)
        else:
            image_path = _inside(images_dir, filename or image_id + ".jpg", xml_path)
    else:
        guess_dir = xml_path.parent.parent / "JPEGImages"
        image_path = _inside(guess_dir, filename or image_id + ".jpg", xml_path)

    size = root.find("size")
    if size is not None:
        _check_single(size, ("width", "height"), "<size>", xml_path)
    width_text = _text(size, "width") if size is not None else None
    height_text = _text(size, "height") if size is not None else None
    width = _number(width_text, "<size><width>", xml_path) if width_text is not None else 0.0
    height = _number(height_text, "<size><height>", xml_path) if height_text is not None else 0.0
    if width != int(width) or height != int(height) or width < 0 or height < 0:
        raise DatasetError(f"{xml_path}: <size> {width_text}x{height_text} is not a pair of whole pixel counts")
    width, height = int(width), int(height)
    has_images = images_dir is not None and check_image
    if width == 0 or height == 0:
        # LabelImg writes 0 when it did not know; the image header knows.
        if not has_images:
            raise DatasetError(f"{xml_path}: missing or zero <size> and no image to read the size from")
        width, height = image_size(image_path)
        fixups.append(f"{xml_path}: missing or zero <size>; used the image's size {width}x{height}")
    elif has_images:
        actual = image_size(image_path)
        if actual != (width, height):
            raise DatasetError(
                f"{xml_path}: <size> says {width}x{height} but image {image_path} is {actual[0]}x{actual[1]}"
            )

    objects: list[ObjectAnnotation] = []
    object_labels: list[str] = []
    for index, obj in enumerate(root.findall("object")):
        where = f"object {index}"
        _check_single(obj, ("name",), where, xml_path)
        name = _text(obj, "name")
        if name is None:
            raise DatasetError(f"{xml_path}: {where} has no <name>")
        where = f"object {index} ({name})"
        _check_single(obj, ("difficult",), where, xml_path)
        if classes is not None and name not in classes:
            raise DatasetError(f"{xml_path}: {where}: unknown class {name!r}; known classes: {', '.join(classes)}")
        difficult = _difficult(_text(obj, "difficult"), where, xml_path)
        box_elements = obj.findall("bndbox")
        if not box_elements:
            raise DatasetError(f"{xml_path}: {where} has no <bndbox>")
        if len(box_elements) > 1:
            # Which one is the object? Taking the first would silently drop the others.
            raise DatasetError(f"{xml_path}: {where} has {len(box_elements)} <bndbox> elements; an object has one box")
        box_element = box_elements[0]
        _check_single(box_element, ("xmin", "ymin", "xmax", "ymax"), f"{where} <bndbox>", xml_path)
        xmin, ymin, xmax, ymax = (
            _number(_text(box_element, tag), f"{where} <{tag}>", xml_path) for tag in ("xmin", "ymin", "xmax", "ymax")
        )
        file_box = f"({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g})"
        if xmax <= xmin or ymax <= ymin:
            kind = "zero-area" if (xmax == xmin or ymax == ymin) else "inverted"
            fixups.append(f"{xml_path}: {where}: dropped {kind} box {file_box} (1-based, as in the file)")
            continue
        # The one place where VOC's 1-based pixels become the library's 0-based ones.
        x1, y1, x2, y2 = xmin - 1.0, ymin - 1.0, xmax - 1.0, ymax - 1.0
        if x1 > width - 1 or y1 > height - 1 or x2 < 0 or y2 < 0:
            fixups.append(f"{xml_path}: {where}: dropped box {file_box} lying outside the {width}x{height} image")
            continue
        clipped = (
            min(max(x1, 0.0), width - 1.0),
            min(max(y1, 0.0), height - 1.0),
            min(max(x2, 0.0), width - 1.0),
            min(max(y2, 0.0), height - 1.0),
        )
        if clipped != (x1, y1, x2, y2):
            fixups.append(
                f"{xml_path}: {where}: box {file_box} (1-based) clipped to the {width}x{height} image"
            )
        truncated = _descriptive_flag(obj, "truncated", where, xml_path, fixups)
        occluded = _descriptive_flag(obj, "occluded", where, xml_path, fixups)
        objects.append(
            ObjectAnnotation(name=name, box=clipped, difficult=difficult, truncated=truncated, occluded=occluded)
        )
        object_labels.append(f"object {index}")

    unique, repeats = drop_duplicate_objects(objects, object_labels, str(xml_path))
    fixups.extend(repeats)
    for line in fixups:
        logger.warning("fix-up: %s", line)
    record = ImageRecord(image_id=image_id, path=image_path, width=width, height=height, objects=unique)
    return record, fixups


def _check_classes(classes: Sequence[str] | None) -> tuple[str, ...] | None:
    if classes is None:
        return None
    names = tuple(classes)
    if len(set(names)) != len(names):
        raise ValueError(f"class list has duplicates: {names}")
    if not names:
        raise ValueError("class list is empty")
    return names


def load_voc_annotations(
    annotations_dir: Path,
    image_ids: Sequence[str],
    images_dir: Path | None = None,
    classes: Sequence[str] | None = None,
    *,
    errors: list[DatasetError] | None = None,
    check_images: bool = True,
) -> DetectionDataset:
    """Records for ``image_ids`` from ``annotations_dir/<id>.xml``, in the given order.

    ``images_dir=None``: annotations only, images are neither required nor read.
    ``classes=None``: the sorted set of class names found in these annotations.
    ``errors``: see the module docstring (``None`` raises, a list collects).
    """
    annotations_dir = Path(annotations_dir)
    try:
        names = _check_classes(classes)
    except ValueError as error:  # e.g. no object of any class in any annotation file
        raise DatasetError(f"{annotations_dir}: {error}") from None
    records: list[ImageRecord] = []
    fixups: list[str] = []
    for image_id in image_ids:
        try:
            check_plain_name(image_id, annotations_dir)
            record, record_fixups = parse_voc_annotation(
                annotations_dir / f"{image_id}.xml", images_dir, names, check_image=check_images
            )
        except DatasetError as error:
            _report(errors, error)
            continue
        records.append(record)
        fixups.extend(record_fixups)
    if names is None:
        names = tuple(sorted({obj.name for record in records for obj in record.objects}))
    return DetectionDataset(root=annotations_dir.parent, classes=names, records=records, fixups=fixups)


def annotation_ids(annotations_dir: Path) -> list[str]:
    """Sorted ids (file stems) of the ``*.xml`` files in ``annotations_dir``."""
    annotations_dir = Path(annotations_dir)
    if not annotations_dir.is_dir():
        raise DatasetError(f"{annotations_dir}: annotations folder not found")
    return sorted(path.stem for path in annotations_dir.glob("*.xml") if path.is_file())


def discover_classes(root: Path, *, errors: list[DatasetError] | None = None) -> tuple[str, ...]:
    """Sorted class names over *all* annotation files, so every split gets the same list.

    ``root`` is a VOC root (with ``Annotations/``) or an annotations folder itself.
    """
    root = Path(root)
    annotations_dir = root / "Annotations" if (root / "Annotations").is_dir() else root
    found: set[str] = set()
    for image_id in annotation_ids(annotations_dir):
        xml_path = annotations_dir / f"{image_id}.xml"
        try:
            element = read_annotation_xml(xml_path)
        except DatasetError as error:
            _report(errors, error)
            continue
        for obj in element.findall("object"):
            name = _text(obj, "name")
            if name is not None:
                found.add(name)
    return tuple(sorted(found))


def voc_image_set_path(root: Path, split: str) -> Path:
    """``root/ImageSets/Main/<split>.txt``, with a clear error listing the splits that exist."""
    root = Path(root)
    check_plain_name(split, root, what="split")
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        main = root / "ImageSets" / "Main"
        available = sorted(p.stem for p in main.glob("*.txt")) if main.is_dir() else []
        raise DatasetError(f"{path}: image set for split {split!r} not found; available: {available or 'none'}")
    return path


def load_voc(
    root: Path,
    split: str,
    classes: Sequence[str] | None = None,
    *,
    errors: list[DatasetError] | None = None,
    check_images: bool = True,
) -> DetectionDataset:
    """One split of a VOC-layout dataset at ``root``.

    ``classes=None`` uses :func:`discover_classes` over all annotations, so a
    train and a test split of the same root get the same class list (and labels).
    """
    root = Path(root)
    if not (root / "Annotations").is_dir():
        raise DatasetError(f"{root}: not a VOC dataset root (no Annotations/ folder)")
    image_ids = read_image_set(voc_image_set_path(root, split))
    scan_errors: list[DatasetError] | None = None if errors is None else []
    names = discover_classes(root, errors=scan_errors) if classes is None else classes
    dataset = load_voc_annotations(
        root / "Annotations", image_ids, root / "JPEGImages", names, errors=errors, check_images=check_images
    )
    merge_errors(errors, scan_errors)
    dataset.root = root
    return dataset


def merge_errors(errors: list[DatasetError] | None, more: list[DatasetError] | None) -> None:
    """Append ``more`` to ``errors``, skipping files already reported (the class scan reads them too)."""
    if errors is None or not more:
        return
    seen = {str(error) for error in errors}
    errors.extend(error for error in more if str(error) not in seen)


def training_objects(record: ImageRecord) -> tuple[ObjectAnnotation, ...]:
    """The objects a trainer uses: everything except ``difficult`` ones (the paper drops them)."""
    return tuple(obj for obj in record.objects if not obj.difficult)
