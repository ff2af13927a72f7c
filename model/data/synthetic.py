"""A deterministic synthetic detection dataset written in the VOC layout (the embedded default).

Version 2 is built to have the properties of PASCAL VOC that the paper's findings rest on,
each of which ``python -m model.data stats`` measures:

- **Colour says little.** An object is made of one to four *parts* (the shape cut by
  random lines), each with its own colour and texture, shaded by a gradient across the
  object; colours are drawn from one distribution for objects and background alike, so
  neither "is this an object?" nor "which class?" can be read off colour. Some objects
  are *camouflaged*: coloured and textured like the background right behind them, told
  apart only by their outline. Selective search, which merges colour/texture segments,
  then has to merge several unlike segments into one object and often fails, as on VOC.
- **Scenes, not flat backdrops.** The background is split into large regions (a
  "horizon", shaded), carries irregular blobs and bars textured like objects, lines,
  arcs and speckles: edges and segments everywhere that belong to no class.
- **Object statistics like VOC07's**: 1-4 objects per image (about 2.5), long sides
  log-uniform over ``object_size`` (several octaves of stride-16 cells at the network
  input), some truncated at the border, occlusion between objects and by clutter, a few
  ``difficult``.
- **Classes differ by shape only**: six shapes whose colours, parts, sizes and aspect
  ratios are drawn independently of the class.

Ground-truth boxes are measured on the rendered pixels: the tight box of each
object's *visible* pixels (the VOC guideline), so they are exact whatever the
rotation or occlusion. An object is marked ``difficult`` when less than
``DIFFICULT_VISIBLE_FRACTION`` of it is visible, when its visible box has a side
under ``DIFFICULT_MIN_SIDE`` pixels, or when it was drawn deliberately tiny; it is
``occluded`` (a VOC2010+ field) when less than ``OCCLUDED_VISIBLE_FRACTION`` is visible.

Determinism: image ``i`` draws from ``numpy.random.default_rng([seed, i])`` and
is rendered with PIL and elementwise numpy only, then saved as JPEG with a fixed
quality (or PNG) without metadata, so the same spec gives byte-identical files
on the same software stack. The splits use :func:`model.data.flat.split_ids`
(hash-based, independent of numpy).
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from model.atomic import temp_dir_beside
from model.data.flat import split_ids
from model.data.records import ObjectAnnotation

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "star")

# Bump when the rendering changes, so a cached dataset with an equal spec is regenerated.
GENERATOR_VERSION = 2
MARKER_FILE = "synthetic.json"

DIFFICULT_VISIBLE_FRACTION = 0.35
OCCLUDED_VISIBLE_FRACTION = 0.9
DIFFICULT_MIN_SIDE = 10
# Largest overlap (IoU) allowed between a new object's box and an earlier one:
# occlusion happens, but no object is placed squarely on top of another.
MAX_PLACEMENT_IOU = 0.45
TINY_SIZE = (6.0, 14.0)
# How many cut lines split an object into parts: P(0), P(1), P(2), P(3) -> 1 to 4+ parts.
PART_CUT_WEIGHTS = (0.1, 0.35, 0.35, 0.2)


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines a synthetic dataset. Sizes are pixels; ``image_size`` is ``(W, H)``.

    ``camouflage_fraction``: share of objects coloured like the background behind them;
    ``part_camouflage_fraction``: share of the other objects' parts coloured so;
    ``max_part_cuts``: at most this many lines cut an object into parts (0: one colour each);
    ``outline_fraction``: share of objects with a darker or lighter contour (real objects
    have edges; camouflaged ones always get one, or nobody could find them);
    ``structures_per_image``: background blobs and bars textured like objects.
    """

    num_images: int = 200
    image_size: tuple[int, int] = (320, 240)
    seed: int = 0
    classes: tuple[str, ...] = SHAPE_CLASSES
    objects_per_image: tuple[int, int] = (1, 4)
    object_size: tuple[float, float] = (32.0, 200.0)
    max_aspect_ratio: float = 3.0
    clutter_per_image: tuple[int, int] = (6, 16)
    structures_per_image: tuple[int, int] = (5, 12)
    camouflage_fraction: float = 0.15
    part_camouflage_fraction: float = 0.4
    max_part_cuts: int = 3
    outline_fraction: float = 0.5
    tiny_fraction: float = 0.04
    truncation_fraction: float = 0.15
    test_fraction: float = 0.25
    val_fraction: float = 0.3
    image_format: str = "jpg"
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        # Normalise sequences to tuples so specs from JSON/CLI compare equal.
        for name in ("image_size", "classes", "objects_per_image", "object_size", "clutter_per_image",
                     "structures_per_image"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        width, height = self.image_size
        if self.num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {self.num_images}")
        if width < 32 or height < 32:
            raise ValueError(f"image_size must be at least 32x32, got {width}x{height}")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be non-empty and distinct, got {self.classes}")
        unknown = [name for name in self.classes if name not in SHAPE_CLASSES]
        if unknown:
            raise ValueError(f"no renderer for classes {unknown}; choose from {SHAPE_CLASSES}")
        low, high = self.objects_per_image
        if not 1 <= low <= high:
            raise ValueError(f"objects_per_image must be 1 <= min <= max, got {self.objects_per_image}")
        small, large = self.object_size
        if not 4 <= small <= large:
            raise ValueError(f"object_size must be 4 <= min <= max, got {self.object_size}")
        if not 0 <= self.max_part_cuts <= len(PART_CUT_WEIGHTS) - 1:
            raise ValueError(f"max_part_cuts must lie in 0..{len(PART_CUT_WEIGHTS) - 1}, got {self.max_part_cuts}")
        if self.max_aspect_ratio < 1:
            raise ValueError(f"max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}")
        for name in ("clutter_per_image", "structures_per_image"):
            c_low, c_high = getattr(self, name)
            if not 0 <= c_low <= c_high:
                raise ValueError(f"{name} must be 0 <= min <= max, got {getattr(self, name)}")
        for name in ("camouflage_fraction", "part_camouflage_fraction", "outline_fraction", "tiny_fraction", "truncation_fraction",
                     "test_fraction", "val_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be 'jpg' or 'png', got {self.image_format!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must lie in 1..100, got {self.jpeg_quality}")

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SyntheticSpec:
        return cls(**data)


# --------------------------------------------------------------------------- drawing


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int, channels: int) -> np.ndarray:
    """Low-frequency noise ``[H, W, C]`` float32 in about -1..1: a coarse grid, bilinearly upsampled.

    Separable and elementwise (no BLAS), so results never depend on threading.
    """
    grid = rng.standard_normal(size=(cells + 1, cells + 1, channels), dtype=np.float32)

    def axis(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = np.linspace(0.0, cells, n, dtype=np.float32)
        low = np.minimum(np.floor(position).astype(np.int64), cells - 1)
        return low, low + 1, position - low

    y0, y1, fy = axis(height)
    x0, x1, fx = axis(width)
    fx = fx[None, :, None]
    rows = grid[:, x0] * (1 - fx) + grid[:, x1] * fx  # [cells + 1, W, C]
    fy = fy[:, None, None]
    return rows[y0] * (1 - fy) + rows[y1] * fy


def _stripes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A ``[H, W]`` stripe pattern in -1..1 with random period and angle."""
    period = rng.uniform(4.0, 16.0)
    angle = rng.uniform(0.0, math.pi)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    phase = (xs * np.float32(math.cos(angle)) + ys * np.float32(math.sin(angle))) / np.float32(period)
    # Square wave from the fractional phase: exact, unlike sign(sin(.)) near zero.
    return np.where(phase - np.floor(phase) < 0.5, np.float32(1.0), np.float32(-1.0))


def _unit_polygon(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Vertices ``[V, 2]`` of a shape around the origin, randomly rotated."""
    if kind == "triangle":
        angles = np.deg2rad([90.0, 210.0, 330.0])
        points = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        rotation = rng.uniform(0.0, 2 * math.pi)
    elif kind == "star":
        inner = rng.uniform(0.38, 0.5)
        angles = np.deg2rad(90.0 + 36.0 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        rotation = rng.uniform(0.0, 2 * math.pi)
    elif kind == "cross":
        a = rng.uniform(0.17, 0.3)  # half the arm thickness, arms reach 1
        points = np.array(
            [(a, 1), (a, a), (1, a), (1, -a), (a, -a), (a, -1), (-a, -1), (-a, -a), (-1, -a), (-1, a), (-a, a), (-a, 1)],
            dtype=np.float64,
        )
        rotation = rng.uniform(0.0, math.pi / 2)
    else:
        raise ValueError(kind)
    c, s = math.cos(rotation), math.sin(rotation)
    return points @ np.array([[c, s], [-s, c]])


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[float, float, float, float], rng: np.random.Generator) -> None:
    """Fill ``kind`` into ``box = (x0, y0, x1, y1)`` (inclusive pixel corners) on a mask."""
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=255)
    elif kind == "square":
        draw.rectangle((x0, y0, x1, y1), fill=255)
    elif kind == "ring":
        draw.ellipse((x0, y0, x1, y1), fill=255)
        thickness = rng.uniform(0.16, 0.3) * min(x1 - x0, y1 - y0)
        if min(x1 - x0, y1 - y0) - 2 * thickness >= 2:
            draw.ellipse((x0 + thickness, y0 + thickness, x1 - thickness, y1 - thickness), fill=0)
    else:
        points = _unit_polygon(kind, rng)
        low = points.min(axis=0)
        span = points.max(axis=0) - low
        # Stretch the rotated polygon so its extremes touch all four sides of the box.
        scaled = (points - low) / span * np.array([x1 - x0, y1 - y0]) + np.array([x0, y0])
        draw.polygon([(float(x), float(y)) for x, y in scaled], fill=255)


