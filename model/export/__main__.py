"""``python -m model.export``: a checkpoint as one ONNX graph, checked against PyTorch with ONNX Runtime.

Checks the graph on ``--check-images`` (image files or folders; without them, two synthetic
images of different sizes) before it takes the name ``--out``: the export is written only
when every image gives the same detections (``model.export.check``). Prints a JSON summary.
Exit status 2 for bad input (checkpoint, image), 1 when the check fails.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from model.atomic import atomic_path
from model.checkpoint import CheckpointError, load_checkpoint
from model.data.images import load_image_rgb
from model.data.records import DatasetError
from model.data.transforms import prepare_image
from model.export.check import check_export
from model.export.graph import export_onnx
from model.export.runtime import OnnxDetector
from model.faster_rcnn import FasterRCNN

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# Two sizes (width x height) of the synthetic fallback: landscape and portrait, so the
# check covers two input shapes even without real images.
_SYNTHETIC_SIZES = ((320, 240), (240, 320))


def image_files(paths: Sequence[Path], limit: int) -> list[Path]:
    """Image files named by ``paths`` (folders: their images, sorted), the first ``limit``."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(path)
    return found[:limit] if limit > 0 else found


def prepared_images(model: FasterRCNN, files: Sequence[Path]) -> Iterator[tuple[str, torch.Tensor, float]]:
    """``(name, image [3, h, w], scale)`` prepared the test way; synthetic ones without files."""
    cfg = model.cfg
    if files:
        for path in files:
            image, scale = prepare_image(load_image_rgb(path), cfg.min_size, cfg.max_size)
            yield str(path), image, scale
        return
    from model.data.synthetic import SyntheticSpec, render_synthetic_image

    for width, height in _SYNTHETIC_SIZES:
        pixels, _ = render_synthetic_image(SyntheticSpec(image_size=(width, height)), 0)
        image, scale = prepare_image(pixels, cfg.min_size, cfg.max_size)
        yield f"synthetic-{width}x{height}", image, scale


def export_checked(model: FasterRCNN, out: Path, files: Sequence[Path], threads: int = 0) -> dict:
    """Export ``model`` to ``out`` if it passes the check on ``files``; returns the summary.

    The traced sample is the first image with at least one detection (see ``export_onnx``).
    """
    images = list(prepared_images(model, files))
    sample = next((image for image in images if len(model.detect(image[1], image[2])) > 0), None)
    if sample is None:
        raise ValueError("no check image gives a detection: cannot trace the detection path")
    with atomic_path(out) as tmp:
        export_onnx(model, tmp, sample[1], sample[2])
        runtime = OnnxDetector(tmp, threads=threads)
        check = check_export(images, model.detect, runtime.detect, model.cfg.test)
        summary = {"out": str(out), "traced_on": sample[0], "check": check.summary()}
        if not check.ok:
            raise ExportCheckFailed(summary)
    return summary


class ExportCheckFailed(RuntimeError):
    def __init__(self, summary: dict) -> None:
        super().__init__(f"ONNX detections differ from PyTorch's on {summary['check']['failed_images']}")
        self.summary = summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint (e.g. the assembled final.pt)")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="export format (onnx)")
    parser.add_argument("--out", required=True, type=Path, help="where to write the .onnx file")
    parser.add_argument("--check-images", nargs="*", type=Path, default=[], help="images or folders to check on")
    parser.add_argument("--check-limit", type=int, default=8, help="check on at most this many images (0: all)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads for the check (0: its choice)")
    args = parser.parse_args(argv)

    try:
        model, _ = load_checkpoint(args.checkpoint, map_location="cpu")
        model.eval()
        summary = export_checked(model, args.out, image_files(args.check_images, args.check_limit), args.threads)
    except (CheckpointError, DatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ExportCheckFailed as failure:
        print(json.dumps(failure.summary, indent=2))
        print(f"error: {failure}; {args.out} not written", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
