"""One Fast R-CNN training epoch on cached proposals against recomputing them on the fly.

Step 2 (and 4) of the alternating training trains the detector on fixed proposals of
an RPN trained before it. Either they are computed once and cached
(``model.proposal_cache``, what the pipeline does), or every epoch re-runs that RPN
(its own shared convs + RPN head) over every training image before the detector sees
it. This script times both for one epoch (every training image once, no flips,
2 images per batch as the paper's Fast R-CNN steps):

- cached: load the cache file (``load_proposal_cache``, fingerprint checked) + train;
- on the fly: ``propose_dataset`` with the RPN network + train.

The detector training part is the same code and the same seed in both; the ratio
(on the fly / cached) is what caching saves per epoch. The ``cache_build`` column is
the one-off cost of making the cache (= the on-the-fly proposal time).

Usage (from the repository root)::

    python benchmarks/proposal_cache_speed.py                 # the default profile's settings
    python benchmarks/proposal_cache_speed.py --images 60 --repeats 3

The detector settings (backbone, anchors, RoI batch, proposal counts, input size) come
from params.yaml (the default profile; ``--params`` for another), the data is that
profile's synthetic generator with ``--images`` images (seed 0). Each part is timed on
its own (median over ``--repeats``); the detector training is identical in both variants, so
the epoch times share the median of all its runs and differ only by cache loading
against proposal computation (the load of a shared machine disturbs the ratio less). Prints a Markdown table row for
BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.config import DetectorConfig  # noqa: E402
from model.data.synthetic import SyntheticSpec, generate_synthetic_voc  # noqa: E402
from model.data.voc import load_voc  # noqa: E402
from model.faster_rcnn import FasterRCNN  # noqa: E402
from model.inference import propose_dataset  # noqa: E402
from model.proposal_cache import fingerprint_for, load_proposal_cache, save_proposal_cache  # noqa: E402
from model.checkpoint import save_checkpoint  # noqa: E402
from model.training import TrainSchedule, train_detector  # noqa: E402
from tasks.params import load_params, select  # noqa: E402
from tasks.settings import decode, with_settings  # noqa: E402


def build(cfg: DetectorConfig, options: dict, seed: int) -> FasterRCNN:
    torch.manual_seed(seed)
    return FasterRCNN(cfg, options)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40, help="synthetic images (75 %% train)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--params", default=str(ROOT / "params.yaml"), help="profile whose model settings to use")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    # The detector settings, input size and Fast R-CNN batch of the given profile (default:
    # the committed params.yaml, i.e. the default pipeline profile).
    keys = ("model.backbone", "model.pretrained", "model.anchors", "model.backbone_options", "model.cache_proposals",
            "model.roi", "data.input", "data.synthetic", "train.step2_fast_rcnn")
    settings = decode(select(load_params(args.params), keys, source=args.params), keys, source=args.params)
    model_settings = settings.model
    step2 = settings.train.step2_fast_rcnn
    work = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    spec = dataclasses.replace(settings.data.synthetic or SyntheticSpec(), num_images=args.images, seed=0)
    root = generate_synthetic_voc(work / "data", spec)
    train_set = load_voc(root, "trainval")
    cfg = with_settings(
        DetectorConfig(
            class_names=train_set.classes,
            backbone=model_settings.backbone,
            pretrained=model_settings.pretrained,
            anchors=model_settings.anchors,
        ),
        settings,  # the declared sections: cache_proposals, roi and the input size
    )
    options = dict(model_settings.backbone_options)
    rpn_net = build(cfg, options, 1)  # stands in for step 1's network (own shared convs + RPN)
    rpn_path = save_checkpoint(work / "rpn.pt", rpn_net)
    ids = [r.image_id for r in train_set.records]
    ims = int(step2.ims_per_batch or 2)
    batches = (len(train_set.records) + ims - 1) // ims
    schedule = TrainSchedule(iterations=batches, ims_per_batch=ims, flip=False, checkpoint_every=10**9, seed=0)

    def epoch(proposals: dict) -> float:
        detector = build(cfg, options, 2)
        started = time.perf_counter()
        train_detector(detector, train_set, proposals, schedule, work / "det.pt", resume=False, progress=False)
        return time.perf_counter() - started

    # Build the cache once (what the pipeline's proposal stage does).
    started = time.perf_counter()
    made = propose_dataset(rpn_net, train_set, cfg.cache_proposals, progress=False)
    cache_path = save_proposal_cache(work / "train.pt", made, fingerprint_for(rpn_path, cfg.cache_proposals, ids))
    cache_build = time.perf_counter() - started

    rows = {"load": [], "propose": [], "train_cached": [], "train_fly": []}
    for _ in range(args.repeats):
        started = time.perf_counter()
        cache = load_proposal_cache(cache_path, fingerprint_for(rpn_path, cfg.cache_proposals, ids))
        rows["load"].append(time.perf_counter() - started)
        rows["train_cached"].append(epoch(cache.boxes()))
        started = time.perf_counter()
        fresh = propose_dataset(rpn_net, train_set, cfg.cache_proposals, progress=False)
        rows["propose"].append(time.perf_counter() - started)
        rows["train_fly"].append(epoch({k: boxes for k, (boxes, _) in fresh.items()}))

    med = {k: statistics.median(v) for k, v in rows.items()}
    # Both variants train the same detector on the same boxes with the same seed: their
    # training times differ only by the machine's noise, so the ratio uses the median of
    # all of them for both, and differs only by what caching changes (load vs propose).
    train = statistics.median(rows["train_cached"] + rows["train_fly"])
    cached = med["load"] + train
    fly = med["propose"] + train
    print(f"{len(train_set.records)} train images, {batches} iterations of {ims} images, "
          f"{cfg.roi.batch_size_per_image} RoIs per image, input {cfg.min_size}/{cfg.max_size}, "
          f"{args.threads} threads, {platform.machine()}")
    print("raw seconds:", {k: [round(x, 2) for x in v] for k, v in rows.items()}, f"cache build {cache_build:.1f}")
    print("| train images | cache load (s) | proposals on the fly (s) | detector training (s) "
          "| epoch, cached (s) | epoch, on the fly (s) | on the fly / cached |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {len(train_set.records)} | {med['load']:.3f} | {med['propose']:.1f} | {train:.1f} "
          f"| {cached:.1f} | {fly:.1f} | {fly / cached:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
