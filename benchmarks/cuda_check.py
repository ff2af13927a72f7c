"""Checks that the library trains and evaluates on a CUDA GPU, and times the paper's four steps.

    python benchmarks/cuda_check.py --data /path/to/BCCD/BCCD [--device cuda] [--out result.json]
    # quick CPU smoke run:
    python benchmarks/cuda_check.py --data /path/to/BCCD/BCCD --device cpu \
        --iterations 2 2 2 2 --min-size 240 --max-size 320 --no-pretrained --max-images 8

What it measures, on a VOC-layout dataset (splits ``--train-split`` / ``--test-split``):

- the 4-step alternating training of the paper (sec. 3.2), as the pipeline runs it
  (``tasks/train.py``, ``tasks/weights.py``): 1 RPN (shared + rpn) from the initial weights;
  2 detector (shared + detector) on a fresh copy of the initial weights, on step 1's cached
  proposals; 3 step 2's network with the RPN layers reset to their initial values, RPN only;
  4 cls_score / bbox_pred reset, detector only, on step 3's cached proposals;
- per step: wall seconds, iterations/s, peak GPU memory (``torch.cuda.max_memory_allocated``,
  on CUDA), the mean losses of the first and last 10 iterations; the time of every proposal /
  detection pass over a split;
- VOC07 mAP and per-class AP on the test split of the shared model (step 4: step 3's RPN and
  step 4's detector on the shared convs of step 2) and of the unshared pair (step 1's RPN
  proposals -> step 2's detector); the total wall time.

It ends with one JSON line of all figures (also written to ``--out``). It uses only the
library (``model/``) and torch / torchvision / numpy: never ``tasks/`` or ``flows/``, which
import prefect / mlflow, absent on the GPU machine. Checkpoints go to a temporary folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.alternating import FOUR_STEPS, reset_state
from model.config import AnchorConfig, DetectorConfig, ProposalConfig
from model.data.voc import load_voc
from model.evaluation.voc_ap import evaluate_voc
from model.faster_rcnn import FasterRCNN
from model.inference import detect_dataset, propose_dataset
from model.training import TrainSchedule, train_detector, train_rpn

BACKBONE_OPTIONS = {"pool_size": 7, "top": "fc", "fc_width": 1024}
# The recipe (what each step trains, which layers it resets) is the library's.
STEP1, STEP2, STEP3, STEP4 = FOUR_STEPS


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="VOC-layout dataset root")
    p.add_argument("--train-split", default="trainval")
    p.add_argument("--test-split", default="test")
    p.add_argument("--max-images", type=int, default=0, help="use only the first N images of each split (0: all)")
    p.add_argument("--device", default="cuda", help="cuda, cuda:1, cpu")
    p.add_argument("--iterations", type=int, nargs=4, default=[800, 1000, 400, 800], metavar="N",
                   help="iterations of steps 1-4 (conf/train/cpu.yaml)")
    p.add_argument("--lr", type=float, default=0.01, help="base lr of every step; x0.1 at 75 %% of a step")
    p.add_argument("--warmup", type=int, default=50, help="linear warm-up iterations")
    p.add_argument("--min-size", type=int, default=480, help="shorter input side (BCCD: native 480)")
    p.add_argument("--max-size", type=int, default=640)
    p.add_argument("--no-pretrained", action="store_true", help="random backbone instead of ImageNet weights")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh layers (pipeline.init_seed)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (image decoding, CPU runs)")
    p.add_argument("--out", type=Path, help="also write the JSON line to this file")
    args = p.parse_args()
    if min(args.iterations) < 1:
        p.error("--iterations: every step needs at least 1 iteration")
    return args


def log(message: str) -> None:
    print(f"[cuda_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Clock:
    """Wall time of a block; on CUDA it waits for queued kernels first, else the GPU work leaks out."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def __enter__(self) -> Self:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self.start
        self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else None


def schedule(iterations: int, args: argparse.Namespace, seed: int) -> TrainSchedule:
    # conf/train/cpu.yaml: lr step at 75 %, warm-up, checkpoints every 200 iterations (their
    # save time is part of a step's wall time, as in the pipeline).
    return TrainSchedule(iterations=iterations, base_lr=args.lr, lr_steps=(int(0.75 * iterations),),
                         warmup_iterations=args.warmup, checkpoint_every=200, seed=seed)


def loss_ends(history: list[dict[str, float]], window: int = 10) -> dict[str, float]:
    """Mean total loss of the first and last ``window`` iterations: did the step learn at all?"""
    first, last = history[:window], history[-window:]
    return {"loss_first": sum(h["total"] for h in first) / len(first),
            "loss_last": sum(h["total"] for h in last) / len(last)}


