"""Pieces shared by the loaders: the image dataset, label checks, validation carving, statistics.

Images are kept as decoded (uint8 or float32, shape (N, C, H, W)) and normalised per item, so
that a 300 MB uint8 set does not become a 1.2 GB float32 copy; splits are index views, not copies.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from dataset.registry import DatasetError


class ImageDataset(Dataset):
    """Item ``i``: ``((images[j] * scale - mean) / std as float32 (C, H, W), labels[j] int64)``
    with ``j = indices[i]`` (all rows when ``indices`` is None). ``i`` may also be a list of
    indices, which returns a whole batch at once (``batch_indexable``)."""

    batch_indexable = True

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None,
                 scale: float = 1.0, mean: torch.Tensor | float = 0.0, std: torch.Tensor | float = 1.0):
        if images.ndim != 4 or labels.shape != images.shape[:1]:
            raise ValueError(f"images (N, C, H, W) and labels (N,) expected, got {tuple(images.shape)} "
                             f"and {tuple(labels.shape)}")
        self.images, self.labels = images, labels.long()
        self.indices = torch.arange(len(images)) if indices is None else indices
        self.scale, self.mean, self.std = scale, mean, std

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = self.indices[i]
        image = self.images[j].to(torch.float32)
        if self.scale != 1.0:
            image = image * self.scale
        return (image - self.mean) / self.std, self.labels[j]


def check_labels(labels: np.ndarray | torch.Tensor, num_classes: int, source: object) -> torch.Tensor:
    """Labels as int64 after checking they are integers in [0, num_classes)."""
    array = np.asarray(labels)
    if array.ndim != 1 or len(array) == 0:
        raise DatasetError(f"{source}: expected a non-empty vector of labels, got shape {array.shape}")
    if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
        raise DatasetError(f"{source}: labels must be whole numbers; the file is corrupt or not this dataset")
    low, high = array.min(), array.max()
    if low < 0 or high >= num_classes:
        raise DatasetError(f"{source}: labels range over [{low:g}, {high:g}], expected [0, {num_classes - 1}]; "
                           f"the file is corrupt or belongs to another dataset")
    return torch.from_numpy(array.astype(np.int64))


def carve(count: int, valid: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split rows 0..count-1 into (train, valid) index sets, ``valid`` rows chosen at random with
    ``seed``; both sorted, so a seed always gives the same rows."""
    if not 0 < valid < count:
        raise DatasetError(f"the validation size must be in [1, {count - 1}] for {count} training rows, got {valid}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[valid:].sort().values, order[:valid].sort().values


def pixel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean and standard deviation over the first axis (float64 sums, chunked);
    pixels that never vary get std 1 so that standardising them gives 0 rather than inf."""
    total = torch.zeros(images.shape[1:], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk].to(torch.float64)
        total += block.sum(0)
        squares += (block * block).sum(0)
    mean = total / len(images)
    std = (squares / len(images) - mean * mean).clamp_min(0).sqrt()
    std[std < 1e-6] = 1.0
    return mean.float(), std.float()
