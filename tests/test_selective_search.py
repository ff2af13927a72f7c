"""Selective search proposals (model/selective_search.py) on a drawn image and on real BCCD images."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from model.data.images import load_image_rgb
from model.data.records import DatasetError, DetectionDataset, ImageRecord
from model.selective_search import (
    SelectiveSearchUnavailableError,
    _rects_to_boxes,
    rank_scores,
    resolve_workers,
    selective_search,
    selective_search_dataset,
)

BCCD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "BCCD" / "BCCD"
needs_bccd = pytest.mark.skipif(
    not (BCCD / "JPEGImages").is_dir(), reason=f"real BCCD data not found at {BCCD}"
)

# Two solid rectangles on a flat background, 200 x 160, 0-based inclusive corners.
RED = (20, 30, 59, 69)  # pixels x 20..59, y 30..69: 40 x 40
BLUE = (120, 100, 189, 139)  # 70 x 40


def _drawn_image() -> np.ndarray:
    image = np.full((160, 200, 3), 200, np.uint8)
    image[RED[1] : RED[3] + 1, RED[0] : RED[2] + 1] = (220, 30, 30)
    image[BLUE[1] : BLUE[3] + 1, BLUE[0] : BLUE[2] + 1] = (30, 30, 220)
    return image


def _check_boxes(boxes: torch.Tensor, height: int, width: int) -> None:
    assert boxes.dtype == torch.float32 and boxes.dim() == 2 and boxes.shape[1] == 4
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= width - 1).all() and (boxes[:, 3] <= height - 1).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert torch.equal(boxes, boxes.round())  # whole pixels
    assert torch.unique(boxes, dim=0).shape[0] == boxes.shape[0]


@pytest.mark.parametrize("max_side", [None, 100])  # full size, and exactly half size
def test_drawn_rectangles_come_back_exactly(max_side):
    boxes = selective_search(_drawn_image(), max_side=max_side)
    _check_boxes(boxes, 160, 200)
    found = {tuple(int(v) for v in b) for b in boxes.tolist()}
    # Inclusive convention: OpenCV's (x, y, w, h) = (20, 30, 40, 40) must be (20, 30, 59, 69).
    assert RED in found and BLUE in found
    assert (0, 0, 199, 159) in found  # the last merge: the whole image, x2 = W - 1


def test_upscale_searches_small_images_at_max_side_and_maps_boxes_back():
    image = _drawn_image()  # 200 x 160
    native = selective_search(image, max_side=400)  # not enlarged without upscale
    assert torch.equal(native, selective_search(image, max_side=None))
    enlarged = selective_search(image, max_side=400, upscale=True)  # searched at 400 x 320
    _check_boxes(enlarged, 160, 200)
    found = {tuple(int(v) for v in b) for b in enlarged.tolist()}
    # Exactly 2x: each rect of the enlarged copy maps back onto whole original pixels.
    assert RED in found and BLUE in found and (0, 0, 199, 159) in found
    # upscale never shrinks less than max_side asks, nor touches an image already that size.
    assert torch.equal(selective_search(image, max_side=200, upscale=True), native)
    assert torch.equal(selective_search(image, max_side=100, upscale=True), selective_search(image, max_side=100))


def test_rects_map_back_to_the_pixels_they_cover():
    rects = np.array([[10.0, 15.0, 20.0, 20.0], [0.0, 0.0, 1.0, 1.0], [99.0, 79.0, 1.0, 1.0]])
    # Downscaled by 1/2 (200 x 160 -> 100 x 80): small pixel i covers original 2i, 2i + 1.
    boxes = _rects_to_boxes(rects, 0.5, 0.5, 160, 200)
    assert boxes.tolist() == [[20, 30, 59, 69], [0, 0, 1, 1], [198, 158, 199, 159]]
    # Scale 1: x2 = x + w - 1.
    assert _rects_to_boxes(rects[:1], 1.0, 1.0, 160, 200).tolist() == [[10, 15, 29, 34]]
    # Enlarged 2x: small pixels 20, 21 cover original pixel 10.
    assert _rects_to_boxes(np.array([[20.0, 30.0, 40.0, 40.0]]), 2.0, 2.0, 160, 200).tolist() == [[10, 15, 29, 34]]
    # Non-integer scale 0.3: small pixel 3 covers original [10, 13.33) -> pixels 10..13;
    # small pixels 3..4 cover [10, 16.67) -> pixels 10..16.
    assert _rects_to_boxes(np.array([[3.0, 3.0, 1.0, 2.0]]), 0.3, 0.3, 100, 100).tolist() == [[10, 10, 13, 16]]


def test_cap_keeps_the_first_in_ss_order_and_is_deterministic():
    image = _drawn_image()
    full = selective_search(image, max_side=None)
    again = selective_search(image, max_side=None)
    assert torch.equal(full, again)
    capped = selective_search(image, max_side=None, max_proposals=5)
    assert capped.shape[0] == 5
    assert torch.equal(capped, full[:5])


def test_min_size_and_bad_input():
    boxes = selective_search(_drawn_image(), max_side=None, min_size=45)
    widths = boxes[:, 2] - boxes[:, 0] + 1
    heights = boxes[:, 3] - boxes[:, 1] + 1
    assert boxes.shape[0] > 0 and (widths >= 45).all() and (heights >= 45).all()
    with pytest.raises(ValueError, match="mode"):
        selective_search(_drawn_image(), mode="slow")
    with pytest.raises(ValueError, match="uint8"):
        selective_search(_drawn_image().astype(np.float32))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        selective_search(np.zeros((10, 10), np.uint8))


def test_clear_error_without_contrib(monkeypatch):
    # A cv2 without ximgproc: what a plain opencv-python wheel beside contrib gives.
    plain = types.ModuleType("cv2")
    plain.__version__ = "4.x"
    monkeypatch.setitem(sys.modules, "cv2", plain)
    with pytest.raises(SelectiveSearchUnavailableError, match="opencv-contrib-python-headless"):
        selective_search(_drawn_image())


def test_rank_scores():
    assert rank_scores(4).tolist() == [1.0, 0.75, 0.5, 0.25]
    assert rank_scores(0).shape == (0,)


@needs_bccd
def test_real_bccd_image():
    path = BCCD / "JPEGImages" / "BloodImage_00000.jpg"
    image = load_image_rgb(path)
    assert image.shape == (480, 640, 3)
    boxes = selective_search(image, max_side=320, max_proposals=300)
    _check_boxes(boxes, 480, 640)
    assert boxes.shape[0] == 300  # fast mode gives about 500 boxes at 320 px
    # Blood cells are 40-120 px: plenty of proposals must be cell-sized, not only tiny or whole-image.
    widths = boxes[:, 2] - boxes[:, 0] + 1
    assert ((widths >= 30) & (widths <= 150)).sum() >= 50


@needs_bccd
def test_dataset_search_is_reproducible_while_other_threads_call_rand():
    # The flake this guards against: a thread calling the C rand() between srand and the
    # search shifted the ranking (the 300th box differed between two calls in one run).
    record = ImageRecord("BloodImage_00000", BCCD / "JPEGImages" / "BloodImage_00000.jpg", 640, 480)
    dataset = DetectionDataset(BCCD, ("RBC", "WBC", "Platelets"), [record])
    settings = {"max_side": 320, "max_proposals": 300, "progress": False}
    quiet = selective_search_dataset(dataset, **settings)["BloodImage_00000"][0]
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    stop = threading.Event()

    def call_rand() -> None:
        while not stop.is_set():
            libc.rand()

    thread = threading.Thread(target=call_rand, daemon=True)
    thread.start()
    try:
        busy = selective_search_dataset(dataset, **settings)["BloodImage_00000"][0]
    finally:
        stop.set()
        thread.join()
    assert quiet.shape[0] == 300
    assert torch.equal(quiet, busy)


@needs_bccd
def test_dataset_cache_format(tmp_path):
    records = [
        ImageRecord("BloodImage_00000", BCCD / "JPEGImages" / "BloodImage_00000.jpg", 640, 480),
        ImageRecord("BloodImage_00001", BCCD / "JPEGImages" / "BloodImage_00001.jpg", 640, 480),
    ]
    dataset = DetectionDataset(BCCD, ("RBC", "WBC", "Platelets"), records)
    cache = selective_search_dataset(dataset, max_side=200, max_proposals=50, progress=False)
    assert list(cache) == ["BloodImage_00000", "BloodImage_00001"]
    for boxes, scores in cache.values():
        _check_boxes(boxes, 480, 640)
        assert scores.shape == (boxes.shape[0],)
        assert scores[0] == 1.0 and (scores[1:] < scores[:-1]).all()  # sorted like an RPN cache
    wrong = DetectionDataset(BCCD, ("RBC",), [ImageRecord("x", records[0].path, 600, 480)])
    with pytest.raises(DatasetError, match="BloodImage_00000.jpg.*640x480"):
        selective_search_dataset(wrong, progress=False)


@needs_bccd
def test_two_processes_give_the_serial_boxes():
    # Four real images over 2 worker processes: each image's search reseeds rand() in the
    # process that runs it, so the boxes (order included) are the serial run's.
    records = [
        ImageRecord(f"BloodImage_0000{i}", BCCD / "JPEGImages" / f"BloodImage_0000{i}.jpg", 640, 480)
        for i in range(4)
    ]
    dataset = DetectionDataset(BCCD, ("RBC", "WBC", "Platelets"), records)
    serial = selective_search_dataset(dataset, max_side=200, max_proposals=300, progress=False, workers=1)
    parallel = selective_search_dataset(dataset, max_side=200, max_proposals=300, progress=False, workers=2)
    assert list(parallel) == list(serial) == [r.image_id for r in records]
    for image_id, (boxes, scores) in serial.items():
        assert boxes.shape[0] > 50
        assert torch.equal(parallel[image_id][0], boxes) and torch.equal(parallel[image_id][1], scores)
    # A bad image fails the parallel run with the serial run's message, naming the file.
    wrong = DetectionDataset(BCCD, ("RBC",), [*records[:2], ImageRecord("x", records[0].path, 600, 480)])
    with pytest.raises(DatasetError, match="BloodImage_00000.jpg.*640x480"):
        selective_search_dataset(wrong, progress=False, workers=2)


def test_resolve_workers():
    assert resolve_workers(2, 10) == 2
    assert resolve_workers(8, 3) == 3  # never more processes than images
    assert resolve_workers(1, 0) == 1
    assert resolve_workers(0, 10_000) >= 1  # one per core
    with pytest.raises(ValueError, match="workers"):
        resolve_workers(-1, 5)
