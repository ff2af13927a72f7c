"""Selective search proposals (Uijlings et al. 2013) through OpenCV's ``ximgproc`` module.

The paper's Fast R-CNN baselines and the "SS train" ablations train the detector on about
2000 selective-search boxes per image ("fast" mode). OpenCV ships an implementation in
``opencv-contrib-python-headless`` (``cv2.ximgproc.segmentation``); the plain
``opencv-python`` wheel lacks it, and installing both makes one overwrite the other's ``cv2``.

Shapes: H x W the original image, P proposals. Boxes come back as ``[P, 4]`` float32
``(x1, y1, x2, y2)`` in ORIGINAL image pixels, 0-based inclusive (see ``model``).

Details worth knowing:

- OpenCV returns ``(x, y, w, h)`` rects covering pixels ``x .. x + w - 1``; on a
  resized copy (``max_side``, ``upscale``) a rect's pixels map back to the original pixels they
  cover: ``x1 = floor(x / sx)``, ``x2 = ceil((x + w) / sx) - 1`` (likewise in y), so the
  boxes stay whole pixels and inside the image. Fast mode costs about 1 s at 500 px and
  0.35 s at 320 px, so downscaling is the main speed knob.
- Order: OpenCV ranks regions as the paper does (a random number times the region's
  hierarchy level, lowest first) and drops duplicate rects. That random number is the C
  library's ``rand()``; ``seed`` reseeds it (``srand``) right before each image so the order,
  and therefore which boxes survive ``max_proposals``, is reproducible. Without a C
  ``srand`` (no libc found) the set of boxes is still deterministic but the order is not;
  a warning says so.
- As py-faster-rcnn does with its selective-search boxes, duplicates (after mapping back)
  and boxes under ``min_size`` pixels on a side are dropped, then the first
  ``max_proposals`` are kept in SS's own order.
- Parallel: ``selective_search_dataset(..., workers=N)`` splits the images over N
  processes. Each image's search reseeds ``rand()`` in the process that runs it, so the
  boxes equal the serial run's, whatever the split.
- ``rand()`` is process-wide: any other thread that calls the C library's ``rand()`` /
  ``random()`` while a search runs (ctypes and most extensions release the GIL) shifts the
  sequence and so the order. ``selective_search`` alone cannot prevent that;
  ``selective_search_dataset`` can: when the calling process has other Python threads (a
  Prefect flow's, a server's, a test runner's), it searches in a worker process even for
  ``workers=1``, so its boxes do not depend on what else the process is doing.
- Scores for caches (``selective_search_dataset``): SS has no score; ``1 - i / P`` for the
  ``i``-th box keeps the rank order, so the cache reads like an RPN proposal cache (boxes
  sorted by descending score).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import functools
import multiprocessing
import os
import threading
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from model.data.images import load_image_rgb
from model.data.records import DatasetError, DetectionDataset, ImageRecord

MODES = ("fast", "quality", "single")

# srand + process must not interleave between Python threads, or two images would share
# one random sequence and the order would depend on scheduling.
_LOCK = threading.Lock()


class SelectiveSearchUnavailableError(RuntimeError):
    """OpenCV's ``ximgproc`` (opencv-contrib) is not importable."""


def _segmentation_module() -> Any:
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - cv2 is a declared dependency
        raise SelectiveSearchUnavailableError(
            "selective search needs OpenCV with the contrib modules: "
            "pip install opencv-contrib-python-headless"
        ) from exc
    ximgproc = getattr(cv2, "ximgproc", None)
    if ximgproc is None or not hasattr(ximgproc, "segmentation"):
        raise SelectiveSearchUnavailableError(
            f"cv2 {getattr(cv2, '__version__', '?')} (from {getattr(cv2, '__file__', '?')}) has no "
            "ximgproc.segmentation: a plain opencv-python / opencv-python-headless wheel is "
            "installed, possibly beside opencv-contrib-python-headless, and its cv2 wins. "
            "Uninstall every opencv-* package, then pip install opencv-contrib-python-headless"
        )
    return ximgproc.segmentation


def _libc_srand() -> Any | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return libc.srand
    except (OSError, AttributeError, TypeError):
        return None


_SRAND = _libc_srand()


