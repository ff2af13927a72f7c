"""What bfloat16 autocast (``model.precision``) does to mAP and to inference time on the CPU.

    python benchmarks/bf16_map.py --data ../shared/datasets/BCCD/BCCD [--checkpoint model.pt]
        [--iterations 300] [--min-size 240 --max-size 320] [--threads 1] [--max-test 0]

With ``--checkpoint`` it scores that trained model; without, it first trains one by
approximate joint training (``model.joint.train_joint``: ImageNet EfficientNet-Lite0 trunk,
the default profile's fc6/fc7 top over a 7x7 RoIPool, ``--iterations`` iterations of two
images, lr 0.01 with a warm-up, x0.1 at 75 %) on the ``--train-split``, in float32. Then it
detects the ``--test-split`` twice with the same weights, float32 and bfloat16, the two
alternating image batch by image batch, and prints each run's VOC07 mAP and per-class AP,
the median ms per image, and the detections that moved. Last line:
``map_fp32=A map_bf16=B map_diff=B-A bf16_speedup=T32/T16``.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.checkpoint import load_checkpoint  # noqa: E402
from model.config import AnchorConfig, DetectorConfig  # noqa: E402
from model.data.images import load_image_rgb  # noqa: E402
from model.data.transforms import prepare_image  # noqa: E402
from model.data.voc import load_voc  # noqa: E402
from model.detections import Detections  # noqa: E402
from model.evaluation.voc_ap import evaluate_voc  # noqa: E402
from model.faster_rcnn import FasterRCNN  # noqa: E402
from model.joint import train_joint  # noqa: E402
from model.precision import PRECISIONS, autocast  # noqa: E402
from model.training import TrainSchedule  # noqa: E402

BACKBONE_OPTIONS = {"pool_size": 7, "top": "fc", "fc_width": 1024}  # conf/model/efficientnet_lite0.yaml


def trained_model(args: argparse.Namespace, train, tmp: Path) -> FasterRCNN:
    cfg = DetectorConfig(
        class_names=train.classes, backbone="efficientnet_lite0", pretrained=True,
        min_size=args.min_size, max_size=args.max_size, anchors=AnchorConfig(scales=(2.0, 4.0, 8.0, 16.0)),
    )
    torch.manual_seed(0)
    model = FasterRCNN(cfg, BACKBONE_OPTIONS)
    n = args.iterations
    schedule = TrainSchedule(iterations=n, base_lr=0.01, lr_steps=(int(0.75 * n),), warmup_iterations=min(50, n // 4),
                             ims_per_batch=2, checkpoint_every=10**9, seed=1)
    started = time.perf_counter()
    history = train_joint(model, train, schedule, tmp / "joint.pt", resume=False, progress=False)
    print(f"trained {n} joint iterations in {time.perf_counter() - started:.0f} s, loss "
          f"{statistics.mean(h['total'] for h in history[:10]):.3f} -> {statistics.mean(h['total'] for h in history[-10:]):.3f}")
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="VOC-layout dataset root")
    parser.add_argument("--train-split", default="trainval")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint (default: train one first)")
    parser.add_argument("--iterations", type=int, default=300, help="joint training iterations without --checkpoint")
    parser.add_argument("--min-size", type=int, default=240)
    parser.add_argument("--max-size", type=int, default=320)
    parser.add_argument("--max-test", type=int, default=0, help="first N test images only (0: all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bf16_map_") as tmp:
        if args.checkpoint is not None:
            model, _ = load_checkpoint(args.checkpoint)
            classes = model.cfg.class_names
        else:
            train = load_voc(args.data, args.train_split)
            model = trained_model(args, train, Path(tmp))
            classes = train.classes
        test = load_voc(args.data, args.test_split, classes=classes)
        if args.max_test > 0:
            test = dataclasses.replace(test, records=test.records[: args.max_test])
        model.eval()
        inputs = [prepare_image(load_image_rgb(r.path), model.cfg.min_size, model.cfg.max_size) for r in test.records]
        found: dict[str, dict[str, Detections]] = {p: {} for p in PRECISIONS}
        ms: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for precision in PRECISIONS:  # warm-up (oneDNN primitives)
            with autocast("cpu", precision):
                model.detect_batch([inputs[0][0]], [inputs[0][1]])
        for record, (image, scale) in zip(test.records, inputs):
            for precision in PRECISIONS:  # alternating, so load changes hit both alike
                started = time.perf_counter()
                with autocast("cpu", precision):
                    (det,) = model.detect_batch([image], [scale])
                ms[precision].append((time.perf_counter() - started) * 1000.0)
                found[precision][record.image_id] = det
    results = {p: evaluate_voc(test, found[p], "voc07") for p in PRECISIONS}
    print(f"{len(test)} {args.test_split} images of {args.data}, input {model.cfg.min_size}/{model.cfg.max_size}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    for p in PRECISIONS:
        per_class = ", ".join(f"{k} {v:.4f}" for k, v in results[p].ap.items())
        print(f"{p}: mAP {results[p].mAP:.4f} ({per_class}); {statistics.median(ms[p]):.1f} ms/image (median)")
    counts = [(found["float32"][i].scores.numel(), found["bfloat16"][i].scores.numel()) for i in found["float32"]]
    print(f"detections per image float32 / bfloat16: {sum(a for a, _ in counts) / len(counts):.1f} / "
          f"{sum(b for _, b in counts) / len(counts):.1f}")
    a, b = results["float32"].mAP, results["bfloat16"].mAP
    speedup = statistics.median(ms["float32"]) / statistics.median(ms["bfloat16"])
    print(f"map_fp32={a:.4f} map_bf16={b:.4f} map_diff={b - a:+.4f} bf16_speedup={speedup:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
