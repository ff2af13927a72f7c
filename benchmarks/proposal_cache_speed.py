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

    python benchmarks/proposal_cache_speed.py                 # self-contained, synthetic data
    python benchmarks/proposal_cache_speed.py --images 60 --repeats 3

Prints a Markdown table row for BENCHMARKS.md.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.config import AnchorConfig, DetectorConfig, ProposalConfig  # noqa: E402
from model.data.synthetic import SyntheticSpec, generate_synthetic_voc  # noqa: E402
from model.data.voc import load_voc  # noqa: E402
from model.faster_rcnn import FasterRCNN  # noqa: E402
from model.inference import propose_dataset  # noqa: E402
from model.proposal_cache import fingerprint_for, load_proposal_cache, save_proposal_cache  # noqa: E402
from model.checkpoint import save_checkpoint  # noqa: E402
from model.training import TrainSchedule, train_detector  # noqa: E402


def build(cfg: DetectorConfig, seed: int) -> FasterRCNN:
    torch.manual_seed(seed)
    return FasterRCNN(cfg, {"pool_size": 7})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40, help="synthetic images (75 %% train)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    spec = SyntheticSpec(num_images=args.images, image_size=(320, 240), seed=0, object_size=(24.0, 200.0))
    root = generate_synthetic_voc(work / "data", spec)
    train = load_voc(root, "trainval")
    # The default pipeline profile's settings (conf/data/synthetic.yaml, conf/model/efficientnet_lite0.yaml).
    cfg = DetectorConfig(
        class_names=train.classes,
        backbone="efficientnet_lite0",
        pretrained=True,
        min_size=240,
        max_size=320,
        anchors=AnchorConfig(scales=(2.0, 4.0, 8.0, 16.0)),
        cache_proposals=ProposalConfig(pre_nms_top_n=-1, post_nms_top_n=300),
    )
    rpn_net = build(cfg, 1)  # stands in for step 1's network (own shared convs + RPN)
    rpn_path = save_checkpoint(work / "rpn.pt", rpn_net)
    ids = [r.image_id for r in train.records]
    batches = (len(train.records) + 1) // 2
    schedule = TrainSchedule(iterations=batches, ims_per_batch=2, flip=False, checkpoint_every=10**9, seed=0)

    def epoch(proposals: dict) -> float:
        detector = build(cfg, 2)
        started = time.perf_counter()
        train_detector(detector, train, proposals, schedule, work / "det.pt", resume=False, progress=False)
        return time.perf_counter() - started

    # Build the cache once (what the pipeline's proposal stage does).
    started = time.perf_counter()
    made = propose_dataset(rpn_net, train, cfg.cache_proposals, progress=False)
    cache_path = save_proposal_cache(work / "train.pt", made, fingerprint_for(rpn_path, cfg.cache_proposals, ids))
    cache_build = time.perf_counter() - started

    cached, fly = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        cache = load_proposal_cache(cache_path, fingerprint_for(rpn_path, cfg.cache_proposals, ids))
        load = time.perf_counter() - started
        cached.append(load + epoch(cache.boxes()))

        started = time.perf_counter()
        fresh = propose_dataset(rpn_net, train, cfg.cache_proposals, progress=False)
        propose = time.perf_counter() - started
        fly.append(propose + epoch({k: boxes for k, (boxes, _) in fresh.items()}))

    c, f = statistics.median(cached), statistics.median(fly)
    cpu = platform.processor() or platform.machine()
    print(f"train images {len(train.records)}, {batches} iterations of 2 images, {args.threads} threads, {cpu}")
    print(f"cache build (once): {cache_build:.1f} s; cached epochs: {[round(x, 1) for x in cached]}; on-the-fly epochs: {[round(x, 1) for x in fly]}")
    print("| train images | epoch, cached (s) | epoch, proposals on the fly (s) | ratio | cache build, once (s) |")
    print("|---|---|---|---|---|")
    print(f"| {len(train.records)} | {c:.1f} | {f:.1f} | {f / c:.2f}x | {cache_build:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
