"""RPP baseline, rotation (residual pathway prior; Finzi, Benton, Wilson 2021, as built by
Wang, Walters, Yu 2022): every layer is an exact C4-steerable convolution plus a free one,

    y = SteerableConv(x) + Conv2d(x)          (the same channels: 4 per regular field)
    -> BatchNorm2d -> ReLU                    (not after the last layer)

on E2CNN's field types (vector -> regular ... regular -> vector). The free path (an ordinary
convolution with bias) is what breaks the symmetry; its penalty is the squared L2 norm of all its
parameters, summed over layers (upstream weight 1e-6: trainer.relaxation_penalty). With the free
path zero the network is E2CNN's up to its batch norm, which is per channel as upstream: exactly
equivariant while its statistics and affine parameters are equal within each regular field
(e.g. at initialisation in eval mode), not constrained to stay so.

Published setting: channels 92, 5 layers, k = 3: 4,355,658 upstream parameters, of which 8
belong to a batch norm that upstream builds for the last layer and never applies; this model has
the other 4,355,650.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gmcnn.models.baselines.common import check_sizes, check_vector_input
from gmcnn.models.baselines.steerable import FIELD_SIZES, SteerableConv2d
from gmcnn.nn.relaxation import Relaxation


class RPP(Relaxation):
    """Exact steerable path plus a penalised free path, next-frame predictor of velocity fields."""

    task = "dynamics"

    def __init__(self, input_frames: int = 10, field_channels: int = 2, channels: int = 92,
                 layers: int = 5, kernel_size: int = 3):
        super().__init__()
        check_sizes("RPP", input_frames=input_frames, channels=channels, kernel_size=kernel_size, layers=layers)
        check_vector_input("RPP", field_channels)
        fields = [(input_frames, "vector")] + [(channels, "regular")] * (layers - 1) + [(1, "vector")]
        self.exact = nn.ModuleList(SteerableConv2d(i, o, a, b, kernel_size)
                                   for (i, a), (o, b) in zip(fields, fields[1:]))
        self.free = nn.ModuleList(nn.Conv2d(i * FIELD_SIZES[a], o * FIELD_SIZES[b], kernel_size,
                                            padding=kernel_size // 2)
                                  for (i, a), (o, b) in zip(fields, fields[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels * FIELD_SIZES["regular"])
                                   for _ in range(layers - 1))

    def forward(self, frames: Tensor) -> Tensor:
        x = frames
        for exact, free, norm in zip(self.exact, self.free, self.norms):
            x = torch.relu(norm(exact(x) + free(x)))
        return self.exact[-1](x) + self.free[-1](x)

    def penalty(self) -> Tensor:
        return torch.stack([p.pow(2).sum() for p in self.free.parameters()]).sum()