def _mask(width: int, height: int, paint: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    paint(ImageDraw.Draw(canvas))
    return np.asarray(canvas) > 127


def _fill(rng: np.random.Generator, height: int, width: int, colour: np.ndarray) -> np.ndarray:
    """A ``[H, W, 3]`` float32 fill: solid with grain, two-colour stripes, or a shaded blotchy fill."""
    style = rng.random()
    fill = np.empty((height, width, 3), dtype=np.float32)
    fill[:] = colour.astype(np.float32)
    if style < 0.25:
        other = np.clip(colour + rng.uniform(-90.0, 90.0, size=3), 0, 255).astype(np.float32)
        fill[_stripes(rng, height, width) > 0] = other
    elif style < 0.5:
        fill += _smooth_field(rng, height, width, int(rng.integers(2, 6)), 3) * np.float32(rng.uniform(10.0, 35.0))
    grain = np.float32(rng.uniform(0.0, 10.0))
    fill += rng.standard_normal(size=(height, width, 1), dtype=np.float32) * grain
    return fill


def _clutter(rng: np.random.Generator, width: int, height: int) -> Callable[[ImageDraw.ImageDraw], None]:
    """A random distractor (line, arc, scribble, speckles or an irregular blob) as a mask painter."""
    kind = int(rng.integers(0, 5))
    if kind == 0:
        points = [(float(rng.uniform(0, width)), float(rng.uniform(0, height))) for _ in range(2)]
        line_width = int(rng.integers(1, 5))
        return lambda d: d.line(points, fill=255, width=line_width)
    if kind == 1:
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(10, 0.5 * min(width, height))
        start = float(rng.uniform(0, 360))
        end = start + float(rng.uniform(40, 200))
        arc_width = int(rng.integers(1, 4))
        return lambda d: d.arc((cx - r, cy - r, cx + r, cy + r), start, end, fill=255, width=arc_width)
    if kind == 2:
        count = int(rng.integers(3, 7))
        start_x, start_y = rng.uniform(0, width), rng.uniform(0, height)
        steps = rng.normal(0, 25, size=(count, 2)).cumsum(axis=0)
        points = [(float(start_x + dx), float(start_y + dy)) for dx, dy in steps]
        line_width = int(rng.integers(1, 4))
        return lambda d: d.line(points, fill=255, width=line_width, joint="curve")
    if kind == 3:
        # A lumpy "potato": shape-like clutter that belongs to no class. Evenly spread
        # angles with jittered radii, so it never degenerates into a triangle-like sliver.
        count = int(rng.integers(14, 22))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(5.0, 30.0)
        angles = (np.arange(count) + rng.uniform(-0.3, 0.3, size=count)) * (2 * math.pi / count)
        radii = radius * rng.uniform(0.6, 1.0, size=count)
        blob = [(float(cx + r * math.cos(a)), float(cy + r * math.sin(a))) for a, r in zip(angles, radii)]
        return lambda d: d.polygon(blob, fill=255)
    centres = rng.uniform(0, 1, size=(int(rng.integers(5, 25)), 2)) * np.array([width, height])
    radii = rng.uniform(0.5, 2.5, size=len(centres))

    def speckles(d: ImageDraw.ImageDraw) -> None:
        for (x, y), r in zip(centres, radii):
            d.ellipse((x - r, y - r, x + r, y + r), fill=255)

    return speckles


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area_a + area_b - inter)


