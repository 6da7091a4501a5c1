"""Pointwise channel mixing (a 1x1 convolution) on functions (B, C, N):

    y_o(u) = b_o + sum_c W[o, c] x_c(u).

It commutes with every permutation of the positions, so it is equivariant for any group. Computed
as one batched matrix product with the bias fused in, which on CPU is several times faster than
nn.Conv1d with kernel size 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gmcnn.functional import pointwise_add_


class PointwiseConv(nn.Module):
    """1x1 convolution over the channel axis of (B, C_in, N) -> (B, C_out, N)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        bound = 1 / math.sqrt(in_channels)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.expand(x.shape[0], -1, -1)
        if self.bias is None:
            return torch.bmm(weight, x)
        return torch.baddbmm(self.bias[:, None].expand(x.shape[0], -1, x.shape[-1]), weight, x)

    def add_to(self, y: Tensor, x: Tensor) -> Tensor:
        """``y + self(x)``, accumulated into ``y`` in place (y must be a tensor autograd has not
        saved): one activation-sized buffer less than adding the two."""
        return pointwise_add_(y, x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]} -> {self.weight.shape[0]}, bias={self.bias is not None}"
