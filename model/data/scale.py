"""The network-input scale rule, and the smallest input the detector can use.

Torch-free, so that validating a dataset (``model.data.validate``) applies the
same rule as training and inference (``model.data.transforms``) without loading torch.
"""
from __future__ import annotations

from model.config import ProposalConfig

# Each side of the resized network input must reach this many pixels: two cells of
# the stride-16 feature map, and the side of the smallest anchors the pipeline uses
# (base 16 x scale 2 in params.yaml). Below it no anchor lies fully inside the image,
# so RPN training labels none there (only anchors inside are labelled) and the image
# trains nothing; what it could detect is a few pixels of padding.
MIN_INPUT_SIDE = 32

# Proposals narrower or lower than ``ProposalConfig.min_size`` *original-image* pixels
# are dropped. Every proposal is clipped to the image, so an image with a side below
# it never keeps a proposal: the detector sees no RoI in it, in training or at test.
MIN_IMAGE_SIDE = ProposalConfig().min_size


def compute_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """Scale that takes the shorter side to ``min_size`` unless the longer side would pass ``max_size``.

    The original's rule: ``s = min_size / short``; if ``round(s * long) > max_size`` then
    ``s = max_size / long``. (``round`` is half-to-even like the original's ``np.round``.)
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    if min_size <= 0 or max_size <= 0:
        raise ValueError(f"min_size and max_size must be positive, got {min_size} / {max_size}")
    short, long = min(height, width), max(height, width)
    scale = float(min_size) / float(short)
    if round(scale * long) > max_size:
        scale = float(max_size) / float(long)
    return scale


def resized_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(h, w)`` that ``cv2.resize(fx=fy=scale)`` produces (OpenCV rounds half to even)."""
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


