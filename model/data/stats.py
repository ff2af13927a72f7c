"""Dataset statistics that the paper's findings depend on (``python -m model.data stats``).

What it measures, for one split, at the network input the pipeline would use:

- **objects per image** (all objects and non-``difficult`` ones);
- **box sizes**: ``sqrt(w * h)`` in pixels, and in stride-16 feature cells after the
  image is resized as :func:`model.data.transforms.compute_scale` resizes it (how many
  cells of the shared conv features an object covers), with quantiles and the number of
  octaves between the 5th and 95th percentile;
- **truncated / occluded / difficult** fractions (the VOC flags; ``occluded`` exists
  in VOC2010+ files and in the synthetic set, so it reads 0 where no file has it);
- **class balance**: objects per class and the most / least frequent ratio;
- **colour cues** (needs the pixels): how well colour alone separates objects from
  background and tells the classes apart. ``objectness_from_colour`` is the accuracy
  of the best per-colour classifier of "inside a ground-truth box" vs "outside every
  box" with equal priors (0.5: colour says nothing; 1.0: colour alone finds the
  objects); ``class_from_colour`` is the accuracy of predicting a box's class from its
  mean colour (quantised, fitted on the even-numbered images, scored on the odd ones),
  beside ``class_majority``, the share of the most frequent class (chance).

Everything is counted exactly from the annotations (and pixels); nothing is sampled.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from model.data.images import load_image_rgb
from model.data.records import DetectionDataset
from model.data.transforms import compute_scale

FEATURE_STRIDE = 16
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# Colour quantisation: 4 levels a channel (64 bins) for pixels and for a box's mean colour:
# few enough bins that a few dozen images fill them (sparse bins overstate separability).
PIXEL_LEVELS = 4
MEAN_COLOUR_LEVELS = 4


@dataclass(frozen=True)
class ColourCues:
    objectness_from_colour: float
    class_from_colour: float
    class_majority: float


@dataclass(frozen=True)
class DatasetStats:
    """The statistics of one split; sizes are ``sqrt(w * h)`` of non-difficult boxes."""

    images: int
    objects: int
    objects_not_difficult: int
    objects_per_image: float
    objects_per_image_not_difficult: float
    max_objects_per_image: int
    input_size: tuple[int, int]
    size_px_quantiles: dict[str, float]
    size_cells_quantiles: dict[str, float]
    size_octaves_p5_p95: float
    truncated_fraction: float
    occluded_fraction: float
    difficult_fraction: float
    class_counts: dict[str, int]
    class_imbalance: float
    colour: ColourCues | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {f"p{round(q * 100)}": float("nan") for q in QUANTILES}
    return {f"p{round(q * 100)}": float(np.quantile(values, q)) for q in QUANTILES}


def _colour_cues(dataset: DetectionDataset) -> ColourCues:
    """See the module docstring; reads every image of ``dataset`` once."""
    inside_hist = np.zeros(PIXEL_LEVELS**3, dtype=np.int64)
    outside_hist = np.zeros(PIXEL_LEVELS**3, dtype=np.int64)
    fit: list[tuple[int, str]] = []
    held_out: list[tuple[int, str]] = []
    for index, record in enumerate(dataset.records):
        pixels = load_image_rgb(record.path)
        levels = pixels.astype(np.int64) * PIXEL_LEVELS // 256
        bins = (levels[..., 0] * PIXEL_LEVELS + levels[..., 1]) * PIXEL_LEVELS + levels[..., 2]
        inside = np.zeros(bins.shape, dtype=bool)
        for obj in record.objects:
            x1, y1, x2, y2 = (int(round(v)) for v in obj.box)
            inside[y1 : y2 + 1, x1 : x2 + 1] = True
            mean = pixels[y1 : y2 + 1, x1 : x2 + 1].reshape(-1, 3).mean(axis=0)
            q = np.minimum((mean * MEAN_COLOUR_LEVELS / 256).astype(np.int64), MEAN_COLOUR_LEVELS - 1)
            key = int((q[0] * MEAN_COLOUR_LEVELS + q[1]) * MEAN_COLOUR_LEVELS + q[2])
            (fit if index % 2 == 0 else held_out).append((key, obj.name))
        inside_hist += np.bincount(bins[inside], minlength=inside_hist.size)
        outside_hist += np.bincount(bins[~inside], minlength=outside_hist.size)
    p_in = inside_hist / max(int(inside_hist.sum()), 1)
    p_out = outside_hist / max(int(outside_hist.sum()), 1)
    objectness = 0.5 * float(np.maximum(p_in, p_out).sum())

    by_bin: dict[int, Counter[str]] = {}
    for key, name in fit:
        by_bin.setdefault(key, Counter())[name] += 1
    overall = Counter(name for _, name in fit)
    fallback = overall.most_common(1)[0][0] if overall else None
    # Ties broken by class name, so the figure is deterministic.
    rule = {key: min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0] for key, counts in by_bin.items()}
    correct = sum(rule.get(key, fallback) == name for key, name in held_out)
    everyone = Counter(name for _, name in held_out)
    majority = max(everyone.values()) / len(held_out) if held_out else float("nan")
    accuracy = correct / len(held_out) if held_out else float("nan")
    return ColourCues(objectness, accuracy, majority)


def dataset_stats(
    dataset: DetectionDataset, input_size: tuple[int, int] = (600, 1000), *, colour: bool = True
) -> DatasetStats:
    """The statistics of ``dataset`` resized to ``input_size = (min_side, max_side)``."""
    min_size, max_size = input_size
    sizes_px: list[float] = []
    sizes_cells: list[float] = []
    per_image: list[int] = []
    per_image_easy: list[int] = []
    truncated = occluded = difficult = 0
    classes: Counter[str] = Counter()
    for record in dataset.records:
        scale = compute_scale(record.height, record.width, min_size, max_size)
        per_image.append(len(record.objects))
        per_image_easy.append(sum(not obj.difficult for obj in record.objects))
        for obj in record.objects:
            truncated += obj.truncated
            occluded += obj.occluded
            difficult += obj.difficult
            if obj.difficult:
                continue
            classes[obj.name] += 1
            x1, y1, x2, y2 = obj.box
            side = math.sqrt((x2 - x1 + 1) * (y2 - y1 + 1))  # inclusive pixels, as everywhere
            sizes_px.append(side)
            sizes_cells.append(side * scale / FEATURE_STRIDE)
    total = sum(per_image)
    cells = np.asarray(sizes_cells, dtype=np.float64)
    octaves = float(np.log2(np.quantile(cells, 0.95) / np.quantile(cells, 0.05))) if cells.size else float("nan")
    counts = {name: classes.get(name, 0) for name in dataset.classes} or dict(classes)
    nonzero = [n for n in counts.values() if n > 0]
    return DatasetStats(
        images=len(dataset.records),
        objects=total,
        objects_not_difficult=int(sum(per_image_easy)),
        objects_per_image=total / max(len(per_image), 1),
        objects_per_image_not_difficult=sum(per_image_easy) / max(len(per_image), 1),
        max_objects_per_image=max(per_image, default=0),
        input_size=(int(min_size), int(max_size)),
        size_px_quantiles=_quantiles(np.asarray(sizes_px, dtype=np.float64)),
        size_cells_quantiles=_quantiles(cells),
        size_octaves_p5_p95=octaves,
        truncated_fraction=truncated / max(total, 1),
        occluded_fraction=occluded / max(total, 1),
        difficult_fraction=difficult / max(total, 1),
        class_counts=counts,
        class_imbalance=(max(nonzero) / min(nonzero)) if nonzero else float("nan"),
        colour=_colour_cues(dataset) if colour else None,
    )


def format_stats(stats: DatasetStats, where: str) -> str:
    """A short human-readable summary (the CLI's output)."""
    px, cells = stats.size_px_quantiles, stats.size_cells_quantiles
    lines = [
        f"dataset: {where}",
        f"images: {stats.images}   objects: {stats.objects} ({stats.objects_not_difficult} not difficult)",
        f"objects per image: {stats.objects_per_image:.2f} ({stats.objects_per_image_not_difficult:.2f} not difficult), "
        f"max {stats.max_objects_per_image}",
        f"box size sqrt(w*h), px:  " + "  ".join(f"{k} {v:.0f}" for k, v in px.items()),
        f"  in stride-16 cells at input {stats.input_size[0]}/{stats.input_size[1]}:  "
        + "  ".join(f"{k} {v:.1f}" for k, v in cells.items())
        + f"   ({stats.size_octaves_p5_p95:.1f} octaves p5..p95)",
        f"truncated {stats.truncated_fraction:.1%}   occluded {stats.occluded_fraction:.1%}   "
        f"difficult {stats.difficult_fraction:.1%}",
        "classes: " + ", ".join(f"{name} {count}" for name, count in stats.class_counts.items())
        + f"   (most/least {stats.class_imbalance:.2f})",
    ]
    if stats.colour is not None:
        c = stats.colour
        lines.append(
            f"colour cues: objectness from colour {c.objectness_from_colour:.3f} (0.5 = none, 1 = separable); "
            f"class from mean colour {c.class_from_colour:.3f} vs chance {c.class_majority:.3f}"
        )
    return "\n".join(lines)


__all__ = ["ColourCues", "DatasetStats", "dataset_stats", "format_stats", "FEATURE_STRIDE"]
