"""``python -m model.detect``: detect objects in images with a trained checkpoint.

``--image`` takes one or more image files or folders (a folder's images, by name);
``--batch-size`` images go through the network at once. For one image it prints the
detections as JSON, a list of ``{"class", "score", "box": [x1, y1, x2, y2]}`` (0-based
inclusive pixels of the original image), and ``--out FILE`` draws them, labelled, on a copy
of the image; for several it prints ``{image path: that list}`` and ``--out`` is a folder
that receives ``<image name>_detections.png`` per image. Bad input (checkpoint, image, or a
``--device`` this machine lacks) exits with status 2 and a message that names the file or
the device. ``--onnx`` runs a graph written by ``python -m model.export`` with ONNX Runtime
instead of a checkpoint with PyTorch (CPU; one image at a time). ``--checkpoint
models:/NAME/VERSION`` loads a version of the MLflow Model Registry (``model.registry_uri``:
the mlflow CLI downloads it; the library imports no mlflow). ``--precision bfloat16`` runs the
network in bfloat16 autocast (``model.precision``: faster on CPUs with AMX, slightly different
numbers; default float32, or ``FRCNN_PRECISION``).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from model.batching import chunks
from model.checkpoint import CheckpointError, load_checkpoint
from model.data.images import load_image_rgb
from model.data.records import DatasetError
from model.data.transforms import prepare_image
from model.detections import Detections
from model.devices import DeviceError, resolve_device
from model.precision import PRECISIONS, autocast, default_precision
from model.registry_uri import checkpoint_file

# Distinct, readable colours, cycled over the classes.
_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128))


def detections_to_json(det: Detections, class_names: Sequence[str], score_threshold: float) -> list[dict]:
    """Detections with score >= ``score_threshold`` as plain dicts, highest score first."""
    keep = torch.nonzero(det.scores >= score_threshold).squeeze(1)
    keep = keep[torch.argsort(det.scores[keep], descending=True, stable=True)]
    return [
        {
            "class": class_names[int(det.labels[i]) - 1],
            "score": round(float(det.scores[i]), 4),
            "box": [round(float(v), 2) for v in det.boxes[i].tolist()],
        }
        for i in keep.tolist()
    ]


def draw_detections(image: np.ndarray, detections: Sequence[dict], class_names: Sequence[str]) -> Image.Image:
    """``image`` ``[H, W, 3]`` uint8 RGB with each detection's box and "class score" label."""
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for det in detections:
        colour = _PALETTE[list(class_names).index(det["class"]) % len(_PALETTE)]
        x1, y1, x2, y2 = det["box"]
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        text = f"{det['class']} {det['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text)
        height = bottom - top
        ty = y1 - height - 2 if y1 - height - 2 >= 0 else y1  # above the box when there is room
        draw.rectangle((x1, ty, x1 + (right - left) + 2, ty + height + 2), fill=colour)
        draw.text((x1 + 1, ty), text, fill=(255, 255, 255))
    return canvas


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def image_paths(arguments: Sequence[Path]) -> list[Path]:
    """The image files named by ``arguments``: files as given, folders' images sorted by name."""
    paths: list[Path] = []
    for argument in arguments:
        if argument.is_dir():
            found = sorted(p for p in argument.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DatasetError(f"{argument}: folder holds no image ({', '.join(IMAGE_SUFFIXES)})")
            paths += found
        else:
            paths.append(argument)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.detect", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", type=Path, help="checkpoint written by training, or models:/NAME/VERSION (MLflow Model Registry)"
    )
    source.add_argument("--onnx", type=Path, help="ONNX graph written by python -m model.export (ONNX Runtime, CPU)")
    parser.add_argument("--image", required=True, type=Path, nargs="+",
                        help="image file(s) or folder(s) of images to run on")
    parser.add_argument("--out", type=Path,
                        help="one image: write it with the detections drawn here; several: a folder for them")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="lowest score reported (default 0.5)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="compute precision of the network (default float32, or FRCNN_PRECISION)")
    args = parser.parse_args(argv)

    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        precision = args.precision or default_precision()
    except ValueError as error:  # a bad FRCNN_PRECISION
        parser.error(str(error))
    if args.onnx is not None and args.precision not in (None, "float32"):
        parser.error(f"--onnx runs the float32 graph; --precision {args.precision} needs --checkpoint")
    try:
        if args.onnx is not None:
            from model.export.runtime import OnnxDetector, OnnxModelError

            try:
                runtime = OnnxDetector(args.onnx)
            except OnnxModelError as error:
                raise CheckpointError(str(error)) from error
            info = runtime.info

            def detect_batch(images: list, scales: list) -> list[Detections]:
                return [runtime.detect(image, scale) for image, scale in zip(images, scales)]
        else:
            device = resolve_device(args.device, "--device")
            with checkpoint_file(args.checkpoint) as path:
                model, _ = load_checkpoint(path, map_location=device)
            info = model.cfg

            def detect_batch(images: list, scales: list) -> list[Detections]:
                with autocast(device, precision):
                    return model.detect_batch([image.to(device) for image in images], scales)
        paths = image_paths(args.image)
    except (DeviceError, CheckpointError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    results: dict[str, list[dict]] = {}
    drawn: list[tuple[Path, Image.Image]] = []
    for batch in chunks(paths, args.batch_size):
        try:
            pixels = [load_image_rgb(path) for path in batch]
        except DatasetError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        prepared = [prepare_image(image, info.min_size, info.max_size) for image in pixels]
        detections = detect_batch([t for t, _ in prepared], [s for _, s in prepared])
        for path, image, det in zip(batch, pixels, detections):
            found = detections_to_json(det, info.class_names, args.score_threshold)
            results[str(path)] = found
            if args.out is not None:
                target = args.out if len(paths) == 1 else args.out / f"{path.stem}_detections.png"
                drawn.append((target, draw_detections(image, found, info.class_names)))
    print(json.dumps(next(iter(results.values())) if len(paths) == 1 else results, indent=2))
    for target, canvas in drawn:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            canvas.save(target)
        except (OSError, ValueError) as error:
            print(f"error: cannot write {target}: {error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
