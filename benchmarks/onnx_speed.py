"""CPU latency of the exported ONNX graph under ONNX Runtime against the PyTorch model.

    python benchmarks/onnx_speed.py [--checkpoint final.pt] [--images DIR] [--limit 4]
                                    [--threads 1] [--repeats 3] [--warmup 1]

Without ``--checkpoint`` the model is the default architecture (EfficientNet-Lite0,
ImageNet trunk, the paper's test settings: 600 px, 300 proposals) with an untrained head
whose classifier is spread so that every image keeps the full 100 detections: the work
per image is the same as a trained model's. ``--images`` defaults to BCCD's
``JPEGImages`` beside the checkout, else synthetic images. Both run the same prepared
images (decoding and resizing are not timed) on ``--threads`` CPU threads; each image's
time is the median of ``--repeats`` calls after ``--warmup``. The export is checked first
(``model.export.check``): a mismatch stops the script. The last line is
``ort_ratio=R``, ONNX Runtime's median time over PyTorch's (below 1: ORT is faster).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.checkpoint import load_checkpoint  # noqa: E402
from model.config import DetectorConfig  # noqa: E402
from model.export.__main__ import export_checked, image_files, prepared_images  # noqa: E402
from model.export.runtime import OnnxDetector  # noqa: E402
from model.faster_rcnn import FasterRCNN  # noqa: E402

BCCD_IMAGES = REPO.parent / "shared" / "datasets" / "BCCD" / "BCCD" / "JPEGImages"


def default_model() -> FasterRCNN:
    torch.manual_seed(0)
    model = FasterRCNN(DetectorConfig(class_names=("RBC", "WBC", "Platelets"))).eval()
    torch.nn.init.normal_(model.roi_head.cls_score.weight, std=0.05)
    return model


def median_time(run, repeats: int, warmup: int) -> float:  # noqa: ANN001 - any zero-argument call
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--images", type=Path, default=BCCD_IMAGES if BCCD_IMAGES.is_dir() else None)
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint)[0].eval() if args.checkpoint else default_model()
    files = image_files([args.images], args.limit) if args.images else []
    images = list(prepared_images(model, files))
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "model.onnx"
        summary = export_checked(model, out, files, threads=args.threads)
        print(f"check: {summary['check']}")
        runtime = OnnxDetector(out, threads=args.threads)
        torch_times, ort_times = [], []
        for name, image, scale in images:
            t_torch = median_time(lambda: model.detect(image, scale), args.repeats, args.warmup)
            t_ort = median_time(lambda: runtime.detect(image, scale), args.repeats, args.warmup)
            torch_times.append(t_torch)
            ort_times.append(t_ort)
            print(f"{name}: input {tuple(image.shape[1:])} pytorch {t_torch * 1000:.1f} ms, onnxruntime {t_ort * 1000:.1f} ms")
    t_torch, t_ort = statistics.median(torch_times), statistics.median(ort_times)
    print(f"median over {len(images)} images, {args.threads} thread(s): pytorch {t_torch * 1000:.1f} ms, "
          f"onnxruntime {t_ort * 1000:.1f} ms")
    print(f"ort_ratio={t_ort / t_torch:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
