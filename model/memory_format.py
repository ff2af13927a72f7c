"""The memory layout convolution activations run in: channels-last (NHWC) on the CPU.

Shapes: ``[N, C, H, W]`` activations (images, feature maps, pooled RoIs); the layout changes
the strides only, never the shape or the values a tensor holds.

oneDNN, which runs PyTorch's CPU convolutions, computes in NHWC (or blocked) layouts; given
the default NCHW tensors it reorders every convolution's input and output, and its NCHW
depthwise kernels are slow. Handing it channels-last activations removes those reorders
(BENCHMARKS.md, "Model speed": the detector top and the trunk on this Xeon). Only the
activations are converted, at the two entries of the convolutional parts (the trunk's input,
the detector top's pooled RoIs); weights keep their layout, so state dicts and checkpoints
are unchanged. The convolutions' results are the same function computed in another order,
so they differ from the NCHW ones in the last bits of float32; every path of the detector
uses the same layout, so batch-of-one and per-image results stay equal bit for bit.

Other devices keep NCHW (not measured on a GPU yet). ``CPU_CHANNELS_LAST`` turns it off
for a whole process (benchmarks compare both).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

#: Channels-last activations for convolutions on the CPU; False keeps NCHW everywhere.
CPU_CHANNELS_LAST = True


def conv_layout(x: Tensor) -> Tensor:
    """``x`` ``[N, C, H, W]`` in the layout its device's convolutions are fastest in."""
    if CPU_CHANNELS_LAST and x.device.type == "cpu" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def has_convolutions(module: nn.Module) -> bool:
    """Whether ``module`` holds a 2-d convolution (a fully connected top gains nothing from
    channels-last: it flattens the pooled RoIs in NCHW order)."""
    return any(isinstance(m, nn.Conv2d) for m in module.modules())