def selective_search(
    image_rgb: np.ndarray,
    mode: str = "fast",
    max_side: int | None = 500,
    max_proposals: int = 2000,
    min_size: int = 2,
    seed: int = 1,
    num_threads: int | None = 1,
    upscale: bool = False,
) -> Tensor:
    """Selective-search boxes ``[P, 4]`` float32 in original-image pixels, SS rank order.

    ``image_rgb``: ``[H, W, 3]`` uint8 RGB. ``mode``: "fast" (the paper's setting),
    "quality" (about 4x slower, more boxes) or "single" (one strategy, for tests).
    ``max_side``: run on a copy whose longer side is at most this (None or <= 0: full
    size). ``upscale``: also enlarge smaller images to ``max_side`` (SS's segment sizes are
    in pixels: its operating point, about 2000 boxes per VOC image, is that of VOC's ~500 px
    images). ``max_proposals`` <= 0 keeps all. ``min_size``: drop boxes narrower or
    shorter than this many original pixels. ``seed``: reseeds the C ``rand()`` that
    OpenCV's ranking uses. ``num_threads``: OpenCV threads during the call (restored
    afterwards); 1 by default because callers parallelise over images, None leaves
    OpenCV's setting alone.
    """
    if mode not in MODES:
        raise ValueError(f"selective search mode must be one of {MODES}, got {mode!r}")
    if not isinstance(image_rgb, np.ndarray) or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] image array, got shape {getattr(image_rgb, 'shape', None)}")
    if image_rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image_rgb.dtype}")
    height, width = int(image_rgb.shape[0]), int(image_rgb.shape[1])
    if height == 0 or width == 0:
        raise ValueError(f"image has empty size {width}x{height}")
    segmentation = _segmentation_module()
    import cv2

    # OpenCV's colour strategies convert from BGR.
    bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
    scale = 1.0
    longer = max(height, width)
    if max_side is not None and max_side > 0 and (longer > max_side or (upscale and longer < max_side)):
        scale = float(max_side) / float(longer)
        small_size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
        # INTER_AREA: averaging, no aliasing on shrinking, so segments stay coherent;
        # INTER_LINEAR on enlarging: no ringing that would split flat segments.
        interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
        bgr = cv2.resize(bgr, small_size, interpolation=interpolation)
    small_h, small_w = int(bgr.shape[0]), int(bgr.shape[1])

    previous_threads = cv2.getNumThreads()
    with _LOCK:
        try:
            if num_threads is not None:
                cv2.setNumThreads(int(num_threads))
            search = segmentation.createSelectiveSearchSegmentation()
            search.setBaseImage(bgr)
            if mode == "fast":
                search.switchToSelectiveSearchFast()
            elif mode == "quality":
                search.switchToSelectiveSearchQuality()
            else:
                search.switchToSingleStrategy()
            if _SRAND is not None:
                _SRAND(ctypes.c_uint(seed & 0xFFFFFFFF))
            else:
                warnings.warn(
                    "no C library srand found: selective-search box order is not reproducible",
                    RuntimeWarning,
                    stacklevel=2,
                )
            rects = search.process()
        finally:
            if num_threads is not None:
                cv2.setNumThreads(previous_threads)

    rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
    boxes = _rects_to_boxes(rects, small_w / width, small_h / height, height, width)
    boxes = _unique_in_order(boxes)
    box_w = boxes[:, 2] - boxes[:, 0] + 1
    box_h = boxes[:, 3] - boxes[:, 1] + 1
    boxes = boxes[(box_w >= min_size) & (box_h >= min_size)]
    if max_proposals > 0:
        boxes = boxes[:max_proposals]
    return torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32))


def _rects_to_boxes(
    rects: np.ndarray, scale_x: float, scale_y: float, height: int, width: int
) -> np.ndarray:
    """``[P, 4]`` (x, y, w, h) on the resized image -> inclusive boxes in original pixels."""
    if rects.shape[0] == 0:
        return np.zeros((0, 4), dtype=np.float64)
    x, y, w, h = rects[:, 0], rects[:, 1], rects[:, 2], rects[:, 3]
    # A small pixel i covers original [i / s, (i + 1) / s): keep every original pixel the
    # rect touches. At s = 1 this is (x, y, x + w - 1, y + h - 1). The epsilon keeps exact
    # multiples that float division lands a hair off from rounding outward.
    eps = 1e-9
    boxes = np.stack(
        (
            np.floor(x / scale_x + eps),
            np.floor(y / scale_y + eps),
            np.ceil((x + w) / scale_x - eps) - 1,
            np.ceil((y + h) / scale_y - eps) - 1,
        ),
        axis=1,
    )
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width - 1)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height - 1)
    return boxes


