"""E2CNN baseline (Wang, Walters, Yu 2022; e2cnn's R2Conv on C4): exactly C4-equivariant.

    input_frames vector fields (v_x, v_y)
    -> SteerableConv vector -> ``channels`` regular fields -> FieldBatchNorm -> ReLU
    -> (layers - 2) x [SteerableConv regular -> regular -> FieldBatchNorm -> ReLU]
    -> SteerableConv regular -> 1 vector field

Every layer commutes with the quarter turn r of the grid acting on fields (steerable.py), the
batch norm has one statistic per field and ReLU acts per channel, so rotating the input field by
90 degrees (grid and vectors) rotates the prediction: f(r . x) = r . f(x), exactly. Zero padding is
symmetric under r; circular translations are not a symmetry (the borders).

Published setting: channels 92, 5 layers, k = 3: 622,656 parameters (basis sizes 12 / 24 / 12).
"""

from __future__ import annotations

from torch import Tensor, nn

from gmcnn.models.baselines.common import check_sizes, check_vector_input
from gmcnn.models.baselines.steerable import FieldBatchNorm, SteerableConv2d


class E2CNN(nn.Module):
    """Exact C4-steerable next-frame predictor of velocity fields."""

    task = "dynamics"

    def __init__(self, input_frames: int = 10, field_channels: int = 2, channels: int = 92,
                 layers: int = 5, kernel_size: int = 3):
        super().__init__()
        check_sizes("E2CNN", input_frames=input_frames, channels=channels, kernel_size=kernel_size, layers=layers)
        check_vector_input("E2CNN", field_channels)
        blocks = []
        for i in range(layers - 1):
            conv = SteerableConv2d(input_frames if i == 0 else channels, channels,
                                   "vector" if i == 0 else "regular", "regular", kernel_size)
            blocks.append(nn.Sequential(conv, FieldBatchNorm(channels), nn.ReLU()))
        self.blocks = nn.Sequential(*blocks)
        self.head = SteerableConv2d(channels, 1, "regular", "vector", kernel_size)

    def forward(self, frames: Tensor) -> Tensor:
        return self.head(self.blocks(frames))