@dataclass(frozen=True)
class _Placed:
    name: str
    box: tuple[float, float, float, float]  # inclusive pixel corners, may leave the image
    tiny: bool
    truncated: bool


def _place_objects(spec: SyntheticSpec, rng: np.random.Generator) -> list[_Placed]:
    width, height = spec.image_size
    low, high = spec.objects_per_image
    # A long side beyond 90 % of the short image side could not be placed at 3:1.
    largest = min(spec.object_size[1], 0.9 * min(width, height))
    smallest = min(spec.object_size[0], largest)
    placed: list[_Placed] = []
    for _ in range(int(rng.integers(low, high + 1))):
        name = spec.classes[int(rng.integers(0, len(spec.classes)))]
        tiny = bool(rng.random() < spec.tiny_fraction)
        if tiny:
            long_side = rng.uniform(*TINY_SIZE)
        else:
            long_side = math.exp(rng.uniform(math.log(smallest), math.log(largest)))
        ratio = math.exp(rng.uniform(-math.log(spec.max_aspect_ratio), math.log(spec.max_aspect_ratio)))  # h / w
        box_w, box_h = (long_side / ratio, long_side) if ratio >= 1 else (long_side, long_side * ratio)
        box_w, box_h = max(round(box_w), 4), max(round(box_h), 4)
        may_truncate = bool(rng.random() < spec.truncation_fraction)
        for _attempt in range(15):
            if may_truncate:
                x0 = rng.uniform(-box_w / 3, width - 2 * box_w / 3)
                y0 = rng.uniform(-box_h / 3, height - 2 * box_h / 3)
            else:
                x0 = rng.uniform(0, width - box_w)
                y0 = rng.uniform(0, height - box_h)
            box = (float(round(x0)), float(round(y0)), float(round(x0)) + box_w - 1, float(round(y0)) + box_h - 1)
            if all(_iou(box, other.box) <= MAX_PLACEMENT_IOU for other in placed):
                truncated = box[0] < 0 or box[1] < 0 or box[2] > width - 1 or box[3] > height - 1
                placed.append(_Placed(name, box, tiny, truncated))
                break
    return placed


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """One colour for objects, parts and background alike: colour is no cue to objectness or class."""
    return rng.uniform(15.0, 240.0, size=3)


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(height, dtype=np.float32)[:, None], np.arange(width, dtype=np.float32)[None, :]


