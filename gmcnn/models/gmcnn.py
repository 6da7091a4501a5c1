"""The GM-CNN classifier (docs/design.md §3.1), the original paper architecture.

    image (B, C_in, H, W), flattened to a function on G = G_rows x G_cols
    -> blocks x [ (GMConv -> LayerNorm over (C, N), no affine -> PReLU) x layers_per_block
                  + residual (a 1x1 convolution where the block changes the channel count) ]
    -> global max over positions -> Dropout -> Linear(C, classes)

One PReLU parameter is shared by all layers. Every layer commutes with left translation on G and
the global max is invariant, so the logits are G-invariant (exactly, for rank 0).
With 2 blocks of 1 layer and C channels in shared mode the parameter count is
2 (C K + C) + (C_in C + C) + 1 + (C classes + classes).

With ``fused=True`` (default) exact shared-mode layers run as the kernels of
:mod:`gmcnn.fused`: each GMConv -> LayerNorm -> PReLU as one function, and the last one-layer
block with an identity shortcut, with the one-layer block before it, together with the global max
(their backward never forms a dense activation gradient). The numbers are those of the modules;
``fused=False`` composes the modules instead (needed for higher-order gradients).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmcnn.fused import gm_conv_norm_prelu, gm_residual_block_max, gm_two_blocks_max
from gmcnn.groups import axis_sizes, make_group
from gmcnn.nn import EquivariantModule, GMConv, PointwiseConv
from gmcnn.nn.base import check_input


class GMCNN(EquivariantModule):
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
        self.blocks = nn.ModuleList()
        self.shortcuts = nn.ModuleList()
        width = in_channels
        for _ in range(blocks):
            layers = [GMConv(self.group, width if i == 0 else channels, channels, **conv)
                      for i in range(layers_per_block)]
            self.blocks.append(nn.ModuleList(layers))
            self.shortcuts.append(PointwiseConv(width, channels) if width != channels
                                  else nn.Identity())
            width = channels
        self.activation = nn.PReLU()
        self.fused = fused
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, num_classes)

    def features(self, images: Tensor) -> Tensor:
        """(B, C_in, H, W) or (B, C_in, N) -> (B, channels, N), G-equivariant."""
        x = self._flatten(images)
        for layers, shortcut in zip(self.blocks, self.shortcuts):
            x = self._block(x, layers, shortcut)
        return x

    def forward(self, images: Tensor) -> Tensor:
        x = self._flatten(images)
        blocks = list(zip(self.blocks, self.shortcuts))
        fused = self._fused_tail(x)
        for layers, shortcut in blocks[:len(blocks) - fused]:
            x = self._block(x, layers, shortcut)
        pooled = self._fused_tail_max(x, blocks[-fused:]) if fused else x.max(-1).values
        return self.head(self.dropout(pooled))

    def _fused_tail(self, x: Tensor) -> int:
        """How many of the last blocks run together with the global max in one kernel: none
        unless the last block is one fusable layer with an identity shortcut; two when the
        block before it is one fusable layer too."""
        def one_fusable_layer(layers: nn.ModuleList) -> bool:
            return len(layers) == 1 and self._fusable(layers[0], x)

        if not (one_fusable_layer(self.blocks[-1]) and isinstance(self.shortcuts[-1], nn.Identity)):
            return 0
        return 2 if len(self.blocks) > 1 and one_fusable_layer(self.blocks[-2]) else 1

    def _fused_tail_max(self, x: Tensor, tail: list) -> Tensor:
        """The global max of the last one or two blocks' output, computed by gmcnn.fused."""
        first = tail[0][0][0]
        check_input(x, self.group.order, first.in_channels, "GMConv", self.group.name)
        (last,), _ = tail[-1]
        slope = self.activation.weight
        if len(tail) == 1:
            return gm_residual_block_max(x, last.weight, last.bias, slope, last.index,
                                         last.inverse_index, gram_plan=last.gram_plan)
        shortcut = tail[0][1]
        shortcut_weight, shortcut_bias = ((shortcut.weight, shortcut.bias)
                                          if isinstance(shortcut, PointwiseConv) else (None, None))
        # both layers convolve over the same group and neighbourhood: one index serves both
        return gm_two_blocks_max(x, first.weight, first.bias, shortcut_weight, shortcut_bias,
                                 last.weight, last.bias, slope, first.index, first.inverse_index,
                                 gram_plan=first.gram_plan)

    def _block(self, x: Tensor, layers: nn.ModuleList, shortcut: nn.Module) -> Tensor:
        out = x
        for conv in layers:
            out = self._conv_norm_activation(conv, out)
        # out is a fresh activation that autograd has not saved: add the shortcut in place
        return shortcut.add_to(out, x) if isinstance(shortcut, PointwiseConv) else out.add_(x)

    def _fusable(self, conv: GMConv, x: Tensor) -> bool:
        """Whether the fused kernels of gmcnn.fused compute this layer: exact shared-mode gather
        layers in eager mode outside autocast (the composed modules handle everything else;
        under torch.compile the compiler fuses them)."""
        return (self.fused and conv.relaxation is None and conv.channel_mode == "shared"
                and conv.backend == "gather" and not torch.is_autocast_enabled(x.device.type)
                and not torch.compiler.is_compiling())

    def _conv_norm_activation(self, conv: GMConv, x: Tensor) -> Tensor:
        """PReLU(LayerNorm(conv(x)))."""
        if self._fusable(conv, x):
            check_input(x, self.group.order, conv.in_channels, "GMConv", self.group.name)
            return gm_conv_norm_prelu(x, conv.weight, conv.bias, self.activation.weight,
                                      conv.index, conv.inverse_index, gram_plan=conv.gram_plan)
        x = conv(x)
        return self.activation(F.layer_norm(x, x.shape[1:]))

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
