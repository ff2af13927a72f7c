"""One process of tests/test_distributed_training.py, started by ``torchrun`` (gloo, CPU).

``python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py <voc root> <out dir>``

Each rank trains the tiny model three ways in one process group, writing what the test
compares to ``<out>/rank<r>.pt``: a straight 6-iteration RPN run, the same run killed
after its iteration-3 checkpoint and resumed, and 2 detector iterations; plus the image
ids each rank was given per iteration; then the trained detector's proposals and
detections over the whole set, each rank inferring on its share (``model.inference``).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import model.training as training  # noqa: E402
from model.config import AnchorConfig, DetectorConfig  # noqa: E402
from model.data.voc import load_voc  # noqa: E402
from model.distributed import current_world, init_world  # noqa: E402
from model.faster_rcnn import FasterRCNN  # noqa: E402
from model.inference import detect_dataset, propose_dataset, shard_records  # noqa: E402

CLASSES = ("circle", "square")


class Interrupt(Exception):
    pass


def make_model(seed: int) -> FasterRCNN:
    torch.manual_seed(seed)
    cfg = DetectorConfig(
        class_names=CLASSES, backbone="zf", pretrained=False, min_size=96, max_size=160,
        anchors=AnchorConfig(scales=(2.0, 4.0, 8.0)),
    )
    cfg.roi.batch_size_per_image = 16
    return FasterRCNN(cfg, {"fc_width": 32})


def weights(model: FasterRCNN) -> dict[str, torch.Tensor]:
    return {f"{g}.{k}": v.clone() for g, m in model.group_modules().items() for k, v in m.state_dict().items()}


def main() -> None:
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    world = init_world("cpu")
    assert current_world().size == 2
    dataset = load_voc(root, "trainval", classes=CLASSES)

    # Record which images this rank is given (the real loader, wrapped).
    seen: list[list[str]] = []
    real_load_batch = training.load_batch

    def recording_load_batch(batch, cfg, device):
        seen.append([f"{record.image_id}:{int(flip)}" for record, flip in batch])
        return real_load_batch(batch, cfg, device)

    training.load_batch = recording_load_batch
    schedule = training.TrainSchedule(iterations=6, base_lr=0.01, checkpoint_every=3, seed=7)
    # Rank 1 starts from other weights: rank 0's must reach it (broadcast).
    straight = make_model(seed=world.rank)
    h_straight = training.train_rpn(straight, dataset, schedule, out / "straight.pt", progress=False)
    order = list(seen)

    def stop_at_4(iteration: int, losses: dict[str, float]) -> None:
        if iteration == 4:
            raise Interrupt

    killed = out / "killed.pt"
    try:
        training.train_rpn(make_model(seed=0), dataset, schedule, killed, progress=False, on_log=stop_at_4)
        raise AssertionError("not interrupted")
    except Interrupt:
        pass
    resumed = make_model(seed=99)  # everything must come from the checkpoint
    h_resumed = training.train_rpn(resumed, dataset, schedule, killed, progress=False)

    detector = make_model(seed=0)
    proposals = {r.image_id: torch.tensor([o.box for o in r.objects]).reshape(-1, 4).repeat(4, 1) +
                 torch.tensor([[0.0, 0.0, 6.0, 6.0]]) for r in dataset.records}
    detector_schedule = training.TrainSchedule(iterations=2, base_lr=0.01, seed=3, ims_per_batch=1)
    training.train_detector(detector, dataset, proposals, detector_schedule, out / "detector.pt", progress=False)

    detector.eval()
    with torch.inference_mode():
        proposed = propose_dataset(detector, dataset, progress=False)
        detected = detect_dataset(detector, dataset, progress=False)
    torch.save({"straight": weights(straight), "h_straight": h_straight, "order": order,
                "resumed": weights(resumed), "h_resumed": h_resumed, "detector": weights(detector),
                "proposed": proposed, "shard": [r.image_id for r in shard_records(dataset.records, world)],
                "detected": {k: (d.boxes, d.scores, d.labels) for k, d in detected.items()}},
               out / f"rank{world.rank}.pt")


if __name__ == "__main__":
    main()
