"""A hand-written p4 G-CNN in plain PyTorch: what a researcher would write instead of a GM-CNN on
p4 (the peer row of benchmarks/bench_training.py and benchmarks/bench_p4_model.py).

Feature maps are (B, C, 4, H, W): channel, rotation r in C4, pixel. With R the quarter turn that
torch.rot90 applies (dims (-2, -1)), the layers are the cross-correlations of Cohen and Welling
(2016) on Z^2 x| C4:

    lifting:      y(x, r) = b + sum_d psi(R^-r d) f(x + d)
                  -> one conv2d with the kernels rot90(psi, r) stacked over r;
    group conv:   y(x, r) = b + sum_{d, s} psi(R^-r d, s - r) f(x + d, s)
                  -> one conv2d over (C 4) input channels with kernels
                     W[o, r, c, s] = rot90(psi[o, c, s - r], r) (the rotation axis rolled by r);

then BatchNorm3d over (C, 4, H, W), ReLU, max_pool2d over space, a 1x1x1 Conv3d shortcut where a
block changes the width, and the readout max over r, mean over pixels, dropout and a linear layer.
Boundary: zero padding (conv2d's own), or circular (one F.pad per convolution), so that it can be
timed against a GM-CNN on the same boundary. With the architecture of exp=rot-mnist-generated-p4
(5 x 5 lifting to 16 channels, blocks of two 3 x 3 group convolutions of widths [16, 20], pooling
after the lifting and the first block) it has the same 45,566 parameters, and its logits are
invariant to torch.rot90 of the image (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROTATIONS = 4


def _conv(x: Tensor, kernel: Tensor, bias: Tensor, boundary: str) -> Tensor:
    """x (B, C', H, W) -> cross-correlation with kernel (O', C', k, k), same size."""
    pad = kernel.shape[-1] // 2
    if boundary == "zero":
        return F.conv2d(x, kernel, bias, padding=pad)
    return F.conv2d(F.pad(x, (pad,) * 4, mode="circular"), kernel, bias)


class LiftingConv(nn.Module):
    """Images (B, C, H, W) -> (B, O, 4, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, size: int, boundary: str):
        super().__init__()
        bound = 1 / (in_channels * size * size) ** 0.5
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, size, size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound))
        self.boundary = boundary

    def forward(self, x: Tensor) -> Tensor:
        kernel = torch.stack([torch.rot90(self.weight, r, (-2, -1)) for r in range(ROTATIONS)], 1)
        out = _conv(x, kernel.flatten(0, 1), self.bias.repeat_interleave(ROTATIONS), self.boundary)
        return out.unflatten(1, (-1, ROTATIONS))


class GroupConv(nn.Module):
    """(B, C, 4, H, W) -> (B, O, 4, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, size: int, boundary: str):
        super().__init__()
        bound = 1 / (in_channels * ROTATIONS * size * size) ** 0.5
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels, ROTATIONS, size, size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound))
        self.boundary = boundary

    def forward(self, x: Tensor) -> Tensor:
        kernel = torch.stack([torch.rot90(torch.roll(self.weight, r, 2), r, (-2, -1))
                              for r in range(ROTATIONS)], 1)                 # (O, 4, C, 4, k, k)
        out = _conv(x.flatten(1, 2), kernel.flatten(0, 1).flatten(1, 2),
                    self.bias.repeat_interleave(ROTATIONS), self.boundary)
        return out.unflatten(1, (-1, ROTATIONS))


class ConvBNReLU(nn.Sequential):
    def __init__(self, conv: nn.Module, width: int):
        super().__init__(conv, nn.BatchNorm3d(width), nn.ReLU())


class Pool(nn.Module):
    """2 x 2 max pooling of every (channel, rotation) image."""

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x.flatten(1, 2), 2).unflatten(1, (-1, ROTATIONS))


class Residual(nn.Module):
    def __init__(self, layers: Sequence[nn.Module], in_channels: int, out_channels: int):
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.shortcut = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x) + self.shortcut(x)


class P4GCNN(nn.Module):
    """Lifting block, pooling, residual blocks of group convolutions with pooling between, the
    max-over-rotations mean-over-pixels readout, dropout, linear."""

    def __init__(self, in_channels: int, num_classes: int, channels: Sequence[int], t: int = 1,
                 lifting_t: int = 2, layers_per_block: int = 2, dropout: float = 0.0,
                 boundary: str = "zero"):
        super().__init__()
        if boundary not in ("zero", "circular"):
            raise ValueError(f"boundary must be 'zero' or 'circular', got {boundary!r}")
        self.boundary = boundary
        stages: list[nn.Module] = [ConvBNReLU(LiftingConv(in_channels, channels[0], 2 * lifting_t + 1, boundary),
                                              channels[0]), Pool()]
        width = channels[0]
        for i, out in enumerate(channels):
            layers = [ConvBNReLU(GroupConv(width if j == 0 else out, out, 2 * t + 1, boundary), out)
                      for j in range(layers_per_block)]
            stages.append(Residual(layers, width, out))
            width = out
            if i < len(channels) - 1:
                stages.append(Pool())
        self.body = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        features = self.body(images)                                          # (B, C, 4, h, w)
        return self.head(self.dropout(features.amax(2).mean((-2, -1))))


def from_config(model_cfg, in_channels: int, num_classes: int) -> P4GCNN:
    """The hand-written G-CNN with the architecture of a GM-CNN model config on p4 (pooling after
    every block but the last, as ``pool: true``) and its boundary."""
    return P4GCNN(in_channels, num_classes, list(model_cfg.channels), t=model_cfg.t,
                  lifting_t=model_cfg.lifting_t if model_cfg.lifting_t is not None else model_cfg.t,
                  layers_per_block=model_cfg.layers_per_block, dropout=model_cfg.dropout,
                  boundary=model_cfg.get("boundary", "circular"))