def mib(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Kept on the CPU so that the copy does not count in the GPU memory peaks.
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("cuda_check: --device cuda asked for, but torch.cuda.is_available() is False")
    started = time.perf_counter()
    figures: dict = {"torch": torch.__version__, "device": str(device),
                     "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}

    train = load_voc(args.data, args.train_split)
    test = load_voc(args.data, args.test_split, classes=train.classes)  # same labels as training
    if args.max_images > 0:
        train = dataclasses.replace(train, records=train.records[: args.max_images])
        test = dataclasses.replace(test, records=test.records[: args.max_images])
    figures.update(classes=list(train.classes), train_images=len(train), test_images=len(test))
    log(f"data {args.data}: {len(train)} {args.train_split} / {len(test)} {args.test_split} images, "
        f"classes {train.classes}; device {figures['device_name']}")

    cfg = DetectorConfig(
        class_names=train.classes, backbone="efficientnet_lite0", pretrained=not args.no_pretrained,
        min_size=args.min_size, max_size=args.max_size, anchors=AnchorConfig(scales=(2.0, 4.0, 8.0, 16.0)),
        cache_proposals=ProposalConfig(pre_nms_top_n=-1, post_nms_top_n=300),
        test_proposals=ProposalConfig(pre_nms_top_n=1000, post_nms_top_n=100),
    )
    cfg.roi.batch_size_per_image = 64
    torch.manual_seed(args.seed)  # the fresh RPN / cls / bbox layers, as init_weights draws them
    model = FasterRCNN(cfg, BACKBONE_OPTIONS).to(device)
    initial = cpu_state(model)  # steps 1 and 2 both start here; steps 3 and 4 reset layers to it
    initial_groups = {name: cpu_state(m) for name, m in model.group_modules().items()}
    steps: dict[str, dict] = {}
    passes: dict[str, dict] = {}

    def timed_pass(name: str, fn, dataset):
        with Clock(device) as clock:
            result = fn()
        passes[name] = {"seconds": round(clock.seconds, 3), "images_per_s": round(len(dataset) / clock.seconds, 3),
                        "peak_gpu_mib": mib(clock.peak_mib)}
        log(f"{name}: {clock.seconds:.1f} s, {len(dataset) / clock.seconds:.2f} images/s")
        return result

    def run_step(index: int, train_fn, *train_args, tmp: Path):
        step = FOUR_STEPS[index]
        name, iterations, groups = step.name, args.iterations[index], step.trains
        log(f"{name}: {iterations} iterations, training {groups}")
        with Clock(device) as clock:
            history = train_fn(*train_args, schedule(iterations, args, seed=index + 1), tmp / f"{name}.pt",
                               trainable_groups=groups, resume=False, progress=False)
        steps[name] = {"iterations": iterations, "seconds": round(clock.seconds, 3),
                       "iterations_per_s": round(iterations / clock.seconds, 3),
                       "peak_gpu_mib": mib(clock.peak_mib),
                       **{k: round(v, 4) for k, v in loss_ends(history).items()}}
        peak = f", peak GPU {steps[name]['peak_gpu_mib']} MiB" if clock.cuda else ""
        log(f"{name}: {clock.seconds:.1f} s, {iterations / clock.seconds:.2f} it/s{peak}, "
            f"loss {steps[name]['loss_first']:.3f} -> {steps[name]['loss_last']:.3f}")

    def reset(step) -> None:
        """The step's reset (model.alternating): its layers back to the initial weights."""
        module = model.group_modules()[step.reset.group]
        module.load_state_dict(reset_state(step.reset, module.state_dict(), initial_groups[step.reset.group]),
                               strict=True)

    with tempfile.TemporaryDirectory(prefix="cuda_check_") as tmp_name:
        tmp = Path(tmp_name)
        # Step 1: RPN with the shared convs, from the initial weights.
        run_step(0, train_rpn, model, train, tmp=tmp)
        step1_train = timed_pass("step1_proposals_train", lambda: propose_dataset(
            model, train, cfg.cache_proposals, progress=False), train)
        # The unshared pair is scored on step 1's test-time proposals; after this the step-1
        # network is no longer needed, so it leaves the GPU before step 2's peak is measured.
        step1_test = timed_pass("step1_proposals_test", lambda: propose_dataset(
            model, test, cfg.test_proposals, progress=False), test)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()

        # Step 2: a FRESH network from the same initial weights (the paper's step 2 starts from
        # ImageNet, not from step 1); pretrained=False since every weight is loaded from `initial`.
        model = FasterRCNN(dataclasses.replace(cfg, pretrained=False), BACKBONE_OPTIONS)
        model.load_state_dict(initial, strict=True)
        model.to(device)
        run_step(1, train_detector, model, train, step1_train, tmp=tmp)
        # Score the unshared pair now: step 4 below overwrites this detector.
        unshared = evaluate_voc(test, timed_pass("unshared_detect_test", lambda: detect_dataset(
            model, test, proposals=step1_test, progress=False), test), metric="voc07")
        log(f"unshared (step-1 RPN -> step-2 detector) VOC07 mAP {unshared.mAP:.4f}")

        # Step 3: step 2's network, RPN layers back to their initial values, RPN only (shared frozen).
        reset(STEP3)
        run_step(2, train_rpn, model, train, tmp=tmp)
        step3_train = timed_pass("step3_proposals_train", lambda: propose_dataset(
            model, train, cfg.cache_proposals, progress=False), train)

        # Step 4: classifier and box regressor back to their initial values (fc6/fc7 kept),
        # detector only, on step 3's proposals. The shared convs never changed after step 2,
        # so this one network is the shared model: step 3's RPN + step 4's detector.
        reset(STEP4)
        run_step(3, train_detector, model, train, step3_train, tmp=tmp)
        shared = evaluate_voc(test, timed_pass("shared_detect_test", lambda: detect_dataset(
            model, test, progress=False), test), metric="voc07")
        log(f"shared (step-3 RPN + step-4 detector) VOC07 mAP {shared.mAP:.4f}")

    figures.update(steps=steps, passes=passes, shared=shared.to_json_dict(), unshared=unshared.to_json_dict(),
                   total_seconds=round(time.perf_counter() - started, 3))
    if device.type == "cuda":
        figures["peak_gpu_mib_overall"] = max(f["peak_gpu_mib"] for f in [*steps.values(), *passes.values()])
    line = json.dumps(figures)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    log(f"done in {figures['total_seconds']:.1f} s")
    print(line)


if __name__ == "__main__":
    main()
