"""Our Faster R-CNN against torchvision's, same backbone, anchors, RoI size and proposal counts.

    python benchmarks/vs_torchvision.py [--backbone efficientnet_lite0] [--min-size 600]
        [--images 4] [--repeats 2] [--threads N] [--device cpu] [--amp]

Both detectors get the same modules with the same (random) weights: our backbone's shared
trunk (with its input normalisation) as torchvision's ``backbone`` (``out_channels`` set),
a copy of our backbone's detector ``top`` as ``box_head``, RoIPool of the same size (a small
adapter, since torchvision's heads expect ``MultiScaleRoIAlign``'s call), the same nine
anchors (sizes 128/256/512 x ratios 0.5/1/2, stride 16) and the paper's proposal counts.
Our RPN head is shared too: torchvision's RPN gets ``sigmoid(l_object - l_background)`` of
our two-way logits, the same probability as our softmax. Differences that remain and are
printed: torchvision's anchors are centred on (0, 0) with its own rounding (ours are
py-faster-rcnn's, centred on (7.5, 7.5)), it pads inputs to a multiple of 32, trains the RPN
with a binary cross-entropy on that one logit, and its ``min_size`` filter on proposals is
1e-3 px (ours 16 px at the original scale).

Inference: ms per image, from the original uint8 image to detections (our
``prepare_image`` + ``detect_batch``; torchvision's forward including its own resize), on
batches of ``--batch-size`` images (one padded batch through the trunk in both).
Training: ms per step of approximate joint training on a batch of two images (RPN loss +
detector loss on the RPN's 12000 -> 2000 proposals, 64 RoIs per image, backward, SGD step);
ours runs ``FasterRCNN.joint_losses_batch`` (the two images as one padded batch through the
trunk, as torchvision does). The last line is
``infer_ratio=R1 train_ratio=R2`` (ours / theirs; below 1 means ours is faster).

``--device cuda --amp`` times a GPU run under ``torch.autocast`` (float16); without CUDA it
stops with a clear message. ``--bf16`` runs both detectors under CPU bfloat16 autocast (ours
through ``model.precision``, which keeps its box arithmetic in float32; torchvision's as
autocast leaves it, except that its RoIPool adapter pools in float32, torchvision's CPU
``roi_pool`` having no bfloat16 kernel). ``--no-channels-last`` runs ours in NCHW
(``model.memory_format``), to measure that lever; torchvision's always runs in PyTorch's
default NCHW layout (its modules are copies of ours, whose weights stay NCHW).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign, roi_pool

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import DetectorConfig  # noqa: E402
from model.data.transforms import prepare_image  # noqa: E402
from model import memory_format  # noqa: E402
from model.faster_rcnn import FasterRCNN  # noqa: E402
from model.precision import autocast as model_autocast  # noqa: E402
from model.roi import detector_loss  # noqa: E402

NUM_CLASSES = 20  # VOC


class SharedTrunk(nn.Module):
    """Our backbone's normalisation + shared convs, as torchvision wants a backbone."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.inner = backbone
        self.out_channels = backbone.feature_channels

    def forward(self, images: Tensor) -> "OrderedDict[str, Tensor]":
        return OrderedDict([("0", self.inner.shared(self.inner.normalize(images)))])


class RoIPoolAdapter(MultiScaleRoIAlign):
    """``torchvision.ops.roi_pool`` behind ``MultiScaleRoIAlign``'s call (torchvision checks the type)."""

    def __init__(self, output_size: int, spatial_scale: float) -> None:
        super().__init__(["0"], output_size, sampling_ratio=0)
        self.pool_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes) -> Tensor:
        # torchvision's CPU roi_pool has no bfloat16 kernel (--bf16): pool in float32, as ours does.
        return roi_pool(features["0"].float(), [p.float() for p in proposals], self.pool_size, self.spatial_scale)


class SharedRPNHead(nn.Module):
    """Our RPN head behind torchvision's RPN-head call, giving the same scores and deltas.

    torchvision scores an anchor with one logit through a sigmoid; ours with two through a
    softmax. ``sigmoid(l_object - l_background)`` equals the softmax's object probability,
    so feeding that difference makes both RPNs rank and regress identically.
    """

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        objectness, deltas = [], []
        for x in features:
            hidden = self.head.relu(self.head.conv(x))
            logits = self.head.cls(hidden)  # [N, 2A, H, W], channel c*A + a
            n, _, height, width = logits.shape
            logits = logits.view(n, 2, self.head.num_anchors, height, width)
            objectness.append(logits[:, 1] - logits[:, 0])  # [N, A, H, W]
            deltas.append(self.head.reg(hidden))  # [N, 4A, H, W], anchor-major like torchvision
        return objectness, deltas


