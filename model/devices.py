"""Turning a device name (``cpu``, ``cuda``, ``cuda:1``, ``mps``) into a usable ``torch.device``.

Asked for a device this machine does not have, torch fails late and misleadingly:
``torch.load(map_location="cuda")`` on a CPU-only machine raises from inside the
unpickler, which reads like a corrupt checkpoint. :func:`resolve_device` answers
first, with one message that names the device and what this machine has.
"""
from __future__ import annotations

import torch


class DeviceError(ValueError):
    """The requested device is not a device name, or this machine does not have it."""


def available_devices() -> list[str]:
    """What this machine can run on, e.g. ``["cpu", "cuda:0"]``."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def resolve_device(name: str | torch.device, what: str = "device") -> torch.device:
    """``torch.device(name)`` once it is known to exist here; else :class:`DeviceError`.

    ``what`` names the setting in the message (``--device``, ``FRCNN_DEVICE``).
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError) as error:
        raise DeviceError(f"{what} {str(name)!r} is not a device name ({error}); this machine has {available_devices()}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA"
            raise DeviceError(
                f"{what} {str(name)!r}: CUDA is not available on this machine (torch {torch.__version__} built with "
                f"{build}, {torch.cuda.device_count()} GPU(s) visible); use cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"{what} {str(name)!r}: there is no GPU {device.index}; this machine has {available_devices()}"
            )
        return device
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(f"{what} {str(name)!r}: MPS is not available on this machine; it has {available_devices()}")
        return device
    raise DeviceError(f"{what} {str(name)!r}: device type {device.type!r} is not supported; this machine has {available_devices()}")
