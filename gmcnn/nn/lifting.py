"""Lifting from the pixel grid to a wallpaper group and projecting back (docs/design.md §5).

G = p4(n) or p4m(n) with point group H, X = G / H the n x n pixel torus (:mod:`gmcnn.spaces`),
d_1..d_K the offsets of the (2t+1) x (2t+1) box (row-major, -t..t), g = (t, h) in G.

Lifting, functions on X -> functions on G, for g = (t, h):

    scalar, shared:  y_o(g) = b_o + sum_k w[o, k] s(g . d_k),  s = sum_c x_c
    scalar, full:    y_o(g) = b_o + sum_{c,k} w[o, c, k] x_c(g . d_k)
    vector, full:    y_o(g) = b_o + sum_{f,j,k} w[o, 2f + j, k] (L_h^-1 v_f(g . d_k))_j
    vector, shared:  the same on the sum of the fields v = sum_f v_f (weight (O, 2, K))

It is equivariant: lifting(g' . x) = g' . lifting(x), with g' acting on X as in :mod:`gmcnn.spaces`
and on G by (g' . y)(g) = y(g'^-1 g). It is computed as a GM convolution on G: the pullback
z(g) = L_h^-1 x(g . 0) (z(t, h) = x(t) for scalars) is a function on G, and z(g (d_k, e)) =
L_h^-1 x(g . d_k), so with the neighbourhood e_k = (-d_k, e) the lifting is
:func:`gmcnn.functional.gm_conv` of z: one permutation gather (gather backward) and one batched
matmul. The rank-r relaxation (position profiles over G) applies as in GMConv: the GM form of a
relaxed group convolution.

Projection, functions on G -> functions on X:

    scalar:  y_c(x) = max_h f_c(x, h)  (or the mean)   -- GM pooling over the cosets of the
             translations, whose representatives are H;
    vector:  v_f(x) = mean_h L_h (f_2f(x, h), f_2f+1(x, h))  -- channel pairs become vectors.

Dense formulations (how the G-CNN and relaxed-group-convolution papers compute it, and a fast
path): :func:`lifting_conv2d` and :func:`group_conv2d` run the lifting and a GMConv on G as one
circular ``F.conv2d`` with |H| transformed copies of the kernel. For vector fields the kernel of
point h also turns the frame: K_h[(f, j), L_h d_k] = sum_i w[2f + i, k] (L_h^-1)_ij
(:meth:`GMLifting.dense_kernel`, the lifting's "conv" backend).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gmcnn import functional as GF
from gmcnn.groups import WallpaperGroup, make_group
from gmcnn.nn.base import EquivariantModule, GroupMatrixLayer, check_input
from gmcnn.spaces import FIELDS, VectorField, boundary_subgroup, make_space, symmetry_space

LIFTING_BACKENDS = ("auto", "gather", "conv")
PROJECTION_MODES = ("max", "mean")


def wallpaper_group(group: WallpaperGroup | str, layer: str) -> WallpaperGroup:
    group = make_group(group)
    if not isinstance(group, WallpaperGroup):
        raise ValueError(f"{layer} needs a wallpaper group such as 'p4(28)' or 'p4m(28)', got "
                         f"{group.name}")
    return group


def box_offsets(t: int) -> np.ndarray:
    """(K, 2) offsets (i, j) of the (2t+1) x (2t+1) box, row-major from (-t, -t)."""
    r = np.arange(-t, t + 1)
    return np.stack(np.meshgrid(r, r, indexing="ij"), -1).reshape(-1, 2)


def _tap_of_offset(offsets: np.ndarray, t: int) -> np.ndarray:
    return (offsets[..., 0] + t) * (2 * t + 1) + offsets[..., 1] + t


def lifting_kernel_index(group: WallpaperGroup, t: int) -> Tensor:
    """index[h, e] = k with L_h d_k = e: the dense lifting kernel for point h is w[..., index[h]]."""
    e = box_offsets(t)
    inverse = group.linear[group.acting.inverse]                        # L_h^-1
    return torch.as_tensor(_tap_of_offset(np.einsum("hij,ej->hei", inverse, e), t))


def group_kernel_index(group: WallpaperGroup, t: int) -> Tensor:
    """index[h, s, e] = tap (s^-1 h, d) with d = -L_s^-1 e, so that GMConv's
    y(p, h) = sum_{s, e} w[index[h, s, e]] x(p + e, s) (a cross-correlation per (h, s))."""
    e, acting = box_offsets(t), group.acting
    s = np.arange(acting.order)
    q = acting.multiply(acting.inverse[s][None, :], s[:, None])        # [h, s] = s^-1 h
    d = -np.einsum("sij,ej->sei", group.linear[acting.inverse], e)     # (S, E, 2)
    return torch.as_tensor(q[:, :, None] * len(e) + _tap_of_offset(d, t)[None])


def conv2d_on_grid(x: Tensor, kernel: Tensor, n: int, t: int, bias: Tensor | None,
                   points: int, boundary: str = "circular", fast_pad: bool = False) -> Tensor:
    """x (B, C', n^2) -> cross-correlation with ``kernel`` (O |H|, C', k, k) -> (B, O, |H| n^2),
    on the n x n torus (``boundary`` "circular": one circular pad; ``fast_pad``: by
    :func:`gmcnn.functional.circular_pad2d`, once differentiable) or on the n x n patch with
    zeros outside ("zero": conv2d's own padding, no copy)."""
    image = x.reshape(x.shape[0], -1, n, n)
    if bias is not None:
        bias = bias.repeat_interleave(points)
    if boundary == "zero":
        return F.conv2d(image, kernel, bias, padding=t).reshape(x.shape[0], kernel.shape[0] // points, -1)
    image = GF.circular_pad2d(image, t) if fast_pad else F.pad(image, (t,) * 4, mode="circular")
    return F.conv2d(image, kernel, bias).reshape(x.shape[0], kernel.shape[0] // points, -1)


def lifting_kernel(weight: Tensor, index: Tensor, t: int, frames: Tensor | None = None) -> Tensor:
    """The dense lifting kernels (O |H|, C', k, k), K_h[L_h d_k] = w[k], from
    :func:`lifting_kernel_index` ``index`` (on the weight's device). Vector fields (``frames``
    the matrices L_h^-1 (|H|, 2, 2), C' even): the kernel of point h reads component j of field f
    with sum_i w[2f + i] (L_h^-1)_ij, the rotated frame of the pullback."""
    k = 2 * t + 1
    dense = weight.index_select(-1, index.flatten()).unflatten(-1, index.shape)  # (O, C', H, E)
    if frames is not None:
        dense = torch.einsum("ofihe,hij->ofjhe", dense.unflatten(1, (-1, 2)),
                             frames.to(dense.dtype)).flatten(1, 2)
    return dense.permute(0, 2, 1, 3).reshape(-1, weight.shape[1], k, k)


def group_kernel(weight: Tensor, index: Tensor, t: int, points: int) -> Tensor:
    """The dense group-convolution kernels (O |H|, C' |H|, k, k) from :func:`group_kernel_index`
    ``index`` (on the weight's device)."""
    k = 2 * t + 1
    dense = weight.index_select(-1, index.flatten()).unflatten(-1, index.shape)  # (O, C', H, S, E)
    return dense.permute(0, 2, 1, 3, 4).reshape(weight.shape[0] * points, -1, k, k)


def lifting_conv2d(x: Tensor, weight: Tensor, group: WallpaperGroup, t: int,
                   bias: Tensor | None = None, boundary: str = "circular") -> Tensor:
    """The scalar lifting as one F.conv2d with the |H| transformed kernels
    K_h[L_h d_k] = w[k]: x (B, C, n^2), weight (O, C', K) -> (B, O, |G|); ``boundary`` as in
    :func:`conv2d_on_grid`."""
    if weight.shape[1] == 1:
        x = x.sum(1, keepdim=True)
    dense = lifting_kernel(weight, lifting_kernel_index(group, t).to(weight.device), t)
    return conv2d_on_grid(x, dense, group.n, t, bias, group.acting.order, boundary)


def group_conv2d(x: Tensor, weight: Tensor, group: WallpaperGroup, t: int,
                 bias: Tensor | None = None, boundary: str = "circular") -> Tensor:
    """``GMConv(group, ..., t=t)`` as one F.conv2d over (C' |H|) input channels:
    x (B, C, |G|), weight (O, C', |H| (2t+1)^2) -> (B, O, |G|); ``boundary`` as in
    :func:`conv2d_on_grid`."""
    if weight.shape[1] == 1:
        x = x.sum(1, keepdim=True)
    points = group.acting.order
    dense = group_kernel(weight, group_kernel_index(group, t).to(weight.device), t, points)
    return conv2d_on_grid(x, dense, group.n, t, bias, points, boundary)


class GMLifting(GroupMatrixLayer):
    """Lifting layer: (B, C, n^2) functions on the pixel grid -> (B, O, |G|) functions on G.

    ``field="vector"``: the C input channels are C / 2 vector fields (v_x, v_y). Backends:
    "gather" (permutation gather + matmul) and "conv" (one F.conv2d of the grid input with the
    layer's :meth:`dense_kernel`; for scalar fields :func:`lifting_conv2d`); "auto" takes "conv"
    for scalar full mode or a zero boundary and "gather" otherwise.
    ``boundary`` "circular" (the pixel torus: equivariant to all of G) or "zero" (a finite patch,
    zeros outside: equivariant to the point group about the image centre, conv backend, scalar
    fields; a relaxation's profiles then vary over the same |G| points).
    """

    def __init__(self, group: WallpaperGroup | str, in_channels: int, out_channels: int,
                 t: int = 1, *, field: str = "scalar", channel_mode: str = "shared",
                 bias: bool = True, rank: int = 0, relaxation: str = "additive",
                 backend: str = "auto", boundary: str = "circular"):
        group = wallpaper_group(group, "GMLifting")
        kept = boundary_subgroup(group, boundary, "GMLifting")
        if kept is not None and (field != "scalar" or backend == "gather"):
            raise ValueError("GMLifting with boundary='zero' lifts scalar fields with the conv backend; "
                             "use boundary='circular' for vector fields or the gather backend")
        space = make_space(group, field)
        if in_channels % space.components:
            raise ValueError(f"a vector-field lifting needs an even number of input channels "
                             f"(pairs v_x, v_y), got in_channels={in_channels}")
        box = group.normal.neighbourhood(t)                               # checks t
        weight_in = space.components if channel_mode == "shared" and field == "vector" else None
        super().__init__(group, in_channels, out_channels, len(box), channel_mode, bias, rank,
                         relaxation, weight_in_channels=weight_in)
        self.t, self.field, self.in_space = t, field, space
        support = group.combine(group.normal.inverse[box], group.acting.identity)  # (-d_k, e)
        self.register_index(support)
        if isinstance(space, VectorField):
            frames = torch.as_tensor(space.component_matrices[group.acting.inverse], dtype=torch.float32)
            self.register_buffer("frames", frames, persistent=False)          # L_h^-1 on (v_x, v_y)
        if backend not in LIFTING_BACKENDS:
            raise ValueError(f"backend must be one of {LIFTING_BACKENDS}, got {backend!r}")
        if backend == "auto":
            backend = "conv" if field == "scalar" and (channel_mode == "full" or kept) else "gather"
        self.backend, self.boundary = backend, boundary
        if kept is not None:
            self.in_space = symmetry_space(group, (), boundary)
            self.out_space = kept
        self.register_buffer("dense_index", lifting_kernel_index(group, t), persistent=False)

    def pullback(self, x: Tensor) -> Tensor:
        """(B, C, n^2) on the grid -> (B, C, |G|), z(t, h) = L_h^-1 x(t)."""
        points = self.group.acting.order
        if self.field == "scalar":
            return x[:, :, None].expand(-1, -1, points, -1).flatten(2)
        fields = x.unflatten(1, (-1, 2))                                        # (B, F, 2, P)
        z = torch.einsum("hij,bfjp->bfihp", self.frames.to(x.dtype), fields)
        return z.flatten(3).flatten(1, 2)

    def weight_input(self, x: Tensor) -> Tensor:
        """The channels the weight reads: x itself (full mode), or in shared mode the channel sum
        (scalar, (B, 1, n^2)) or the sum of the fields (vector, (B, 2, n^2))."""
        if self.channel_mode == "full":
            return x
        return x.sum(1, keepdim=True) if self.field == "scalar" else x.unflatten(1, (-1, 2)).sum(1)

    def dense_kernel(self, weight: Tensor) -> Tensor:
        """The conv2d kernels (O' |H|, C', k, k) of a weight (O', C', K) of this layer
        (:func:`lifting_kernel`; vector fields: in the rotated frames)."""
        return lifting_kernel(weight, self.dense_index, self.t,
                              self.frames if self.field == "vector" else None)

    def conv2d(self, x: Tensor, weight: Tensor, bias: Tensor | None, fast_pad: bool = False) -> Tensor:
        """The lifting of x (B, C, n^2) with ``weight`` (O', C', K) as one conv2d on the grid
        (:func:`conv2d_on_grid`) -> (B, O', |G|)."""
        return conv2d_on_grid(self.weight_input(x), self.dense_kernel(weight), self.group.n, self.t,
                              bias, self.group.acting.order, self.boundary, fast_pad)

    def group_matrix_product(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.backend == "conv":
            return self.conv2d(x, weight, bias)
        return GF.gm_conv(self.pullback(self.weight_input(x)), weight, self.index, self.inverse_index, bias)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, field={self.field}, t={self.t}, rank={self.rank}, "
                f"backend={self.backend}, boundary={self.boundary}")


class GMProjection(EquivariantModule):
    """Projection (B, C, |G|) on G -> (B, C, n^2) on the grid: max / mean over the point group
    (scalar), or the mean of the rotated channel pairs (vector, C even)."""

    def __init__(self, group: WallpaperGroup | str, mode: str = "max", field: str = "scalar"):
        super().__init__()
        self.group = wallpaper_group(group, "GMProjection")
        if mode not in PROJECTION_MODES:
            raise ValueError(f"projection mode must be one of {PROJECTION_MODES}, got {mode!r}")
        if field not in FIELDS:
            raise ValueError(f"field must be one of {tuple(FIELDS)}, got {field!r}")
        if field == "vector" and mode != "mean":
            raise ValueError("a vector-field projection averages the rotated vectors: use "
                             "mode='mean' (a max of vectors is not equivariant)")
        self.mode, self.field = mode, field
        self.in_space, self.out_space = self.group, make_space(self.group, field)
        if field == "vector":
            matrices = torch.as_tensor(self.out_space.component_matrices, dtype=torch.float32)
            self.register_buffer("frames", matrices, persistent=False)           # L_h

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.group.order, None, "GMProjection", self.group.name)
        fibres = x.unflatten(2, (self.group.acting.order, -1))                   # (B, C, H, P)
        if self.field == "scalar":
            return fibres.amax(2) if self.mode == "max" else fibres.mean(2)
        if x.shape[1] % 2:
            raise ValueError(f"a vector-field projection needs an even number of channels (pairs "
                             f"v_x, v_y), got {x.shape[1]}")
        vectors = fibres.unflatten(1, (-1, 2))                                   # (B, F, 2, H, P)
        rotated = torch.einsum("hij,bfjhp->bfip", self.frames.to(x.dtype), vectors)
        return (rotated / self.group.acting.order).flatten(1, 2)

    def example_input(self, batch_size: int = 2) -> Tensor:
        return torch.randn(batch_size, 4, self.group.order)

    def extra_repr(self) -> str:
        return f"{self.group.name}, mode={self.mode}, field={self.field}"
