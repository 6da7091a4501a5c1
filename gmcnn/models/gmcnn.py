"""The GM-CNN classifier (docs/design.md §3.1), the original paper architecture.

    image (B, C_in, H, W), flattened to a function on G = G_rows x G_cols
    -> blocks x [ (GMConv -> LayerNorm over (C, N), no affine -> PReLU) x layers_per_block
                  + residual (a 1x1 convolution where the block changes the channel count) ]
    -> global max over positions -> Dropout -> Linear(C, classes)

One PReLU parameter is shared by all layers. Every layer commutes with left translation on G and
the global max is invariant, so the logits are G-invariant (exactly, for rank 0).
With 2 blocks of 1 layer and C channels in shared mode the parameter count is
2 (C K + C) + (C_in C + C) + 1 + (C classes + classes).

The network is a plain sequence of blocks (:mod:`gmcnn.nn.blocks`) and a head: the leading
residual blocks, the last two with the global max as a :class:`~gmcnn.nn.blocks.GlobalMaxTail`,
then dropout and the linear layer. Each block owns its fast path (fused kernels for the exact
shared-mode layers, the same numbers, once differentiable) and takes it where its structural
check passes; ``fused=False`` runs every block's reference path (needed for higher-order
gradients).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gmcnn.groups import axis_sizes, make_group
from gmcnn.nn import EquivariantModule, GMConv, PointwiseConv
from gmcnn.nn.blocks import ConvNormAct, FusedFlag, GlobalMaxTail, ResidualBlock

TAIL_BLOCKS = 2  # the blocks that the global max's kernels can take with it


class GMCNN(FusedFlag, EquivariantModule):
    """GM-CNN image classifier; ``group`` is one spec per image axis, e.g. ``["C32", "C32"]``."""

    def __init__(self, group: str | Sequence[str], in_channels: int, num_classes: int,
                 t: int = 3, blocks: int = 2, layers_per_block: int = 1, channels: int = 120,
                 dropout: float = 0.0, channel_mode: str = "shared", rank: int = 0,
                 relaxation: str = "additive", backend: str = "auto", fused: bool = True):
        super().__init__()
        for name, value, low in (("blocks", blocks, 1), ("layers_per_block", layers_per_block, 1),
                                 ("channels", channels, 1), ("num_classes", num_classes, 2),
                                 ("in_channels", in_channels, 1)):
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.group = make_group(group)
        self.image_shape = axis_sizes(self.group)
        self.in_channels = in_channels
        self.in_space, self.out_space = self.group, None
        conv = dict(t=t, channel_mode=channel_mode, rank=rank, relaxation=relaxation,
                    backend=backend)
        activation = nn.PReLU()  # one slope shared by every layer
        stages, width = [], in_channels
        for _ in range(blocks):
            layers = [ConvNormAct(GMConv(self.group, width if i == 0 else channels, channels,
                                         **conv), activation)
                      for i in range(layers_per_block)]
            stages.append(ResidualBlock(layers, PointwiseConv(width, channels)
                                        if width != channels else None))
            width = channels
        self.blocks = nn.Sequential(*stages[:-TAIL_BLOCKS])
        self.tail = GlobalMaxTail(stages[-TAIL_BLOCKS:])
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, num_classes)
        self.fused = fused

    def forward(self, images: Tensor) -> Tensor:
        pooled = self.tail(self.blocks(self._flatten(images)))
        return self.head(self.dropout(pooled))

    def _flatten(self, images: Tensor) -> Tensor:
        expected = (self.in_channels, *self.image_shape)
        if images.dim() == 3 and tuple(images.shape[1:]) == (self.in_channels, self.group.order):
            return images
        if images.dim() != 2 + len(self.image_shape) or tuple(images.shape[1:]) != expected:
            raise ValueError(f"GMCNN on {self.group.name} expects images of shape "
                             f"(batch, {', '.join(map(str, expected))}); got "
                             f"{tuple(images.shape)}. Choose a group whose factor orders equal "
                             "the image size, e.g. C32 x C32 or D16 x D16 for 32 x 32 images.")
        return images.flatten(2)

    def example_input(self, batch_size: int = 2) -> Tensor:
        return torch.randn(batch_size, self.in_channels, *self.image_shape)
