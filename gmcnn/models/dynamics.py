"""The GM regression network for fluid dynamics (docs/design.md §3.2), and a plain CNN of the same shape.

    input_frames stacked velocity fields (B, input_frames * 2, H, W)
    -> 1x1 conv to C channels
    -> blocks x [x + PReLU(GMConv(x))]           (relaxed GMConv: rank r > 0 breaks symmetry;
                                                  one PReLU per block)
    -> 1x1 conv to 2 channels: the next velocity field (B, 2, H, W)

Pointwise convolutions commute with every permutation of positions, so with rank 0 the network
is exactly equivariant to the translations (or other elements) of its group G = G_rows x G_cols.

On a wallpaper group G = p4(n) / p4m(n) of the n x n grid (docs/design.md §5), ``field="vector"``
reads the channels as (v_x, v_y) pairs that rotate with the grid (:class:`~gmcnn.spaces.VectorField`):
the 1x1 lift becomes the lifting :class:`~gmcnn.nn.lifting.GMLifting` (full channel mode, radius
t, to functions on G, each vector seen in the frame of every rotation), the blocks run on G, and
the 1x1 projection to ``field_channels`` channels is followed by
:class:`~gmcnn.nn.lifting.GMProjection` (the mean of the rotated channel pairs, back to vectors on
the grid; ``field="scalar"``: the mean over the point group). With rank 0 the prediction is then
exactly equivariant to rotating (and mirroring) the input field, grid and vectors, and to the
circular translations; the relaxation (``rank`` > 0) applies to the lifting and the blocks.

Predictions are rolled out autoregressively by the training protocol, not here. The lift, the
blocks and the 1x1 projection are a :class:`~gmcnn.nn.blocks.ResidualStream`, whose fast path
(``fused=True``) is one kernel that computes each layer's (1 + r) GM products from one gather
and carries only the stream's channel sum and projection, not its C channels; on p4 / p4m the
lifting is folded in too, as one conv2d to those 1 + F rows (``"lifting_stream"``, docs/design.md
§5). ``fused=False`` runs the reference composition.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gmcnn.groups import WallpaperGroup
from gmcnn.models.grid import model_group
from gmcnn.nn import EquivariantModule, GMConv, GMLifting, GMProjection, PointwiseConv
from gmcnn.nn.blocks import ConvNormAct, FusedFlag, ResidualBlock, ResidualStream
from gmcnn.spaces import make_space


class GMDynamics(FusedFlag, EquivariantModule):
    """Next-frame predictor on a grid whose axes carry ``group`` (e.g. ``["C64", "C64"]``), or on
    a wallpaper group of the grid (``"p4"`` with ``image_size``, or ``"p4(64)"``)."""

    task = "dynamics"

    def __init__(self, group: str | Sequence[str], input_frames: int = 10, field_channels: int = 2,
                 channels: int = 120, blocks: int = 2, t: int = 1, rank: int = 1,
                 relaxation: str = "additive", channel_mode: str = "shared",
                 backend: str = "auto", fused: bool = True,
                 image_size: int | Sequence[int] | None = None, field: str = "scalar"):
        super().__init__()
        if input_frames < 1 or blocks < 1 or channels < 1:
            raise ValueError("input_frames, blocks and channels must be >= 1, got "
                             f"{input_frames}, {blocks}, {channels}")
        self.group, self.image_shape = model_group(group, image_size)
        self.in_channels = input_frames * field_channels
        relax = dict(rank=rank, relaxation=relaxation)
        wallpaper = isinstance(self.group, WallpaperGroup)
        if wallpaper:
            self.in_space = self.out_space = make_space(self.group, field)
            lift = GMLifting(self.group, self.in_channels, channels, t=t, field=field,
                             channel_mode="full", **relax)
        else:
            self.in_space = self.out_space = self.group
            lift = PointwiseConv(self.in_channels, channels)
        blocks = [ResidualBlock([ConvNormAct(
            GMConv(self.group, channels, channels, t=t, channel_mode=channel_mode,
                   backend=backend, **relax), nn.PReLU(), norm=None)])
            for _ in range(blocks)]
        self.stream = ResidualStream(lift, blocks, PointwiseConv(channels, field_channels))
        self.readout = GMProjection(self.group, "mean", field) if wallpaper else nn.Identity()
        self.fused = fused

    def forward(self, frames: Tensor) -> Tensor:
        if tuple(frames.shape[1:]) != (self.in_channels, *self.image_shape):
            raise ValueError(f"GMDynamics on {self.group.name} expects input of shape (batch, "
                             f"{self.in_channels}, {', '.join(map(str, self.image_shape))}); got "
                             f"{tuple(frames.shape)}")
        y = self.readout(self.stream(frames.flatten(2)))
        return y.reshape(frames.shape[0], -1, *self.image_shape)

    def example_input(self, batch_size: int = 2) -> Tensor:
        return torch.randn(batch_size, self.in_channels, *self.image_shape)


class CNNDynamics(nn.Module):
    """Baseline: the same network with ordinary zero-padded k x k convolutions."""

    task = "dynamics"

    def __init__(self, input_frames: int = 10, field_channels: int = 2, channels: int = 128,
                 blocks: int = 4, kernel_size: int = 3):
        super().__init__()
        self.lift = nn.Conv2d(input_frames * field_channels, channels, 1)
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, kernel_size,
                                             padding=kernel_size // 2) for _ in range(blocks))
        self.activations = nn.ModuleList(nn.PReLU() for _ in range(blocks))
        self.project = nn.Conv2d(channels, field_channels, 1)

    def forward(self, frames: Tensor) -> Tensor:
        x = self.lift(frames)
        for conv, activation in zip(self.convs, self.activations):
            x = x + activation(conv(x))
        return self.project(x)