class FlattenTop(nn.Module):
    """Our detector ``top`` maps ``[R, C, p, p]`` -> ``[R, D]``, exactly a torchvision box head."""

    def __init__(self, top: nn.Module) -> None:
        super().__init__()
        self.top = top

    def forward(self, x: Tensor) -> Tensor:
        return self.top(x)


def build_ours(args: argparse.Namespace) -> FasterRCNN:
    cfg = DetectorConfig(
        class_names=tuple(f"class{i}" for i in range(NUM_CLASSES)),
        backbone=args.backbone,
        pretrained=False,
        min_size=args.min_size,
        max_size=args.max_size,
    )
    torch.manual_seed(0)
    options = {"pool_size": args.pool_size} if args.pool_size else {}
    return FasterRCNN(cfg, options)


def build_theirs(ours: FasterRCNN) -> TorchvisionFasterRCNN:
    cfg = ours.cfg
    backbone = copy.deepcopy(ours.backbone)
    sizes = tuple(int(cfg.anchors.base_size * s) for s in cfg.anchors.scales)
    anchors = AnchorGenerator(sizes=(sizes,), aspect_ratios=(tuple(cfg.anchors.ratios),))
    head = copy.deepcopy(ours.roi_head)
    model = TorchvisionFasterRCNN(
        SharedTrunk(backbone),
        num_classes=None,
        # Our backbone normalises inside; keep torchvision's transform to resizing only.
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        rpn_anchor_generator=anchors,
        rpn_head=SharedRPNHead(copy.deepcopy(ours.rpn.head)),
        rpn_pre_nms_top_n_train=cfg.train_proposals.pre_nms_top_n,
        rpn_post_nms_top_n_train=cfg.train_proposals.post_nms_top_n,
        rpn_pre_nms_top_n_test=cfg.test_proposals.pre_nms_top_n,
        rpn_post_nms_top_n_test=cfg.test_proposals.post_nms_top_n,
        rpn_nms_thresh=cfg.test_proposals.nms_threshold,
        rpn_fg_iou_thresh=cfg.rpn.positive_iou,
        rpn_bg_iou_thresh=cfg.rpn.negative_iou,
        rpn_batch_size_per_image=cfg.rpn.batch_size_per_image,
        rpn_positive_fraction=cfg.rpn.positive_fraction,
        box_roi_pool=RoIPoolAdapter(ours.backbone.pool_size, 1.0 / ours.backbone.stride),
        box_head=FlattenTop(head.top),
        box_predictor=FastRCNNPredictor(ours.backbone.top_channels, NUM_CLASSES + 1),
        box_score_thresh=cfg.test.score_threshold,
        box_nms_thresh=cfg.test.nms_threshold,
        box_detections_per_img=cfg.test.max_detections_per_image,
        box_fg_iou_thresh=cfg.roi.foreground_iou,
        box_bg_iou_thresh=cfg.roi.background_iou_high,
        box_batch_size_per_image=cfg.roi.batch_size_per_image,
        box_positive_fraction=cfg.roi.foreground_fraction,
    )
    # Same classifier / regressor weights as ours.
    model.roi_heads.box_predictor.cls_score.load_state_dict(ours.roi_head.cls_score.state_dict())
    model.roi_heads.box_predictor.bbox_pred.load_state_dict(ours.roi_head.bbox_pred.state_dict())
    return model


