"""The GM-CNN classifier (docs/design.md §3.1): the paper's architecture on per-axis groups, and
its multi-resolution form on the image groups p4 / p4m (docs/design.md §5).

Per-axis groups G = G_rows x G_cols (the paper's; the image flattened to a function on G):

    image (B, C_in, H, W)
    -> blocks x [ (GMConv -> norm -> activation) x layers_per_block
                  + residual (a 1x1 convolution where the block changes the channel count) ]
    -> global max over positions -> Dropout -> Linear(C, classes)

Wallpaper groups G = p4(n) / p4m(n) (``group="p4"`` with ``image_size=n``, or ``"p4(28)"``): the
image is a function on the pixel grid X = G / H, and a lifting block comes first,
GMLifting (X -> G, radius ``lifting_t``) -> norm -> activation, without a residual (its input
lives on X); then the residual blocks of GMConv on G. ``readout`` "max" is the global max over G,
"max_mean" the max over the point group, then the mean over the translations.

``pool`` puts a :class:`~gmcnn.nn.pool.GMPool` over the "even" subgroup after blocks (2 x 2 max
pooling of every point-group channel: p4(n) -> p4(n/2), C_n x C_n -> C_{n/2} x C_{n/2}): True
after every block but the last (the lifting block counts as block 0), False none (the paper's
single-resolution models), or a list of block indices. ``channels`` is one width, or one per
residual block (the lifting block has the first). ``norm`` "layer" is the LayerNorm over (C, N)
without affine (the paper's), "batch" a BatchNorm per channel over the batch and all positions,
"instance" a GroupNorm with one group per channel (per sample, over all positions; no batch
statistics, so training and evaluation normalise alike);
``activation`` "prelu" is one PReLU slope shared by every layer, "relu" a ReLU.

Every layer commutes with G, pooling with its subgroup (which keeps the rotations about the image
centre), the norms with all permutations of positions and the readouts are invariant, so the
logits are invariant: to G (per-axis groups), to torch.rot90 and (p4m) torch.flip of the image
and to the circular translations of the coarsest grid (wallpaper groups), exactly for rank 0;
``in_space`` is the input space acted on by that subgroup (:func:`gmcnn.spaces.symmetry_space`).

``boundary`` (wallpaper groups): "circular" (default) treats the image as the pixel torus, as
above; "zero" as a finite patch with zeros outside (conv2d's zero padding, the conv backend): the
logits are then exactly invariant to torch.rot90 (and, p4m, torch.flip) about the image centre,
and to translations only approximately (away from the border); ``in_space`` is the pixel grid
under the point group about the centre (docs/design.md §5).

With per-axis groups, 2 blocks of 1 layer and C channels in shared mode the parameter count is
2 (C K + C) + (C_in C + C) + 1 + (C classes + classes).

The network is a plain sequence of blocks (:mod:`gmcnn.nn.blocks`) and a head: the leading blocks
and pools, the last one or two residual blocks with the global max as a
:class:`~gmcnn.nn.blocks.GlobalMaxTail`, then dropout and the linear layer. Each block owns its
fast path (fused kernels for the exact shared-mode layers, the same numbers, once differentiable)
and takes it where its structural check passes; ``fused=False`` runs every block's reference path
(needed for higher-order gradients). On p4 / p4m the stages before the readout are an
:class:`~gmcnn.nn.blocks.ImageGridStages`, whose fast path keeps the conv-backend layers, batch
norms and 2 x 2 poolings in the image layout of the vendor convolution and pooling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gmcnn import functional as GF
from gmcnn import native
from gmcnn.groups import WallpaperGroup
from gmcnn.models.grid import model_group
from gmcnn.nn import EquivariantModule, GMConv, GMLifting, GMPool, PointwiseConv
from gmcnn.nn.blocks import ConvNormAct, FastPathModule, FusedFlag, GlobalMaxTail, ImageGridStages, ResidualBlock
from gmcnn.spaces import BOUNDARIES, num_points, symmetry_space

TAIL_BLOCKS = 2  # the blocks that the global max's kernels can take with it
NORMS = ("layer", "batch", "instance")
ACTIVATIONS = ("prelu", "relu")
READOUTS = ("max", "max_mean")


def check_integer(name: str, value, low: int) -> None:
    if int(value) != value or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def block_widths(channels: int | Sequence[int], blocks: int) -> list[int]:
    """One width per residual block from ``channels`` (an int, or a list of ``blocks`` ints)."""
    widths = [channels] * blocks if isinstance(channels, int) else list(channels)
    if len(widths) != blocks:
        raise ValueError(f"channels lists one width per block: {blocks} blocks, got {len(widths)} "
                         f"widths {widths}; give one int for all blocks or a list of {blocks}")
    for width in widths:
        check_integer("channels", width, 1)
    return [int(w) for w in widths]


def pool_after(pool: bool | Sequence[int], num_blocks: int) -> set[int]:
    """The block indices (0 .. num_blocks - 1) that a pooling layer follows."""
    if isinstance(pool, bool):
        return set(range(num_blocks - 1)) if pool else set()
    after = {int(i) for i in pool}
    if not after <= set(range(num_blocks - 1)):
        raise ValueError(f"pool lists the blocks to pool after, 0 .. {num_blocks - 2} (not the "
                         f"last, which the readout follows); got {list(pool)}")
    return after


class PointMaxTranslationMean(FastPathModule):
    """(B, C, |H| P) on a wallpaper group -> (B, C): max over the point group, mean over P; the
    fast path ``"point_max_mean"``: the compiled kernels on CPU (:func:`gmcnn.functional.point_max_mean`)."""

    def __init__(self, points: int):
        super().__init__()
        self.points = points

    def fast_path(self, x: Tensor) -> str | None:
        return ("point_max_mean" if self.fused and x.dim() == 3 and x.shape[2] % self.points == 0
                and native.takes(x) else None)

    def forward(self, x: Tensor) -> Tensor:
        if self.fast_path(x) == "point_max_mean":
            return GF.point_max_mean(x, self.points)
        return x.unflatten(-1, (self.points, -1)).amax(-2).mean(-1)


class GMCNN(FusedFlag, EquivariantModule):
    """GM-CNN image classifier on ``group``: one spec per image axis (``["C32", "C32"]``) or a
    wallpaper group (``"p4"`` / ``"p4m"`` with ``image_size``, or ``"p4(28)"``)."""

    task = "classification"

    def __init__(self, group: str | Sequence[str], in_channels: int, num_classes: int,
                 t: int = 3, blocks: int = 2, layers_per_block: int = 1,
                 channels: int | Sequence[int] = 120, dropout: float = 0.0,
                 channel_mode: str = "shared", rank: int = 0, relaxation: str = "additive",
                 backend: str = "auto", fused: bool = True,
                 image_size: int | Sequence[int] | None = None, pool: bool | Sequence[int] = False,
                 norm: str = "layer", activation: str = "prelu", readout: str = "max",
                 lifting_t: int | None = None, boundary: str = "circular"):
        super().__init__()
        for name, value, low in (("blocks", blocks, 1), ("layers_per_block", layers_per_block, 1),
                                 ("num_classes", num_classes, 2), ("in_channels", in_channels, 1)):
            check_integer(name, value, low)
        widths = block_widths(channels, blocks)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        for name, value, allowed in (("norm", norm, NORMS), ("activation", activation, ACTIVATIONS),
                                     ("readout", readout, READOUTS), ("boundary", boundary, BOUNDARIES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        self.group, self.image_shape = model_group(group, image_size)
        wallpaper = isinstance(self.group, WallpaperGroup)
        if readout != "max" and not wallpaper:
            raise ValueError(f"readout={readout!r} needs a wallpaper group (p4 / p4m); per-axis "
                             "groups use readout='max'")
        if boundary != "circular" and not wallpaper:
            raise ValueError(f"boundary={boundary!r} needs a wallpaper group (p4 / p4m); per-axis "
                             "groups act on the torus, boundary='circular'")
        self.in_channels, self.boundary = in_channels, boundary
        self.out_space = None
        conv = dict(channel_mode=channel_mode, rank=rank, relaxation=relaxation, backend=backend)
        if wallpaper:
            conv["boundary"] = boundary
        shared_prelu = nn.PReLU()  # one slope shared by every layer

        def conv_norm_act(layer: nn.Module) -> ConvNormAct:
            act = shared_prelu if activation == "prelu" else nn.ReLU()
            width = layer.out_channels
            return ConvNormAct(layer, act, {"layer": "layer", "batch": nn.BatchNorm1d(width),
                                            "instance": nn.GroupNorm(width, width)}[norm])

        stages: list[nn.Module] = []
        group_now, width = self.group, in_channels
        if wallpaper:
            stages.append(conv_norm_act(GMLifting(self.group, in_channels, widths[0],
                                                  t=t if lifting_t is None else lifting_t, **conv)))
            width = widths[0]
        pools = pool_after(pool, blocks + wallpaper)

        def maybe_pool(index: int) -> None:
            nonlocal group_now
            if index in pools:
                stages.append(GMPool(group_now, "even"))
                group_now = stages[-1].out_space

        if wallpaper:
            maybe_pool(0)
        for i, out in enumerate(widths):
            layers = [conv_norm_act(GMConv(group_now, width if j == 0 else out, out, t=t, **conv))
                      for j in range(layers_per_block)]
            stages.append(ResidualBlock(layers, PointwiseConv(width, out) if width != out else None))
            width = out
            maybe_pool(i + wallpaper)
        sequence = ImageGridStages if wallpaper else nn.Sequential
        if readout == "max":
            tail = 0
            while (tail < TAIL_BLOCKS and tail < len(stages)
                   and type(stages[len(stages) - 1 - tail]) is ResidualBlock):
                tail += 1
            self.blocks = sequence(*stages[:len(stages) - tail])
            self.tail = GlobalMaxTail(stages[len(stages) - tail:])
        else:
            self.blocks = sequence(*stages)
            self.tail = PointMaxTranslationMean(group_now.acting.order)
        self.in_space = symmetry_space(self.group, [m.subgroup for m in stages if isinstance(m, GMPool)],
                                       boundary)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)
        self.fused = fused

    def forward(self, images: Tensor) -> Tensor:
        pooled = self.tail(self.blocks(self._flatten(images)))
        return self.head(self.dropout(pooled))

    def _flatten(self, images: Tensor) -> Tensor:
        expected = (self.in_channels, *self.image_shape)
        positions = num_points(self.in_space)
        if images.dim() == 3 and tuple(images.shape[1:]) == (self.in_channels, positions):
            return images
        if images.dim() != 2 + len(self.image_shape) or tuple(images.shape[1:]) != expected:
            raise ValueError(f"GMCNN on {self.group.name} expects images of shape "
                             f"(batch, {', '.join(map(str, expected))}); got "
                             f"{tuple(images.shape)}. Choose a group whose factor orders equal "
                             "the image size, e.g. C32 x C32 or D16 x D16 for 32 x 32 images, "
                             "or p4 / p4m with the image size.")
        return images.flatten(2)

    def example_input(self, batch_size: int = 2) -> Tensor:
        return torch.randn(batch_size, self.in_channels, *self.image_shape)



