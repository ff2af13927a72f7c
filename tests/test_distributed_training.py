"""Data-parallel training (model/distributed.py): 2 gloo processes under torchrun on the CPU.

One torchrun launch (tests/ddp_worker.py) trains a tiny model in 2 processes; this test
checks what it wrote: both ranks end with the same weights (gradients averaged, rank 0's
start broadcast), each iteration's images are one process's batch of 2 split in two, a
killed 2-process run resumes to the straight run's weights and losses, and its checkpoint
refuses a resume by another number of processes; and inference shared out over the two
(each rank on every other image) gives every rank the one-process proposals and detections.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.checkpoint import CheckpointError, read_checkpoint
from model.data.synthetic import SyntheticSpec, generate_synthetic_voc
from model.data.voc import load_voc
from model.distributed import World, scaled_learning_rate, shard
from model.inference import detect_dataset, propose_dataset
from model.training import ImageOrder, TrainSchedule, train_rpn

from ddp_worker import make_model

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("circle", "square")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict]]:
    spec = SyntheticSpec(
        num_images=6, image_size=(128, 96), seed=1, classes=CLASSES, objects_per_image=(1, 2),
        object_size=(24.0, 48.0), clutter_per_image=(0, 1), tiny_fraction=0.0,
        truncation_fraction=0.0, test_fraction=0.0, val_fraction=0.0,
    )
    root = generate_synthetic_voc(tmp_path_factory.mktemp("syn") / "voc", spec)
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "ddp_worker.py"), str(root), str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    return root, out, ranks


def test_ranks_take_equal_steps_on_their_own_shards(two_ranks) -> None:
    root, _, (r0, r1) = two_ranks
    assert _same(r0["straight"], r1["straight"])  # rank 1 started from other weights
    assert _same(r0["detector"], r1["detector"])
    assert r0["h_straight"] == r1["h_straight"]  # losses averaged over the ranks
    # Each iteration: the first image of one process's 2-image draw to rank 0, the second to rank 1.
    dataset = load_voc(root, "trainval", classes=CLASSES)
    order = ImageOrder(len(dataset.records), True, 7)
    records = dataset.records  # every image has an object: train_rpn keeps all
    expected = []
    for _ in range(6):
        expected.append([f"{records[i].image_id}:{int(f)}" for i, f in (order.next(), order.next())])
    assert [a + b for a, b in zip(r0["order"], r1["order"])] == expected
    assert r0["order"] != r1["order"]


def test_killed_two_process_run_resumes_to_the_straight_run(two_ranks) -> None:
    root, out, (r0, r1) = two_ranks
    for rank in (r0, r1):
        assert _same(rank["resumed"], r0["straight"])
        assert rank["h_resumed"] == r0["h_straight"]
    state = read_checkpoint(out / "killed.pt")["train_state"]
    assert state["world_size"] == 2 and len(state["rng"]["ranks"]) == 2
    assert not torch.equal(state["rng"]["ranks"][0]["sampling"], state["rng"]["ranks"][1]["sampling"])
    # Only rank 0 wrote: the detector run's checkpoint exists once, no per-rank copies.
    assert sorted(p.name for p in out.glob("*.pt") if not p.name.startswith("rank")) == [
        "detector.pt", "killed.pt", "straight.pt"]
    # One process cannot resume a 2-process run: the error names the file and both counts.
    schedule = TrainSchedule(iterations=6, base_lr=0.01, checkpoint_every=3, seed=7)
    dataset = load_voc(root, "trainval", classes=CLASSES)
    with pytest.raises(CheckpointError, match=r"killed\.pt.*2 processes, this run has 1"):
        train_rpn(make_model(0), dataset, schedule, out / "killed.pt", progress=False)


def test_inference_shared_out_equals_one_process(two_ranks, one_thread) -> None:
    root, _, (r0, r1) = two_ranks
    dataset = load_voc(root, "trainval", classes=CLASSES)
    ids = [r.image_id for r in dataset.records]
    assert r0["shard"] == ids[0::2] and r1["shard"] == ids[1::2]
    model = make_model(0)
    for group, module in model.group_modules().items():
        prefix = f"{group}."
        module.load_state_dict({k[len(prefix):]: v for k, v in r0["detector"].items() if k.startswith(prefix)})
    model.eval()
    with torch.inference_mode():
        proposed = propose_dataset(model, dataset, progress=False)
        detected = detect_dataset(model, dataset, progress=False)
    for rank in (r0, r1):
        assert list(rank["proposed"]) == ids and list(rank["detected"]) == ids  # the dataset's order
        for image_id in ids:
            assert all(torch.equal(a, b) for a, b in zip(rank["proposed"][image_id], proposed[image_id]))
            det = detected[image_id]
            assert all(torch.equal(a, b) for a, b in zip(rank["detected"][image_id], (det.boxes, det.scores, det.labels)))
    assert sum(int(proposed[i][0].shape[0]) for i in ids) > 0


def test_sharding_and_the_linear_rule() -> None:
    entries = list(range(6))
    assert shard(entries, World(0, 2)) == [0, 1, 2] and shard(entries, World(1, 2)) == [3, 4, 5]
    assert shard(entries, World()) == entries
    with pytest.raises(ValueError, match="evenly"):
        shard(entries, World(0, 4))
    assert scaled_learning_rate(0.001, 4, "linear") == pytest.approx(0.004)
    assert scaled_learning_rate(0.001, 4, "none") == 0.001
    with pytest.raises(ValueError, match="linear"):
        scaled_learning_rate(0.001, 2, "sqrt")