def print_settings(ours: FasterRCNN, theirs: TorchvisionFasterRCNN, args: argparse.Namespace) -> None:
    cfg = ours.cfg
    rpn = theirs.rpn
    print(f"backbone {cfg.backbone} (random init), {NUM_CLASSES} classes, device {args.device}"
          f"{' amp' if args.amp else ''}{' bf16' if args.bf16 else ''}, threads {torch.get_num_threads()}; "
          f"ours in {'channels-last' if memory_format.CPU_CHANNELS_LAST and args.device == 'cpu' else 'NCHW'}, "
          "torchvision in NCHW")
    print(f"input: shorter side {cfg.min_size}, longer <= {cfg.max_size}; "
          f"images {args.images} of {args.height}x{args.width}")
    print(f"anchors: ours {ours.rpn.num_anchors} (scales {cfg.anchors.scales}, ratios {cfg.anchors.ratios}); "
          f"theirs sizes {theirs.rpn.anchor_generator.sizes}, ratios {theirs.rpn.anchor_generator.aspect_ratios}")
    print(f"proposals test: ours {cfg.test_proposals.pre_nms_top_n}->{cfg.test_proposals.post_nms_top_n}, "
          f"theirs {rpn._pre_nms_top_n['testing']}->{rpn._post_nms_top_n['testing']}; train: ours "
          f"{cfg.train_proposals.pre_nms_top_n}->{cfg.train_proposals.post_nms_top_n}, theirs "
          f"{rpn._pre_nms_top_n['training']}->{rpn._post_nms_top_n['training']}; NMS 0.7 both")
    print(f"RoI: RoIPool {ours.backbone.pool_size}x{ours.backbone.pool_size} both; "
          f"{cfg.roi.batch_size_per_image} RoIs/image, fg {cfg.roi.foreground_fraction} both; "
          f"RPN batch {cfg.rpn.batch_size_per_image} both")
    print("same RPN head weights (theirs scores sigmoid(l_obj - l_bg) = our softmax); differences: "
          "their anchors centred on 0 (ours py-faster-rcnn's), inputs padded to /32, BCE RPN loss, "
          "proposal min size 1e-3 px (ours 16 px x scale)")


