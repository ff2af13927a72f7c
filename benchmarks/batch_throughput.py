"""Training throughput with mini-batches: ``ims_per_batch`` 2 against one image at a time.

Both runs see the same number of training images (``--images``, flips off) through the
same code (``model.training.train_rpn`` and ``train_detector``): one image per iteration,
or ``--ims-per-batch`` images per iteration as one padded batch through the trunk (one
optimiser step per batch, as the original's Caffe batches). The figure is training images
per second of each step kind in the steady state (``IterationClock``: from the end of the
first iteration to the end of the last but one, so the run's set-up, the first iteration's
warm-up and the final checkpoint write are left out) and the ratio (batched / one at a
time); the issue's goal is >= 1.2x on the CPU. ``--images`` must give at least 3
iterations of each kind.

Usage (from the repository root)::

    python benchmarks/batch_throughput.py                       # EfficientNet-Lite0, 480 x 360
    python benchmarks/batch_throughput.py --images 16 --repeats 3 --backbone zf

Random-init weights (nothing is downloaded), synthetic VOC-layout images of
``--size`` (default 480 x 360: the default profile's network input, its 320 x 240 images
enlarged 1.5x) with the default profile's anchors and RoI batch.
Each variant is timed ``--repeats`` times (median). Measure on a quiet machine: a loaded one
disturbs the ratio.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import AnchorConfig, DetectorConfig  # noqa: E402
from model.data.synthetic import SyntheticSpec, generate_synthetic_voc  # noqa: E402
from model.data.voc import load_voc  # noqa: E402
from model.faster_rcnn import FasterRCNN  # noqa: E402
from model.training import TrainSchedule, train_detector, train_rpn  # noqa: E402

CLASSES = ("circle", "square", "triangle")


def build(backbone: str, size: tuple[int, int]) -> FasterRCNN:
    torch.manual_seed(0)
    cfg = DetectorConfig(
        class_names=CLASSES, backbone=backbone, pretrained=False, min_size=min(size), max_size=max(size),
        anchors=AnchorConfig(scales=(2.0, 4.0, 8.0, 16.0)),
    )
    options = {"pool_size": 7, "top": "fc", "fc_width": 1024} if backbone.startswith("efficientnet") else {}
    return FasterRCNN(cfg, options)


def jittered_proposals(dataset, count: int = 300) -> dict[str, torch.Tensor]:
    """Boxes around the gt boxes and random boxes, original pixels (stand-ins for an RPN's)."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for record in dataset.records:
        gt = torch.tensor([o.box for o in record.objects]).reshape(-1, 4)
        near = gt.repeat(20, 1) + torch.randn(gt.shape[0] * 20, 4, generator=g) * 6
        xy = torch.rand(count, 2, generator=g) * torch.tensor([record.width * 0.8, record.height * 0.8])
        wh = torch.rand(count, 2, generator=g) * 80 + 16
        boxes = torch.cat([near, torch.cat([xy, xy + wh], 1)])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, record.width - 1)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, record.height - 1)
        out[record.image_id] = boxes
    return out


class IterationClock:
    """``on_log`` callback: the time each iteration ended. The steady-state rate leaves out
    the first iteration (oneDNN primitives and buffers created for the shapes) and the set-up
    before it (image filter, box-target statistics, optimiser), and the last one, which
    writes the checkpoint: costs paid once per run, not per image."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def __call__(self, iteration: int, values: dict) -> None:
        self.ends.append(time.perf_counter())

    def seconds_per_iteration(self) -> float:
        if len(self.ends) < 3:
            raise ValueError("need at least 3 iterations for a steady-state time (raise --images)")
        return (self.ends[-2] - self.ends[0]) / (len(self.ends) - 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12, help="training images per timed run (even)")
    parser.add_argument("--ims-per-batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 360), metavar=("W", "H"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    if args.images % args.ims_per_batch or args.images // args.ims_per_batch < 3:
        parser.error("--images must be a multiple of --ims-per-batch giving at least 3 batches")
    torch.set_num_threads(args.threads)
    width, height = args.size
    with tempfile.TemporaryDirectory() as tmp:
        spec = SyntheticSpec(num_images=args.images, image_size=(width, height), seed=0, classes=CLASSES,
                             test_fraction=0.0, val_fraction=0.0)
        dataset = load_voc(generate_synthetic_voc(Path(tmp) / "voc", spec), "trainval", classes=CLASSES)
        proposals = jittered_proposals(dataset)
        rows = {}
        for kind in ("rpn", "detector"):
            for ims in (1, args.ims_per_batch):
                schedule = TrainSchedule(iterations=args.images // ims, base_lr=1e-3, ims_per_batch=ims,
                                         flip=False, checkpoint_every=10**9)
                seconds = []
                for repeat in range(args.repeats):
                    model = build(args.backbone, (width, height))
                    path = Path(tmp) / f"{kind}-{ims}-{repeat}.pt"
                    clock = IterationClock()
                    if kind == "rpn":
                        train_rpn(model, dataset, schedule, path, resume=False, progress=False, on_log=clock)
                    else:
                        train_detector(model, dataset, proposals, schedule, path, resume=False, progress=False,
                                       on_log=clock)
                    seconds.append(clock.seconds_per_iteration())
                rows[(kind, ims)] = ims / statistics.median(seconds)
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}; "
          f"{args.backbone}, {width}x{height}, {args.images} images, steady state, median of {args.repeats}")
    print(f"| step | images/s, 1 per batch | images/s, {args.ims_per_batch} per batch | ratio |")
    print("|---|---:|---:|---:|")
    for kind in ("rpn", "detector"):
        one, many = rows[(kind, 1)], rows[(kind, args.ims_per_batch)]
        print(f"| {kind} | {one:.2f} | {many:.2f} | {many / one:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
