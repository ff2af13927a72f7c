"""Training cost of approximate joint training against the four alternating steps.

The paper (sec. 3.2) says approximate joint training gives close results "while reducing
the training time by about 25-50 %" against the four-step alternating training. The
pipeline's report compares the stages' own wall times (``tasks.report_joint``); those
come from whole runs, often on a machine doing other things. This script measures the
same comparison side by side: in each round it times a few iterations of every training
kind, one after the other, on the same images:

- step 1: RPN, shared convs + RPN trained;     step 3: RPN only (shared convs frozen);
- step 2: detector, shared convs + detector;   step 4: detector only (shared convs frozen);
- the proposal caches the alternating steps need (RPN over every training image, twice:
  after step 1 and after step 3);
- joint: shared convs + RPN + detector, one loss (``model.joint.train_joint``).

Seconds per iteration (median over ``--rounds``) times each stage's iteration count in the
profile (``train.step1_rpn.iterations``, ...) gives the estimated training time of each
way; the last line is ``joint_time_ratio=R`` (joint / alternating, the caching included;
the paper: 0.50-0.75). Settings come from a params file (default: the committed
params.yaml, the default profile): backbone, anchors, proposal counts, RoI batch, input
size, images per iteration. Weights are random (nothing is downloaded): the cost of an
iteration does not depend on them, except through how many proposals survive NMS, which
the RPN's fixed 2000 / 300 post-NMS counts bound.

Usage (from the repository root)::

    python benchmarks/joint_speed.py [--images 8] [--iterations 4] [--rounds 3] [--threads 1]
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
from model.joint import train_joint  # noqa: E402
from model.training import train_detector, train_rpn  # noqa: E402
from tasks.params import load_params, select  # noqa: E402
from tasks.settings import decode, with_settings  # noqa: E402

#: The alternating training's stages and what each trains (``model.alternating``).
ALTERNATING = {
    "step1_rpn": ("rpn", ("shared", "rpn")),
    "step2_fast_rcnn": ("detector", ("shared", "detector")),
    "step3_rpn": ("rpn", ("rpn",)),
    "step4_fast_rcnn": ("detector", ("detector",)),
}
CACHES_PER_RUN = 2  # step1_proposals and step3_proposals over the training split


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="synthetic training images")
    parser.add_argument("--iterations", type=int, default=4, help="timed iterations of each kind per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all kinds (median reported)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--params", default=str(ROOT / "params.yaml"), help="profile whose settings to use")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    keys = ("model.backbone", "model.anchors", "model.backbone_options", "model.rpn", "model.train_proposals",
            "model.cache_proposals", "model.roi", "data.input", "data.synthetic", "train")
    settings = decode(select(load_params(args.params), keys, source=args.params), keys, source=args.params)
    work = Path(tempfile.mkdtemp(prefix="joint-bench-"))
    spec = dataclasses.replace(settings.data.synthetic or SyntheticSpec(), num_images=args.images, seed=0,
                               test_fraction=0.0, val_fraction=0.0)
    train_set = load_voc(generate_synthetic_voc(work / "data", spec), "trainval")
    cfg = with_settings(DetectorConfig(class_names=train_set.classes, backbone=settings.model.backbone,
                                       pretrained=False, anchors=settings.model.anchors), settings)
    options = dict(settings.model.backbone_options)

    def fresh() -> FasterRCNN:
        torch.manual_seed(0)
        return FasterRCNN(cfg, options)

    def schedule_of(stage: str):  # noqa: ANN202 - a TrainSchedule
        return dataclasses.replace(getattr(settings.train, stage), iterations=args.iterations, flip=False,
                                   checkpoint_every=10**9, warmup_iterations=0, lr_steps=())

    # Proposals to train the detector kinds on: the RPN's own, as a cache would hold them.
    proposals = {k: boxes for k, (boxes, _) in propose_dataset(fresh(), train_set, cfg.cache_proposals,
                                                                progress=False).items()}

    def run(kind: str) -> float:
        model = fresh()
        path = work / f"{kind}.pt"
        started = time.perf_counter()
        if kind == "cache":
            propose_dataset(model, train_set, cfg.cache_proposals, progress=False)
        elif kind == "joint":
            train_joint(model, train_set, schedule_of("joint"), path, resume=False, progress=False)
        else:
            net, groups = ALTERNATING[kind]
            if net == "rpn":
                train_rpn(model, train_set, schedule_of(kind), path, groups, resume=False, progress=False)
            else:
                train_detector(model, train_set, proposals, schedule_of(kind), path, groups,
                               resume=False, progress=False)
        elapsed = time.perf_counter() - started
        return elapsed / (len(train_set.records) if kind == "cache" else args.iterations)

    kinds = (*ALTERNATING, "cache", "joint")
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            seconds[kind].append(run(kind))
    per = {k: statistics.median(v) for k, v in seconds.items()}

    full_train = settings.data.synthetic.num_images if settings.data.synthetic else len(train_set.records)
    train_images = round(full_train * (1 - (settings.data.synthetic or spec).test_fraction))
    iterations = {k: getattr(settings.train, k).iterations for k in (*ALTERNATING, "joint")}
    alternating_steps = sum(per[k] * iterations[k] for k in ALTERNATING)
    caching = per["cache"] * train_images * CACHES_PER_RUN
    joint = per["joint"] * iterations["joint"]
    print(f"{platform.machine()}, {args.threads} thread(s), torch {torch.__version__}; {cfg.backbone}, input "
          f"{cfg.min_size}/{cfg.max_size}, {args.images} images, {args.iterations} iterations x {args.rounds} rounds")
    print("raw s/iteration:", {k: [round(x, 3) for x in v] for k, v in seconds.items()})
    print("| kind | s / iteration (median) | iterations in the profile | estimated s |")
    print("|---|---:|---:|---:|")
    for k in ALTERNATING:
        print(f"| {k} | {per[k]:.3f} | {iterations[k]} | {per[k] * iterations[k]:.0f} |")
    print(f"| proposal caches (s / image) | {per['cache']:.3f} | {CACHES_PER_RUN} x {train_images} images "
          f"| {caching:.0f} |")
    print(f"| joint | {per['joint']:.3f} | {iterations['joint']} | {joint:.0f} |")
    print(f"alternating: {alternating_steps:.0f} s training + {caching:.0f} s caching; joint {joint:.0f} s; "
          f"joint / alternating training only {joint / alternating_steps:.3f}")
    print(f"joint_time_ratio={joint / (alternating_steps + caching):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
