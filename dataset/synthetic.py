"""Generated datasets that need no download.

Rectangles (docs/design.md §4.3, after Larochelle et al. 2007): a 28 x 28 black image with the one-pixel
white outline of an axis-aligned rectangle. Height and width are drawn uniformly from
[min_side, 28] (pairs whose difference is under 3 pixels are redrawn), the position uniformly
among those where the rectangle fits. Label 1 if the rectangle is taller than wide, else 0.
Each split has its own random stream derived from ``seed``, so the data are deterministic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from dataset.registry import DatasetError, Splits, register

SIDE = 28


def rectangles(count: int, seed: int, min_side: int = 3, size: int = SIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` rectangle outlines: images (count, 1, size, size) float32 in {0, 1}, labels int64."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, size, size), dtype=np.float32)
    labels = np.zeros(count, dtype=np.int64)
    for i in range(count):
        while True:
            height, width = rng.integers(min_side, size + 1, size=2)
            if abs(height - width) >= 3:
                break
        top = rng.integers(0, size - height + 1)
        left = rng.integers(0, size - width + 1)
        bottom, right = top + height - 1, left + width - 1
        images[i, [top, bottom], left:right + 1] = 1
        images[i, top:bottom + 1, [left, right]] = 1
        labels[i] = int(height > width)
    return torch.from_numpy(images[:, None]), torch.from_numpy(labels)


@register("rectangles-generated")
def build_rectangles(root: Path, train_size: int = 1000, valid_size: int = 200,
                     test_size: int = 2000, seed: int = 0, min_side: int = 3) -> Splits:
    """Generated rectangles; the default split sizes follow the Larochelle set (1,000 / 200)
    except the test set (50,000 there), kept small so the default run is fast."""
    del root  # generated, nothing on disk
    for name, value in (("train_size", train_size), ("valid_size", valid_size),
                        ("test_size", test_size)):
        if value < 1:
            raise DatasetError(f"rectangles-generated: {name} must be >= 1, got {value}")
    if not 2 <= min_side <= SIDE - 3:
        raise DatasetError(f"rectangles-generated: min_side must be in [2, {SIDE - 3}], got {min_side}")
    split = [TensorDataset(*rectangles(n, seed=seed * 3 + k, min_side=min_side))
             for k, n in enumerate((train_size, valid_size, test_size))]
    return Splits(*split, num_classes=2, in_channels=1, image_shape=(SIDE, SIDE))
