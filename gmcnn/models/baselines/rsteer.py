"""RSteer baseline, rotation (relaxed steerable convolution; Wang, Walters, Yu 2022).

A layer from I fields to O fields holds one coefficient per steerable basis kernel *per kernel
tap*: w (O, B, I, k^2), and its filter at tap t is

    K[o, :, i, :](t) = sum_b w[o, b, i, t] basis[b](t)          (basis: steerable.py)

When the coefficients are equal across taps, K = sum_b w[o, b, i] basis[b] is a steerable kernel:
the layer is exactly C4-equivariant (with a bias constant on each regular field and zero on the
vector output; the bias is per channel, as upstream). The network has E2CNN's field types and
ReLU without batch norm (upstream builds one but does not apply it):

    vector -> regular (ReLU) -> (layers - 2) x regular -> regular (ReLU) -> regular -> vector

Penalty (upstream's): the sum over layers of the mean absolute difference of consecutive taps'
coefficients in raster order, mean |w[..., t + 1] - w[..., t]|; zero at the exact point. The
runner weighs it by trainer.relaxation_penalty (upstream: 1e-5 on the plumes, 1e-4 on JetFlow).

Published setting: channels 92, 5 layers, k = 3: 5,596,178 upstream parameters, of which 736
belong to batch norms that upstream builds and never applies; this model has the other 5,595,442.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmcnn.models.baselines.common import check_sizes, check_vector_input
from gmcnn.models.baselines.steerable import FIELD_SIZES, steerable_basis, steerable_init
from gmcnn.nn.relaxation import Relaxation


class RelaxedSteerableConv2d(nn.Module):
    """Steerable convolution with per-tap basis coefficients (module docstring), one conv2d."""

    def __init__(self, in_fields: int, out_fields: int, field_in: str, field_out: str,
                 kernel_size: int = 3):
        super().__init__()
        basis = steerable_basis(field_in, field_out, kernel_size)
        self.register_buffer("basis", basis)
        weight = torch.empty(out_fields, basis.shape[0], in_fields, 1)
        steerable_init(weight, basis, in_fields)
        self.weight = nn.Parameter(weight.repeat(1, 1, 1, kernel_size ** 2))  # equal taps: exact at the start
        self.bias = nn.Parameter(torch.zeros(out_fields * FIELD_SIZES[field_out]))

    def filter(self) -> Tensor:
        taps = self.basis.flatten(-2).to(self.weight.dtype)                  # (B, p, q, k^2)
        w = torch.einsum("bpqt,obit->opiqt", taps, self.weight)
        return w.flatten(0, 1).flatten(1, 2).unflatten(-1, self.basis.shape[-2:])

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.filter(), self.bias, padding=self.basis.shape[-1] // 2)

    def tap_variation(self) -> Tensor:
        return (self.weight[..., 1:] - self.weight[..., :-1]).abs().mean()


class RSteer(Relaxation):
    """Relaxed C4-steerable next-frame predictor of velocity fields."""

    task = "dynamics"

    def __init__(self, input_frames: int = 10, field_channels: int = 2, channels: int = 92,
                 layers: int = 5, kernel_size: int = 3):
        super().__init__()
        check_sizes("RSteer", input_frames=input_frames, channels=channels, kernel_size=kernel_size, layers=layers)
        check_vector_input("RSteer", field_channels)
        fields = [(input_frames, "vector")] + [(channels, "regular")] * (layers - 1) + [(1, "vector")]
        self.convs = nn.ModuleList(RelaxedSteerableConv2d(i, o, a, b, kernel_size)
                                   for (i, a), (o, b) in zip(fields, fields[1:]))

    def forward(self, frames: Tensor) -> Tensor:
        x = frames
        for conv in self.convs[:-1]:
            x = torch.relu(conv(x))
        return self.convs[-1](x)

    def penalty(self) -> Tensor:
        return torch.stack([conv.tap_variation() for conv in self.convs]).sum()
