"""The paper's timing table (Table 5): where a detector's time per image goes.

Table 5 splits the test time of one image into **conv** (the shared conv features),
**proposal** (selective search on a CPU, or the RPN's layers, decoding and NMS) and
**region-wise** (RoI pooling, the fc layers, softmax, per-class NMS), for SS + Fast R-CNN
and for RPN + Fast R-CNN. :func:`time_systems` measures the same three phases on the
machine it runs on, on real test images:

- ``ss``: selective search as the pipeline runs it (``model.selective_search``, on the
  CPU), then the detector on its first ``ss_top_n`` boxes (the paper: 2000);
- ``rpn``: the same images through the detector with its own RPN
  (``proposal_cfg``, the paper's 6000 -> NMS -> 300).

The phases are timed by :class:`PhaseTimer` inside :meth:`FasterRCNN.detect`, with a
CUDA synchronise at each phase boundary on a GPU (asynchronous kernels would otherwise be
billed to the next phase). The first ``warmup`` images are run but not counted (lazy
initialisation, allocator, caches). Times are wall-clock milliseconds per image, mean
over the counted images; ``fps`` is ``1000 / total``.
"""
from __future__ import annotations

import platform
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

PHASES = ("conv", "proposal", "region")


class PhaseTimer:
    """Accumulates wall time per phase name; ``device`` decides whether to synchronise CUDA."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self._sync = torch.device(device).type == "cuda" if device is not None else False
        self.seconds: dict[str, float] = defaultdict(float)

    def _synchronize(self) -> None:
        if self._sync:
            torch.cuda.synchronize()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._synchronize()
        started = time.perf_counter()
        try:
            yield
        finally:
            self._synchronize()
            self.seconds[name] += time.perf_counter() - started

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += float(seconds)

    def reset(self) -> None:
        self.seconds.clear()


class _NoTimer:
    """The timer :meth:`FasterRCNN.detect` uses when nobody measures: no synchronising, no clock."""

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        yield


NO_TIMER = _NoTimer()


@dataclass(frozen=True)
class SystemTiming:
    """Milliseconds per image of one system, and the images counted."""

    system: str
    conv_ms: float
    proposal_ms: float
    region_ms: float
    images: int

    @property
    def total_ms(self) -> float:
        return self.conv_ms + self.proposal_ms + self.region_ms

    @property
    def fps(self) -> float:
        return 1000.0 / self.total_ms if self.total_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_ms": self.total_ms, "fps": self.fps}


def device_name(device: torch.device | str) -> str:
    """What ran: the GPU's name on CUDA, else the CPU's model and the thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    model_name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    model_name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model_name} (cpu, {torch.get_num_threads()} threads)"


def _mean_ms(timer: PhaseTimer, name: str, images: int) -> float:
    return 1000.0 * timer.seconds.get(name, 0.0) / max(images, 1)


def time_systems(
    detector: Any,
    images: Sequence[tuple[Tensor, float, Any]],
    selective_search: Callable[[Any], Tensor],
    proposal_cfg: Any,
    *,
    ss_top_n: int = 2000,
    warmup: int = 2,
) -> tuple[SystemTiming, SystemTiming]:
    """``(ss, rpn)`` timings of ``detector`` (a :class:`FasterRCNN`) over ``images``.

    ``images``: ``(input [3, h, w] on the detector's device, scale, original RGB
    [H, W, 3] uint8)`` per image; ``selective_search(original)`` returns boxes ``[P, 4]``
    in original pixels (its time is the SS system's proposal phase);
    ``proposal_cfg``: the RPN's test settings. Images beyond ``warmup`` are counted.
    """
    if len(images) <= warmup:
        raise ValueError(f"need more than warmup={warmup} images to time, got {len(images)}")
    device = next(detector.parameters()).device
    ss_timer, rpn_timer = PhaseTimer(device), PhaseTimer(device)
    for index, (image, scale, original) in enumerate(images):
        if index == warmup:
            ss_timer.reset()
            rpn_timer.reset()
        started = time.perf_counter()
        boxes = selective_search(original)[:ss_top_n]
        ss_timer.add("proposal", time.perf_counter() - started)
        detector.detect(image, scale, boxes, timer=ss_timer)
        detector.detect(image, scale, None, timer=rpn_timer, proposal_cfg=proposal_cfg)
    counted = len(images) - warmup
    return tuple(  # type: ignore[return-value]
        SystemTiming(system, *(_mean_ms(timer, name, counted) for name in PHASES), counted)
        for system, timer in (("ss", ss_timer), ("rpn", rpn_timer))
    )


__all__ = ["NO_TIMER", "PHASES", "PhaseTimer", "SystemTiming", "device_name", "time_systems"]
