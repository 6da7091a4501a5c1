"""GM convolution (docs/design.md §2.1).

For the neighbourhood e_1..e_K of radius t and each output position u in G,

    shared mode:  y_o(u) = b_o + sum_k w[o, k] sum_c x_c(u e_k^-1)     (C_out K + C_out params)
    full mode:    y_o(u) = b_o + sum_{c,k} w[o, c, k] x_c(u e_k^-1)    (C_out C_in K + C_out)

Shared mode is the original GM-CNN layer (channel mixing happens in 1x1 convolutions elsewhere);
full mode is a G-CNN-style layer. Both are exactly equivariant to left translation,
y(g^-1 u) for x(g^-1 u), unless a relaxation of rank > 0 is requested.

Backends: "gather" (a gather by the permutation rows of index[k, u] = u e_k^-1, then one batched
matmul; any group) and "conv" (circular convolution; products of up to three cyclic groups with
the standard neighbourhood, and p4(n) / p4m(n) as one conv2d with |H| transformed kernel copies,
:func:`gmcnn.nn.lifting.group_conv2d`). "auto" takes "conv" for full mode on cyclic products, where the
vendor convolution avoids materialising the C K-times larger gathered input, and "gather"
otherwise (in shared mode the gather is the faster of the two on CPU; see benchmarks/).

Boundary (p4(n) / p4m(n)): "circular" (default) is the group convolution on the pixel torus, exact
for all of G; "zero" treats the n x n image as a finite patch with zeros outside (conv2d's own
padding, conv backend): exact for the point group about the image centre only
(:meth:`~gmcnn.groups.WallpaperGroup.centre_point_group`, which is then the layer's in and out
space), translations hold away from the border (docs/design.md §5).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from gmcnn import functional as GF
from gmcnn.groups import FiniteGroup, WallpaperGroup, make_group
from gmcnn.nn.base import GroupMatrixLayer, check_input
from gmcnn.nn.lifting import group_conv2d, group_kernel_index
from gmcnn.spaces import boundary_subgroup

BACKENDS = ("auto", "gather", "conv")


class GMConv(GroupMatrixLayer):
    """Group-matrix convolution on functions (B, C, N) over a finite group of order N."""

    def __init__(self, group: FiniteGroup | str | Sequence[str], in_channels: int,
                 out_channels: int, t: int = 1, *, neighbourhood: Sequence[int] | None = None,
                 channel_mode: str = "shared", bias: bool = True, rank: int = 0,
                 relaxation: str = "additive", backend: str = "auto", boundary: str = "circular"):
        group = make_group(group)
        support = group.neighbourhood(t) if neighbourhood is None else np.asarray(neighbourhood)
        if neighbourhood is not None and (support.ndim != 1 or len(support) == 0
                                          or support.min() < 0 or support.max() >= group.order):
            raise ValueError(f"neighbourhood must be a non-empty list of element indices of "
                             f"{group.name} in [0, {group.order})")
        super().__init__(group, in_channels, out_channels, len(support), channel_mode, bias,
                         rank, relaxation)
        self.t = t if neighbourhood is None else None
        self.register_index(support)
        self.boundary = boundary
        kept = self._boundary_subgroup(boundary, backend)
        self.backend = self._resolve_backend("conv" if kept is not None else backend)
        if kept is not None:
            self.in_space = self.out_space = kept
        if self.backend == "conv" and isinstance(self.group, WallpaperGroup):
            self.register_buffer("dense_index", group_kernel_index(self.group, self.t), persistent=False)

    def _boundary_subgroup(self, boundary: str, backend: str):
        """None for the circular boundary; for "zero" (wallpaper groups, conv backend, the
        standard neighbourhood) the point group about the image centre that the layer keeps
        (exactly at rank 0; a relaxation is the sum of position-profiled zero-boundary layers)."""
        if boundary == "zero" and not isinstance(self.group, WallpaperGroup):
            raise ValueError(f"boundary must be 'circular' on {self.group.name}; boundary='zero' "
                             "(a finite image patch) needs a wallpaper group p4(n) / p4m(n)")
        kept = boundary_subgroup(self.group, boundary, "GMConv")
        if kept is not None and (backend == "gather" or self.t is None):
            raise ValueError("GMConv with boundary='zero' runs the conv backend with the standard "
                             "radius-t neighbourhood; use boundary='circular' for the gather backend "
                             "or a custom neighbourhood")
        return kept

    def _resolve_backend(self, backend: str) -> str:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        conv_ok = self.t is not None and (GF.cyclic_axes(self.group) is not None
                                          or isinstance(self.group, WallpaperGroup))
        if backend == "conv" and not conv_ok:
            raise ValueError(f"backend='conv' needs a product of at most three cyclic groups or "
                             f"p4(n) / p4m(n), and the standard radius-t neighbourhood; {self.group.name} with this "
                             "neighbourhood needs backend='gather'")
        if backend == "auto":
            return "conv" if conv_ok and self.channel_mode == "full" else "gather"
        return backend

    def group_matrix_product(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.backend == "conv" and isinstance(self.group, WallpaperGroup):
            return group_conv2d(x, weight, self.group, self.t, bias, self.boundary)
        if self.backend == "conv":
            return GF.circular_gm_conv(x, weight, GF.cyclic_axes(self.group), self.t, bias)
        return GF.gm_conv(x, weight, self.index, self.inverse_index, bias)

    def profiled_product(self, x: Tensor) -> Tensor:
        """What ``forward`` computes for a relaxed layer, from one gather of the input: the
        (1 + r) GM products as :func:`gmcnn.functional.gm_conv_profiled` of the relaxation's
        weight sets and position profiles (gather backend; cheaper than ``forward``'s (1 + r) O
        output rows in shared mode, see gmcnn.nn.blocks)."""
        check_input(x, self.group.order, self.in_channels, type(self).__name__, self.group.name)
        weights, profiles = self.relaxation.profiled_weights(self.weight)
        return GF.gm_conv_profiled(x, weights, profiles, self.index, self.inverse_index, self.bias)

    def extra_repr(self) -> str:
        radius = "custom neighbourhood" if self.t is None else f"t={self.t}"
        return (f"{super().extra_repr()}, {radius}, rank={self.rank}, backend={self.backend}, "
                f"boundary={self.boundary}")