def _scene_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A scene-like background ``[H, W, 3]`` float: one or two large shaded regions, blotches, stripes.

    Two regions split by a random line (a horizon, a table edge) give long edges that
    belong to no object, and every region is textured like an object part.
    """
    image = _fill(rng, height, width, _random_colour(rng))
    if rng.random() < 0.7:
        ys, xs = _grid(height, width)
        # Mostly a horizon (a near-horizontal split), sometimes a wall corner (near-vertical).
        theta = rng.uniform(-0.6, 0.6) + (0.0 if rng.random() < 0.3 else math.pi / 2)
        c, s = math.cos(theta), math.sin(theta)
        corners = [x * c + y * s for x in (0, width - 1) for y in (0, height - 1)]
        offset = min(corners) + rng.uniform(0.3, 0.7) * (max(corners) - min(corners))
        other = xs * np.float32(c) + ys * np.float32(s) > np.float32(offset)
        second = _fill(rng, height, width, _random_colour(rng))
        image[other] = second[other]
    # Broad shading (light falls unevenly), then finer blotches, sometimes stripes.
    image *= 1.0 + _smooth_field(rng, height, width, int(rng.integers(1, 3)), 1) * np.float32(rng.uniform(0.05, 0.25))
    image += _smooth_field(rng, height, width, int(rng.integers(4, 12)), 3) * np.float32(rng.uniform(5.0, 25.0))
    if rng.random() < 0.25:
        image += _stripes(rng, height, width)[:, :, None] * np.float32(rng.uniform(4.0, 14.0))
    return image


def _structure(rng: np.random.Generator, width: int, height: int) -> Callable[[ImageDraw.ImageDraw], None]:
    """A background structure sized like an object: an irregular blob or a long bar (no class's shape)."""
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    size = math.exp(rng.uniform(math.log(16.0), math.log(0.6 * min(width, height))))
    if rng.random() < 0.6:
        # Strongly jittered radii: lumpy, never a circle, square or star.
        count = int(rng.integers(7, 13))
        angles = (np.arange(count) + rng.uniform(-0.35, 0.35, size=count)) * (2 * math.pi / count)
        radii = 0.5 * size * rng.uniform(0.35, 1.0, size=count)
        blob = [(float(cx + r * math.cos(a)), float(cy + r * math.sin(a))) for a, r in zip(angles, radii)]
        return lambda d: d.polygon(blob, fill=255)
    # A bar far longer than any object's 3:1: a pole, a shelf, a table leg.
    thickness = max(3.0, size / rng.uniform(5.0, 12.0))
    angle = rng.uniform(0, math.pi)
    dx, dy = size * math.cos(angle), size * math.sin(angle)
    points = [(float(cx - dx), float(cy - dy)), (float(cx + dx), float(cy + dy))]
    return lambda d: d.line(points, fill=255, width=int(thickness))


def _parts(rng: np.random.Generator, height: int, width: int, max_cuts: int) -> np.ndarray:
    """Part labels ``[H, W]`` int: the crop cut by 0..``max_cuts`` random lines (``PART_CUT_WEIGHTS``)."""
    ys, xs = _grid(height, width)
    labels = np.zeros((height, width), dtype=np.int64)
    weights = PART_CUT_WEIGHTS[: max_cuts + 1]
    if max_cuts < len(PART_CUT_WEIGHTS) - 1:
        weights = tuple(np.asarray(weights) / sum(weights))
    for _ in range(int(rng.choice(len(weights), p=weights))):
        px, py = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        angle = rng.uniform(0.0, math.pi)
        side = ((xs - np.float32(px)) * np.float32(math.cos(angle)) + (ys - np.float32(py)) * np.float32(math.sin(angle))) > 0
        labels = labels * 2 + side
    return labels


def _paint_object_like(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, camouflage: bool, outline: bool,
    part_camouflage: float = 0.0, max_part_cuts: int = len(PART_CUT_WEIGHTS) - 1,
) -> None:
    """Paint ``mask`` into ``image`` ``[H, W, 3]`` in place as a multi-part, shaded object.

    Each part gets its own colour and texture, or (with probability ``part_camouflage``)
    the colour of the background behind it; a camouflaged object takes the colour and
    texture of the background behind it, shifted a little, and always gets an outline.
    """
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        return
    # Work on the object's bounding crop only: objects are mostly much smaller than the image.
    crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    height, width = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    inside = mask[crop]
    behind = image[crop]
    if camouflage:
        shift = rng.normal(0.0, 1.0, size=3)
        shift *= rng.uniform(14.0, 30.0) / max(float(np.linalg.norm(shift)), 1e-6)
        fill = behind + shift.astype(np.float32)
    else:
        labels = _parts(rng, height, width, max_part_cuts)
        fill = np.empty((height, width, 3), dtype=np.float32)
        for label in np.unique(labels):
            part = labels == label
            if rng.random() < part_camouflage:
                # This part takes the colour of what lies behind it (dark trousers on a dark
                # sofa): a segmenter merges it into the background, not into the object.
                local = behind[part & inside].reshape(-1, 3)
                colour = (local.mean(axis=0) if local.size else _random_colour(rng)) + rng.normal(0.0, 8.0, size=3)
            else:
                colour = _random_colour(rng)
            fill[part] = _fill(rng, height, width, colour)[part]
    # A shading gradient across the object, as under a directional light.
    ys, xs = _grid(height, width)
    angle = rng.uniform(0.0, 2 * math.pi)
    reach = np.float32(0.5 * max(height, width))
    ramp = ((xs - width / 2) * np.float32(math.cos(angle)) + (ys - height / 2) * np.float32(math.sin(angle))) / reach
    fill *= (1.0 + np.float32(rng.uniform(0.1, 0.4)) * ramp)[:, :, None]
    if outline or camouflage:
        thickness = 3 if min(height, width) >= 40 else 2
        eroded = np.asarray(Image.fromarray(inside.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(2 * thickness - 1))) > 127
        edge = inside & ~eroded
        if rng.random() < 0.7:
            fill[edge] *= np.float32(rng.uniform(0.3, 0.6))  # darker contour
        else:
            fill[edge] += (255.0 - fill[edge]) * np.float32(rng.uniform(0.4, 0.7))  # a highlight
    behind[inside] = fill[inside]


@dataclass(frozen=True)
class SyntheticObject:
    """A rendered object: its annotation (with the VOC ``truncated`` and ``occluded`` flags)."""

    annotation: ObjectAnnotation

    @property
    def truncated(self) -> bool:
        return self.annotation.truncated


def render_synthetic_image(spec: SyntheticSpec, index: int) -> tuple[np.ndarray, list[SyntheticObject]]:
    """Image ``index`` of ``spec``: RGB ``[H, W, 3]`` uint8 and its objects (0-based boxes)."""
    width, height = spec.image_size
    rng = np.random.default_rng([int(spec.seed) & 0xFFFFFFFF, int(spec.seed) >> 32 & 0xFFFFFFFF, int(index)])
    image = _scene_background(rng, width, height)

    for _ in range(int(rng.integers(spec.structures_per_image[0], spec.structures_per_image[1] + 1))):
        mask = _mask(width, height, _structure(rng, width, height))
        _paint_object_like(image, mask, rng, camouflage=False, outline=bool(rng.random() < spec.outline_fraction))

    def paint_clutter() -> np.ndarray:
        clutter_mask = _mask(width, height, _clutter(rng, width, height))
        image[clutter_mask] = _random_colour(rng).astype(np.float32)
        return clutter_mask

    clutter_total = int(rng.integers(spec.clutter_per_image[0], spec.clutter_per_image[1] + 1))
    clutter_under = int(rng.integers(0, clutter_total + 1))
    for _ in range(clutter_under):
        paint_clutter()

    placed = _place_objects(spec, rng)
    # Large objects at the back: overlaps then hide parts of big shapes, rarely whole small ones.
    placed.sort(key=lambda p: -(p.box[2] - p.box[0] + 1) * (p.box[3] - p.box[1] + 1))
    masks: list[np.ndarray] = []
    for item in placed:
        mask = _mask(width, height, lambda d, item=item: _draw_shape(d, item.name, item.box, rng))
        camouflage = bool(rng.random() < spec.camouflage_fraction)
        outline = bool(rng.random() < spec.outline_fraction)
        _paint_object_like(image, mask, rng, camouflage=camouflage, outline=outline,
                           part_camouflage=spec.part_camouflage_fraction, max_part_cuts=spec.max_part_cuts)
        masks.append(mask)

    # Clutter drawn over the objects hides them like any occluder (a blob can cover a small shape).
    covered = np.zeros((height, width), dtype=bool)
    for _ in range(clutter_total - clutter_under):
        covered |= paint_clutter()

    image += rng.standard_normal(size=image.shape, dtype=np.float32) * np.float32(rng.uniform(2.0, 10.0))
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    objects: list[SyntheticObject] = []
    for item, mask in zip(reversed(placed), reversed(masks)):
        visible = mask & ~covered
        covered |= mask
        in_image = int(mask.sum())
        shown = int(visible.sum())
        if shown == 0:
            continue
        cols = np.flatnonzero(visible.any(axis=0))
        rows = np.flatnonzero(visible.any(axis=1))
        x1, x2, y1, y2 = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
        if x2 <= x1 or y2 <= y1:
            continue  # a sliver one pixel wide is no object anyone could annotate
        difficult = (
            item.tiny
            or shown < DIFFICULT_VISIBLE_FRACTION * in_image
            or min(x2 - x1 + 1, y2 - y1 + 1) < DIFFICULT_MIN_SIDE
        )
        annotation = ObjectAnnotation(
            item.name, (float(x1), float(y1), float(x2), float(y2)), bool(difficult),
            truncated=item.truncated, occluded=shown < OCCLUDED_VISIBLE_FRACTION * in_image,
        )
        objects.append(SyntheticObject(annotation))
    objects.reverse()  # paint order (back to front), as listed in the XML
    return pixels, objects


# --------------------------------------------------------------------------- writing


def _annotation_xml(image_id: str, filename: str, width: int, height: int, objects: list[SyntheticObject]) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = filename
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "synthetic scenes (model.data.synthetic v2)"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(width)
    ET.SubElement(size, "height").text = str(height)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "0"
    for item in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = item.annotation.name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(item.truncated))
        ET.SubElement(obj, "difficult").text = str(int(item.annotation.difficult))
        ET.SubElement(obj, "occluded").text = str(int(item.annotation.occluded))
        bndbox = ET.SubElement(obj, "bndbox")
        # VOC files are 1-based.
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), item.annotation.box):
            ET.SubElement(bndbox, tag).text = str(int(value) + 1)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"


