"""RGroup baseline, rotation (relaxed regular group convolution on C4; Wang, Walters, Yu 2022, as
the reproduction dgcnz/relaxed-equivariance-dynamics completed it).

A layer from I to O regular fields holds ``banks`` filter banks W_b (O, I, |G|, k, k) and
combination weights c (|G|, banks). The kernel of output rotation g is

    K_g[o, i, h] = sum_b c[g, b] rot90^-g(W_b[o, i, h - g])       (h - g mod 4)

(the g-th copy of the bank: kernels turned by -g quarter turns (torch.rot90), the group axis
rolled by g), all four stacked into one (O |G|, I |G|, k, k) filter and one conv2d. With c[g, b] equal across g the
layer is a regular C4 group convolution: rotating the input (grid, and f(h) -> f(h + 1)) rotates
the output. Otherwise each rotation has its own mixture of the banks: approximately equivariant.

Network: the velocity input is lifted to regular fields by projecting each vector onto the four
directions (cos h pi/2, sin h pi/2) (steerable.lift_to_regular), then ``layers`` relaxed group
convolutions with ReLU between them, the last to one regular field, projected back to a vector
(steerable.project_to_vector). No bias, no batch norm (the reproduction's parameter count).

Penalty (the reproduction's): per layer, the sum over pairs of rotations g < g' and banks of
|c[g, b] - c[g', b]|, summed over layers; zero at the exact point (the initial c = 1 / (banks |G|)).

Published setting: channels 48, 2 banks, 5 layers, k = 3: 535,720 parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmcnn.models.baselines.common import check_sizes, check_vector_input
from gmcnn.models.baselines.steerable import ORDER, lift_to_regular, project_to_vector
from gmcnn.nn.relaxation import Relaxation


class RelaxedGroupConv2d(nn.Module):
    """Relaxed C4 group convolution between regular fields (module docstring)."""

    def __init__(self, in_fields: int, out_fields: int, banks: int = 2, kernel_size: int = 3):
        super().__init__()
        self.kernel_size = kernel_size
        combination = 1 / (banks * ORDER)
        fan_in = in_fields * ORDER * kernel_size ** 2  # He-normal mixed filters at the start
        std = math.sqrt(2 / fan_in) / (combination * math.sqrt(banks))
        self.weight = nn.Parameter(torch.randn(banks, out_fields, in_fields, ORDER, kernel_size,
                                               kernel_size) * std)
        self.combination = nn.Parameter(torch.full((ORDER, banks), combination))

    def filter(self) -> Tensor:
        mixed = torch.einsum("gb,boihxy->goihxy", self.combination, self.weight)
        copies = [torch.rot90(mixed[g].roll(g, dims=2), -g, (-2, -1)) for g in range(ORDER)]
        return torch.stack(copies, 1).flatten(0, 1).flatten(1, 2)        # (O |G|, I |G|, k, k)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.filter(), padding=self.kernel_size // 2)

    def pair_differences(self) -> Tensor:
        c = self.combination
        return (c[:, None] - c[None]).abs().sum() / 2


class RGroup(Relaxation):
    """Relaxed C4 group-convolution next-frame predictor of velocity fields."""

    task = "dynamics"

    def __init__(self, input_frames: int = 10, field_channels: int = 2, channels: int = 48,
                 layers: int = 5, banks: int = 2, kernel_size: int = 3):
        super().__init__()
        check_sizes("RGroup", input_frames=input_frames, channels=channels, kernel_size=kernel_size,
                    layers=layers, banks=banks)
        check_vector_input("RGroup", field_channels)
        widths = [input_frames] + [channels] * (layers - 1) + [1]
        self.convs = nn.ModuleList(RelaxedGroupConv2d(i, o, banks, kernel_size)
                                   for i, o in zip(widths, widths[1:]))

    def forward(self, frames: Tensor) -> Tensor:
        x = lift_to_regular(frames)
        for conv in self.convs[:-1]:
            x = torch.relu(conv(x))
        return project_to_vector(self.convs[-1](x))

    def penalty(self) -> Tensor:
        return torch.stack([conv.pair_differences() for conv in self.convs]).sum()
