"""Lift baseline, translation (lift expansion; Wang, Walters, Yu 2022): a convolutional network
with a global, position-free code of the whole input concatenated in the middle.

    encoder: flatten -> Linear(channels) -> BatchNorm1d -> ReLU -> Linear -> BatchNorm1d -> ReLU
             -> Linear(channels), broadcast over the grid
    convs:   Conv-BN-ReLU(in -> channels) -> Conv-BN-ReLU -> [concat the code]
             -> Conv-BN-ReLU(2 channels -> channels) -> Conv-BN-ReLU -> Conv to field_channels

The convolutions are translation-equivariant (up to the zero-padded borders); the encoder sees
absolute positions, so the code is where the symmetry is relaxed. No penalty (upstream has none).

Published setting: channels 128, 64 x 64 grid: 11,136,130 parameters (10,519,424 in the encoder).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gmcnn.models.baselines.common import check_grid, check_sizes, conv_block


class Lift(nn.Module):
    """Convolutions plus a global MLP code of the input, next-frame predictor on a fixed grid."""

    task = "dynamics"

    def __init__(self, image_size: Sequence[int], input_frames: int = 10, field_channels: int = 2,
                 channels: int = 128, kernel_size: int = 3):
        super().__init__()
        check_sizes("Lift", input_frames=input_frames, channels=channels, kernel_size=kernel_size)
        self.grid_shape = tuple(int(side) for side in image_size)
        self.in_channels = input_frames * field_channels
        self.encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(self.in_channels * math.prod(self.grid_shape), channels),
            nn.BatchNorm1d(channels), nn.ReLU(), nn.Linear(channels, channels),
            nn.BatchNorm1d(channels), nn.ReLU(), nn.Linear(channels, channels))
        self.before = nn.Sequential(conv_block(self.in_channels, channels, kernel_size),
                                    conv_block(channels, channels, kernel_size))
        self.after = nn.Sequential(conv_block(2 * channels, channels, kernel_size),
                                   conv_block(channels, channels, kernel_size),
                                   nn.Conv2d(channels, field_channels, kernel_size, padding=kernel_size // 2))

    def forward(self, frames: Tensor) -> Tensor:
        check_grid("Lift", frames, self.in_channels, self.grid_shape)
        code = self.encoder(frames)[..., None, None].expand(-1, -1, *self.grid_shape)
        return self.after(torch.cat([self.before(frames), code], 1))