def _save_image(pixels: np.ndarray, path: Path, spec: SyntheticSpec) -> None:
    image = Image.fromarray(pixels, mode="RGB")
    if spec.image_format == "jpg":
        image.save(path, format="JPEG", quality=spec.jpeg_quality, optimize=False, progressive=False, subsampling=0)
    else:
        image.save(path, format="PNG", optimize=False, compress_level=6)


def _marker(spec: SyntheticSpec) -> dict[str, Any]:
    return {"generator": "model.data.synthetic", "version": GENERATOR_VERSION, "spec": spec.to_dict()}


def _write_dataset(target: Path, spec: SyntheticSpec) -> None:
    annotations = target / "Annotations"
    images = target / "JPEGImages"
    main = target / "ImageSets" / "Main"
    for folder in (annotations, images, main):
        folder.mkdir(parents=True)
    width, height = spec.image_size
    ids = [f"{index + 1:06d}" for index in range(spec.num_images)]
    for index, image_id in enumerate(ids):
        pixels, objects = render_synthetic_image(spec, index)
        filename = f"{image_id}.{spec.image_format}"
        _save_image(pixels, images / filename, spec)
        (annotations / f"{image_id}.xml").write_bytes(_annotation_xml(image_id, filename, width, height, objects))
    test = split_ids(ids, "test", spec.test_fraction, spec.seed)
    trainval = split_ids(ids, "train", spec.test_fraction, spec.seed)
    # A different hash seed for the val cut, so it is not correlated with the test cut.
    val = split_ids(trainval, "test", spec.val_fraction, spec.seed + 1) if trainval else []
    train = [image_id for image_id in trainval if image_id not in set(val)]
    for split, members in (("trainval", trainval), ("test", test), ("train", train), ("val", val)):
        (main / f"{split}.txt").write_text("".join(f"{image_id}\n" for image_id in members), encoding="utf-8")
    # Written last: its presence means the generation finished.
    (target / MARKER_FILE).write_text(json.dumps(_marker(spec), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def generate_synthetic_voc(root: Path, spec: SyntheticSpec | None = None, *, overwrite: bool = False) -> Path:
    """Write the synthetic dataset of ``spec`` as a VOC root at ``root`` and return ``root``.

    The dataset is written into a temporary sibling folder and renamed into place,
    so an interrupted run never leaves a folder that looks complete. If ``root``
    already holds this exact spec (same generator version), nothing is done. A
    different existing dataset is replaced only with ``overwrite=True``, and a
    non-empty folder that is not a synthetic dataset is never replaced.
    """
    spec = spec if spec is not None else SyntheticSpec()
    root = Path(root)
    marker_path = root / MARKER_FILE
    replace = False
    if root.exists():
        if not root.is_dir():
            raise FileExistsError(f"{root}: exists and is not a folder")
        if marker_path.is_file():
            try:
                existing = json.loads(marker_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                existing = None
            if existing == _marker(spec):
                return root
            if not overwrite:
                raise FileExistsError(f"{root}: holds a synthetic dataset with another spec; pass overwrite=True to replace it")
            replace = True
        elif any(root.iterdir()):
            raise FileExistsError(f"{root}: folder is not empty and is not a synthetic dataset; refusing to replace it")
        else:
            root.rmdir()
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_dir_beside(root, ".partial")
    try:
        _write_dataset(staging, spec)
        if replace:
            retired = temp_dir_beside(root, ".old")
            retired.rmdir()
            root.rename(retired)
            staging.rename(root)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root
