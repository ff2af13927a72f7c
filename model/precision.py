"""Compute precision of the convolutions and linear layers: float32 (default) or bfloat16.

``bfloat16`` runs the network's convolutions and matrix products under
``torch.autocast`` in bfloat16 (on CPUs with AMX / AVX512-BF16, e.g. Sapphire Rapids Xeons,
several times faster than float32); everything about boxes stays float32: the RPN head's
and the detector's outputs are cast back to float32 (``as_float32``) before anchors are
decoded, boxes clipped, scored, ranked, suppressed or sampled, and losses are float32.
It changes the numbers (bfloat16 keeps 8 significant bits), so it is opt-in, and for
inference only: the ``precision`` argument of ``model.inference``'s ``detect_dataset`` /
``propose_dataset``, the detect CLI's ``--precision``, or ``FRCNN_PRECISION=bfloat16`` for a
whole process (read where those get no precision). Training stays float32: a training step
under bfloat16 autocast was slower on the CPU measured here, not faster (the casts of every
weight and activation, and float32 batch norm between the bfloat16 convolutions), though the
model trains under it (``tests/test_compute_speed.py``). The mAP difference and the speed are
in BENCHMARKS.md ("bfloat16 inference").
"""
from __future__ import annotations

import contextlib
import os

import torch
from torch import Tensor

PRECISIONS = ("float32", "bfloat16")
ENV = "FRCNN_PRECISION"


def check_precision(precision: str, what: str = "precision") -> str:
    """``precision`` if it is one of ``PRECISIONS``; else a ``ValueError`` naming ``what``."""
    if precision not in PRECISIONS:
        raise ValueError(f"{what} must be one of {PRECISIONS}, got {precision!r}")
    return precision


def default_precision() -> str:
    """``FRCNN_PRECISION`` (``float32`` when unset or empty)."""
    value = os.environ.get(ENV, "").strip()
    return check_precision(value, ENV) if value else "float32"


def autocast(device: torch.device | str, precision: str | None = None) -> contextlib.AbstractContextManager:
    """The context the network runs in: bfloat16 autocast on ``device`` for "bfloat16",
    nothing for "float32" (``precision`` None: ``default_precision()``)."""
    chosen = check_precision(precision) if precision is not None else default_precision()
    if chosen == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def as_float32(x: Tensor) -> Tensor:
    """``x`` in float32 (itself, no copy, when it already is: float32 runs are unchanged)."""
    return x if x.dtype == torch.float32 else x.float()