def make_images(args: argparse.Namespace) -> tuple[list[np.ndarray], list[Tensor], list[Tensor]]:
    rng = np.random.default_rng(0)
    images, boxes, labels = [], [], []
    for _ in range(args.images):
        # Smooth random content (noise would make every anchor look alike).
        small = rng.integers(0, 256, size=(args.height // 16, args.width // 16, 3), dtype=np.uint8)
        images.append(np.ascontiguousarray(np.kron(small, np.ones((16, 16, 1), dtype=np.uint8))))
        xy = rng.uniform(0, [args.width * 0.6, args.height * 0.6], size=(3, 2))
        wh = rng.uniform(40, [args.width * 0.4, args.height * 0.4], size=(3, 2))
        boxes.append(torch.tensor(np.concatenate([xy, xy + wh], 1), dtype=torch.float32))
        labels.append(torch.tensor(rng.integers(1, NUM_CLASSES + 1, size=3), dtype=torch.int64))
    return images, boxes, labels


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - start) * 1000.0


def autocast(args: argparse.Namespace):
    """The autocast torchvision's detector runs under."""
    if args.amp:
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    if args.bf16:
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", enabled=False)


def our_autocast(args: argparse.Namespace):
    """The autocast ours runs under (``model.precision`` for bfloat16)."""
    return model_autocast(args.device, "bfloat16") if args.bf16 else autocast(args)


def bench_inference(ours, theirs, images, args) -> tuple[float, float]:
    ours.eval()
    theirs.eval()
    device = args.device
    cfg = ours.cfg

    size = args.batch_size
    batches = [[images[(i + j) % len(images)] for j in range(size)] for i in range(0, len(images), size)]

    def run_ours(batch: list[np.ndarray]) -> None:
        prepared = [prepare_image(image, cfg.min_size, cfg.max_size) for image in batch]
        with our_autocast(args):
            ours.detect_batch([t.to(device) for t, _ in prepared], [s for _, s in prepared])

    def run_theirs(batch: list[np.ndarray]) -> None:
        tensors = [torch.from_numpy(image).permute(2, 0, 1).float().to(device) for image in batch]
        with torch.no_grad(), autocast(args):
            theirs(tensors)

    run_ours(batches[0])  # warm-up (allocations, anchor cache)
    run_theirs(batches[0])
    ours_ms, theirs_ms = [], []
    for _ in range(args.repeats):
        for batch in batches:  # alternate, so load changes on a shared machine hit both alike
            ours_ms.append(timed(lambda: run_ours(batch), device) / size)
            theirs_ms.append(timed(lambda: run_theirs(batch), device) / size)
    return statistics.median(ours_ms), statistics.median(theirs_ms)


def bench_training(ours, theirs, images, boxes, labels, args) -> tuple[float, float]:
    device = args.device
    cfg = ours.cfg
    ours.set_trainable(FasterRCNN.GROUPS)
    ours.train()
    theirs.train()
    opt_ours = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=1e-6, momentum=0.9)
    opt_theirs = torch.optim.SGD([p for p in theirs.parameters() if p.requires_grad], lr=1e-6, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    prepared = []
    for image, gt, lab in zip(images, boxes, labels):
        tensor, scale = prepare_image(image, cfg.min_size, cfg.max_size)
        prepared.append((tensor.to(device), (gt * scale).to(device), lab.to(device), scale))
    batches = [(i % len(images), (i + 1) % len(images)) for i in range(0, len(images), 2)]

    def step_ours(batch) -> None:
        with our_autocast(args):
            image, gt, lab, scale = (list(t) for t in zip(*(prepared[i] for i in batch)))
            losses, det = ours.joint_losses_batch(image, gt, lab, scale, generator)
            losses = dict(losses)
            losses.update(detector_loss(*det, sigma=cfg.roi.sigma))
            total = sum(losses.values())
        opt_ours.zero_grad(set_to_none=True)
        total.backward()
        opt_ours.step()

    def step_theirs(batch) -> None:
        with autocast(args):
            tensors = [torch.from_numpy(images[i]).permute(2, 0, 1).float().to(device) for i in batch]
            targets = [{"boxes": boxes[i].to(device), "labels": labels[i].to(device)} for i in batch]
            total = sum(theirs(tensors, targets).values())
        opt_theirs.zero_grad(set_to_none=True)
        total.backward()
        opt_theirs.step()

    step_ours(batches[0])
    step_theirs(batches[0])
    ours_ms, theirs_ms = [], []
    for _ in range(args.repeats):
        for batch in batches:
            ours_ms.append(timed(lambda: step_ours(batch), device))
            theirs_ms.append(timed(lambda: step_theirs(batch), device))
    return statistics.median(ours_ms), statistics.median(theirs_ms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0",
                        choices=("efficientnet_lite0", "efficientnet_lite2", "vgg16", "zf"))
    parser.add_argument("--pool-size", type=int, default=None,
                        help="RoIPool size for efficientnet_lite* (backbone option; default 14)")
    parser.add_argument("--min-size", type=int, default=600)
    parser.add_argument("--max-size", type=int, default=1000)
    parser.add_argument("--images", type=int, default=4, help="number of images (even)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="float16 autocast (CUDA only)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast on the CPU, both detectors")
    parser.add_argument("--no-channels-last", action="store_true",
                        help="ours in NCHW like torchvision's (default: channels-last on the CPU)")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--batch-size", type=int, default=1, help="images per inference batch (default 1)")
    args = parser.parse_args(argv)

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    if args.amp and not args.device.startswith("cuda"):
        parser.error("--amp needs --device cuda")
    if args.bf16 and args.device != "cpu":
        parser.error("--bf16 is the CPU's autocast; on a GPU use --amp")
    if args.no_channels_last:
        memory_format.CPU_CHANNELS_LAST = False
    if args.images < 2 or args.images % 2:
        parser.error("--images must be an even number >= 2 (training steps use pairs)")
    if args.pool_size and not args.backbone.startswith("efficientnet_lite"):
        parser.error("--pool-size applies to efficientnet_lite* backbones only")
    if args.threads:
        torch.set_num_threads(args.threads)

    ours = build_ours(args)
    theirs = build_theirs(ours)
    ours.to(args.device)
    theirs.to(args.device)
    print_settings(ours, theirs, args)
    images, boxes, labels = make_images(args)

    infer_ours, infer_theirs = bench_inference(ours, theirs, images, args)
    print(f"inference ms/image: ours {infer_ours:.1f}, torchvision {infer_theirs:.1f}")
    train_ratio = float("nan")
    if not args.skip_train:
        train_ours, train_theirs = bench_training(ours, theirs, images, boxes, labels, args)
        print(f"training ms/step (2 images): ours {train_ours:.1f}, torchvision {train_theirs:.1f}")
        train_ratio = train_ours / train_theirs
    print(f"infer_ratio={infer_ours / infer_theirs:.3f} train_ratio={train_ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
