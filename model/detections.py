"""Per-image detection output shared by the detector, the CLI and the evaluators."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Detections:
    """Detections of one image in original-image coordinates (0-based inclusive).

    boxes ``[D, 4]`` float, scores ``[D]`` float, labels ``[D]`` int64 in 1..K
    (label ``i`` names ``class_names[i - 1]``).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor

    @staticmethod
    def empty() -> "Detections":
        return Detections(torch.zeros((0, 4)), torch.zeros((0,)), torch.zeros((0,), dtype=torch.int64))

    def __len__(self) -> int:
        return int(self.scores.shape[0])
