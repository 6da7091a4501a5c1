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


FOLD_BIAS_MAX_CHANNELS = 16  # copying x with a row of ones is cheaper than a pass over y up to here


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
        saved): one activation-sized buffer less than adding the two. With few input channels
        the bias rides in the same matmul, as a weight column against a row of ones appended to
        x, instead of taking a pass of its own over y (and another for its gradient)."""
        weight = self.weight
        if self.bias is not None and x.shape[1] <= FOLD_BIAS_MAX_CHANNELS:
            weight = torch.cat([weight, self.bias[:, None]], 1)
            x = torch.cat([x, x.new_ones(x.shape[0], 1, x.shape[-1])], 1)
        y = y.baddbmm_(weight.expand(x.shape[0], -1, -1), x)
        if self.bias is not None and weight is self.weight:
            y = y.add_(self.bias[:, None])
        return y

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]} -> {self.weight.shape[0]}, bias={self.bias is not None}"
