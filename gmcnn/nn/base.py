"""Shared machinery of the group-matrix layers.

Every layer maps functions on an input space to functions on an output space (a group, a
subgroup acting on its parent, or a pixel grid: :mod:`gmcnn.spaces`). ``in_space`` and
``out_space`` say which, so a layer can check its own equivariance.

:class:`GroupMatrixLayer` is the common skeleton of GMConv and GMLinear:

    y = combine(GM(expand(w)) x) + b

where GM(.) is the layer's group-matrix product (gather-matmul, circular convolution, or an explicit
N x N matrix) and ``expand``/``combine`` come from the optional relaxation (identity when exact).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gmcnn import functional as GF
from gmcnn.equivariance import equivariance_error
from gmcnn.groups import FiniteGroup, make_group
from gmcnn.nn.relaxation import make_relaxation
from gmcnn.spaces import Space, num_points

CHANNEL_MODES = ("shared", "full")


def check_input(x: Tensor, positions: int, channels: int | None, layer: str,
                space_name: str) -> None:
    """Raise a ValueError naming the expected (batch, channels, positions) shape."""
    if x.dim() != 3 or x.shape[2] != positions or channels not in (None, x.shape[1]):
        expected = "channels" if channels is None else channels
        raise ValueError(
            f"{layer} expects input of shape (batch, {expected}, {positions}) for a function on "
            f"{space_name}; got {tuple(x.shape)}. Images are flattened row-major with "
            "x.flatten(2), the first group factor along the rows.")


class EquivariantModule(nn.Module):
    """A module that knows its input and output spaces (``out_space`` None: invariant output)."""

    in_space: Space
    out_space: Space | None

    def example_input(self, batch_size: int = 2) -> Tensor:
        raise NotImplementedError

    def check_equivariance(self, x: Tensor | None = None,
                           elements: Sequence[int] | None = None) -> float:
        """Largest relative equivariance error over ``elements`` (default: the whole group)."""
        x = self.example_input() if x is None else x
        return equivariance_error(self, x, elements=elements, reduction="max")


class GroupMatrixLayer(EquivariantModule):
    """Skeleton of a layer y = GM(w) x (+ b) on ``group`` with an optional relaxation."""

    def __init__(self, group: FiniteGroup | str | Sequence[str], in_channels: int,
                 out_channels: int, num_taps: int, channel_mode: str = "shared",
                 bias: bool = True, rank: int = 0, relaxation: str = "additive",
                 weight_in_channels: int | None = None):
        super().__init__()
        self.group = make_group(group)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if channel_mode not in CHANNEL_MODES:
            raise ValueError(f"channel_mode must be one of {CHANNEL_MODES}, got {channel_mode!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.channel_mode = channel_mode
        self.in_space = self.out_space = self.group
        weight_in = weight_in_channels or (1 if channel_mode == "shared" else self.in_channels)
        bound = 1 / math.sqrt(self.in_channels * num_taps)
        self.weight = nn.Parameter(torch.empty(out_channels, weight_in, num_taps).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound)) if bias else None
        self.relaxation = make_relaxation(relaxation, rank, tuple(self.weight.shape), self.group.order)

    def register_index(self, support) -> None:
        """Buffers of a layer that is a GM convolution on its group with the neighbourhood
        ``support`` (element indices): ``index[k, u] = u e_k^-1``, its inverse permutations, and
        the anchors and pairs of the fused kernels' Gram matrix (for a weight of one input channel,
        where they save inner products)."""
        self.register_buffer("index", GF.conv_index(self.group, support), persistent=False)
        self.register_buffer("inverse_index", GF.inverse_permutations(self.index), persistent=False)
        anchors = pairs = None
        if self.weight.shape[1] == 1:
            anchors, pairs = GF.gram_plan(self.group, support)
            if 2 * len(anchors) > len(support):
                anchors = pairs = None
        self.register_buffer("gram_anchors", anchors, persistent=False)
        self.register_buffer("gram_pairs", pairs, persistent=False)

    @property
    def gram_plan(self) -> tuple[Tensor, Tensor] | None:
        """(anchors, pairs) of :func:`gmcnn.functional.gram_plan`, or None where they would not
        save work (at least half as many anchors as taps)."""
        return None if self.gram_anchors is None else (self.gram_anchors, self.gram_pairs)

    @property
    def rank(self) -> int:
        return 0 if self.relaxation is None else self.relaxation.rank

    def position_coefficients(self) -> Tensor:
        """F[o, c, k, u]: the weight that tap k applies at output position u, shape (O, C', K, N).

        Constant along u exactly when the layer is equivariant; for a rank-r relaxation the
        displacement F - F P has rank <= r (see :func:`gmcnn.equivariance.displacement_rank`).
        """
        if self.relaxation is None:
            return self.weight[..., None].expand(*self.weight.shape, self.group.order)
        return self.relaxation.position_coefficients(self.weight)

    def group_matrix_product(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """(B, C, N) x (O', C', K) -> (B, O', N), adding ``bias`` if given."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, num_points(self.in_space), self.in_channels, type(self).__name__,
                    self.in_space.name)
        if self.relaxation is None:
            return self.group_matrix_product(x, self.weight, self.bias)
        y = self.relaxation.combine(
            self.group_matrix_product(x, self.relaxation.expand_weight(self.weight), None))
        return y if self.bias is None else y + self.bias[:, None].to(y.dtype)

    def example_input(self, batch_size: int = 2) -> Tensor:
        return torch.randn(batch_size, self.in_channels, num_points(self.in_space),
                           dtype=self.weight.dtype, device=self.weight.device)

    def extra_repr(self) -> str:
        return (f"{self.group.name}, {self.in_channels} -> {self.out_channels}, "
                f"channel_mode={self.channel_mode}, taps={self.weight.shape[-1]}, "
                f"bias={self.bias is not None}")