def _unique_in_order(boxes: np.ndarray) -> np.ndarray:
    """Rows of ``boxes`` without repeats, first occurrence kept, order unchanged."""
    if boxes.shape[0] == 0:
        return boxes
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)]


def rank_scores(count: int) -> Tensor:
    """Descending stand-in scores ``[count]``: ``1 - i / count`` (1 for the first box)."""
    if count == 0:
        return torch.zeros((0,), dtype=torch.float32)
    return 1.0 - torch.arange(count, dtype=torch.float32) / float(count)


def resolve_workers(workers: int, num_images: int) -> int:
    """How many processes search ``num_images`` images: ``workers`` (0: one per CPU core
    this process may use), never more than the images, at least 1."""
    if workers < 0:
        raise ValueError(f"selective search workers must be >= 0 (0: one per core), got {workers}")
    if workers == 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(workers, num_images))


def _search_record(record: ImageRecord, settings: Mapping[str, Any]) -> np.ndarray:
    """One image's boxes ``[P, 4]`` (a numpy array: it crosses process boundaries)."""
    image = load_image_rgb(record.path)
    if (image.shape[0], image.shape[1]) != (record.height, record.width):
        raise DatasetError(
            f"{record.path}: image is {image.shape[1]}x{image.shape[0]} but its annotation "
            f"says {record.width}x{record.height}"
        )
    return selective_search(image, **settings).numpy()


def selective_search_dataset(
    dataset: DetectionDataset,
    mode: str = "fast",
    max_side: int | None = 500,
    max_proposals: int = 2000,
    min_size: int = 2,
    seed: int = 1,
    num_threads: int | None = 1,
    upscale: bool = False,
    progress: bool = True,
    workers: int = 1,
) -> dict[str, tuple[Tensor, Tensor]]:
    """``{image_id: (boxes [P, 4], scores [P])}`` for every record, boxes in original pixels.

    The same seed is used for every image, so one image's boxes do not depend on which
    images came before it, nor on which process searched it: ``workers`` processes
    (``resolve_workers``; 1: this process, or one worker process when this one has other
    threads) give the serial run's boxes exactly. Raises
    ``DatasetError`` naming the file if an image's size differs from its annotation.
    """
    records = list(dataset.records)
    seen: set[str] = set()
    for record in records:
        if record.image_id in seen:
            raise DatasetError(f"{record.path}: image id {record.image_id!r} appears twice in the dataset")
        seen.add(record.image_id)
    settings = {"mode": mode, "max_side": max_side, "max_proposals": max_proposals,
                "min_size": min_size, "seed": seed, "num_threads": num_threads, "upscale": upscale}
    search = functools.partial(_search_record, settings=settings)
    processes = resolve_workers(workers, len(records))
    # Other threads could call rand() mid-search (module docstring): search elsewhere.
    in_process = processes == 1 and threading.active_count() == 1
    with contextlib.ExitStack() as stack:
        if in_process:
            boxes_iter: Iterable[np.ndarray] = map(search, records)
        else:
            # forkserver: workers start from a clean process, not a fork of one whose
            # torch / OpenCV thread pools may be mid-use. map keeps the records' order.
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
                processes, mp_context=multiprocessing.get_context("forkserver")))
            boxes_iter = pool.map(search, records)
        if progress:
            from tqdm import tqdm

            boxes_iter = tqdm(boxes_iter, total=len(records), desc=f"selective search ({processes} proc)", unit="img")
        results: dict[str, tuple[Tensor, Tensor]] = {}
        for record, array in zip(records, boxes_iter):
            boxes = torch.from_numpy(array)
            results[record.image_id] = (boxes, rank_scores(int(boxes.shape[0])))
    return results


__all__ = [
    "MODES",
    "SelectiveSearchUnavailableError",
    "rank_scores",
    "resolve_workers",
    "selective_search",
    "selective_search_dataset",
]
