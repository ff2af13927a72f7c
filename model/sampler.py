"""Balanced sampling of foreground and background candidates (one image).

Shapes: N candidates with labels ``[N]`` int64: 1 foreground, 0 background, -1 neither.

Both of the original's layers take at most ``max_foreground`` foreground candidates, a random
subset without replacement, then fill the rest of ``batch_size_per_image`` with background
ones the same way. They differ in when they draw, and both are kept so that results stay
those of the original's layers (and of this project's earlier runs):

- ``anchor_target_layer`` (RPN) draws only when a kind has more candidates than its quota and
  keeps the rest in index order (``shuffle=False``);
- ``proposal_target_layer`` (RoIs) always draws, so the sampled RoIs come in random order
  (``shuffle=True``).

Random draws: ``torch.randperm`` from ``generator`` on the generator's device (the CPU when
None, with torch's global generator), moved to the labels' device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class BalancedSampler:
    """At most ``max_foreground`` foreground and ``batch_size_per_image`` in all."""

    batch_size_per_image: int
    max_foreground: int
    shuffle: bool = False

    def __post_init__(self) -> None:
        if self.batch_size_per_image < 0 or not 0 <= self.max_foreground <= self.batch_size_per_image:
            raise ValueError(
                f"need 0 <= max_foreground <= batch_size_per_image, got {self.max_foreground} / "
                f"{self.batch_size_per_image}"
            )

    def __call__(self, labels: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Indices ``[F]`` of the sampled foreground and ``[B]`` of the sampled background."""
        if labels.dim() != 1:
            raise ValueError(f"labels must be [N], got {tuple(labels.shape)}")
        foreground = self._subset(torch.nonzero(labels == 1).squeeze(1), self.max_foreground, generator)
        background = self._subset(
            torch.nonzero(labels == 0).squeeze(1), self.batch_size_per_image - foreground.numel(), generator
        )
        return foreground, background

    def _subset(self, candidates: Tensor, keep: int, generator: torch.Generator | None) -> Tensor:
        count = candidates.numel()
        keep = max(keep, 0)
        if count <= keep and not self.shuffle:
            return candidates
        device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(count, generator=generator, device=device)[:keep]
        return candidates[order.to(candidates.device)]


def rpn_sampler(batch_size_per_image: int, positive_fraction: float) -> BalancedSampler:
    """The RPN's: ``int(fraction * batch)`` positives (the original truncates), no shuffle."""
    return BalancedSampler(batch_size_per_image, int(positive_fraction * batch_size_per_image), shuffle=False)


def roi_sampler(batch_size_per_image: int, foreground_fraction: float) -> BalancedSampler:
    """The detector's: ``round(fraction * batch)`` foreground (numpy's half-to-even, as
    Python's ``round``), always shuffled."""
    return BalancedSampler(batch_size_per_image, int(round(foreground_fraction * batch_size_per_image)), shuffle=True)
