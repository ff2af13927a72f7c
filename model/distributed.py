"""Data-parallel training over the processes of a ``torch.distributed`` group (``torchrun``).

A training loop (``model.training.run_training``) asks ``current_world()`` how many
processes train together and which one it is. Without a process group (the usual single
process) it is rank 0 of 1 and nothing here runs: the loop is the single-process loop,
bit for bit. With N processes, each iteration:

- every process draws the same ``N x ims_per_batch`` entries from the same seeded image
  order and takes its own slice (rank r: entries ``r*b .. (r+1)*b - 1``), so the N
  shards of an iteration are what one process would draw for a batch of N x b images and
  the order's state is the same in every process (one state in the checkpoint);
- after ``backward`` the gradients are averaged over the processes (``average_gradients``:
  one all-reduce of a flat buffer), so every process takes the same SGD step and the
  weights stay equal without ever being sent; the logged losses are averaged as well;
- random sampling (anchors, RoIs, dropout) is seeded ``seed + rank``, and every
  process's generator states go into the checkpoint, so a killed run resumes in step.

An explicit all-reduce rather than ``DistributedDataParallel``: the loop keeps its own
optimiser, frozen groups and checkpoints, and with one process nothing is wrapped at all.
The effective batch is N x ``ims_per_batch``; ``scaled_learning_rate`` applies the linear
scaling rule (Goyal et al. 2017: lr x N) unless ``pipeline.lr_scaling`` is ``none``.

Backends: NCCL for CUDA, gloo on the CPU (``backend_for``). Only rank 0 writes files.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

#: ``pipeline.lr_scaling`` values: lr x N (the linear rule) or the configured lr as is.
LR_SCALINGS = ("linear", "none")


@dataclass(frozen=True)
class World:
    """This process's place among the processes that train together."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics and runs."""
        return self.rank == 0


def current_world() -> World:
    """Rank and size of the default process group; rank 0 of 1 without one."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def launched_world() -> World:
    """What ``torchrun`` told this process (``RANK``, ``WORLD_SIZE``), before any group exists."""
    return World(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_world(device_type: str) -> World:
    """Join the process group ``torchrun`` set up (env:// rendezvous) when started as one of
    several processes; a no-op in a single process. On CUDA each process takes the GPU of
    its ``LOCAL_RANK`` (``torch.cuda.set_device``: "cuda" then means that GPU)."""
    launched = launched_world()
    if launched.size <= 1 or dist.is_initialized():
        return current_world()
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend_for(torch.device(device_type)))
    return current_world()


def leave_world() -> None:
    """Leave the process group ``init_world`` joined (nothing to do without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def scaled_learning_rate(base_lr: float, world_size: int, scaling: str) -> float:
    """The learning rate for a batch ``world_size`` times the configured one."""
    if scaling not in LR_SCALINGS:
        raise ValueError(f"lr scaling must be one of {LR_SCALINGS}, got {scaling!r}")
    return base_lr * world_size if scaling == "linear" else base_lr


def shard(entries: Sequence[Any], world: World) -> list[Any]:
    """Rank ``world.rank``'s equal slice of one iteration's ``entries`` (len divisible by size)."""
    if len(entries) % world.size:
        raise ValueError(f"{len(entries)} entries cannot be split evenly over {world.size} processes")
    per = len(entries) // world.size
    return list(entries[world.rank * per : (world.rank + 1) * per])


def broadcast_state(module: torch.nn.Module, world: World) -> None:
    """Every process starts from rank 0's parameters and buffers."""
    if world.size <= 1:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def average_gradients(params: Sequence[Tensor], world: World) -> None:
    """Replace each ``param.grad`` by its mean over the processes (one flat all-reduce).

    A parameter without a gradient in some process (no sample reached it there) counts as
    zero there; one without a gradient anywhere keeps ``grad = None``, so SGD skips it as
    the single-process loop would.
    """
    if world.size <= 1 or not params:
        return
    device = params[0].device
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(present)
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for param, anywhere in zip(params, present.tolist()):
        count = param.numel()
        param.grad = flat[offset : offset + count].view_as(param).clone() if anywhere else None
        offset += count


def average_values(values: Mapping[str, float], world: World, device: torch.device) -> dict[str, float]:
    """``values`` (same keys in every process) averaged over the processes; NaN anywhere
    gives NaN everywhere, so every process stops together on a diverged loss."""
    if world.size <= 1:
        return dict(values)
    keys = list(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return {k: float(v) / world.size for k, v in zip(keys, tensor.tolist())}


def gather(obj: Any, world: World) -> list[Any]:
    """``obj`` of every process, by rank (``[obj]`` in a single process)."""
    if world.size <= 1:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


__all__ = [
    "LR_SCALINGS",
    "World",
    "average_gradients",
    "average_values",
    "backend_for",
    "broadcast_state",
    "current_world",
    "gather",
    "init_world",
    "launched_world",
    "leave_world",
    "scaled_learning_rate",
    "shard",
]
