"""GM pooling and transposed pooling over the cosets of a subgroup (docs/design.md §2.3).

For a subgroup H of G with right-coset representatives c_1..c_m (G = disjoint union of H c_j):

    pooling:            y(h) = max_j x(h c_j)   (or the mean)       functions on G -> on H
    transposed pooling: y_o(h c_j) = b_o + sum_c W[c, o, j] x_c(h)  functions on H -> on G

Both commute with left translation by elements of H. With the "even" subgroup of C_n x C_n
(representatives (0,0), (0,1), (1,0), (1,1)) pooling is 2x2 pooling with stride 2, and H is laid
out as C_{n/2} x C_{n/2}, so later layers run on ``pool.out_space`` (likewise D_n -> D_{n/2}).
The positions h c_j form a permutation of G, so both layers are a single permutation gather.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from gmcnn import functional as GF
from gmcnn.groups import FiniteGroup, Subgroup, WallpaperGroup, make_group
from gmcnn.nn.base import EquivariantModule, check_input

POOL_MODES = ("max", "mean")


def resolve_subgroup(group: FiniteGroup, subgroup: Subgroup | str | Sequence[int]) -> Subgroup:
    """``"even"``, a :class:`Subgroup` of ``group``, or a list of element indices of ``group``."""
    if isinstance(subgroup, str):
        if subgroup != "even":
            raise ValueError(f"subgroup must be 'even', a Subgroup or a list of element indices; "
                             f"got {subgroup!r}")
        return group.even_subgroup()
    if isinstance(subgroup, Subgroup):
        if subgroup.parent != group:
            raise ValueError(f"subgroup is a subgroup of {subgroup.parent.name}, not of {group.name}")
        return subgroup
    return group.subgroup(subgroup)


class _CosetLayer(EquivariantModule):
    """Holds the subgroup and the permutation p = j |H| + h -> index of h c_j."""

    def __init__(self, group: FiniteGroup | str | Sequence[str], subgroup: Subgroup | str | Sequence[int]):
        super().__init__()
        self.group = make_group(group)
        self.subgroup = resolve_subgroup(self.group, subgroup)
        coset_order = torch.as_tensor(self.subgroup.pooling_index.reshape(1, -1))
        self.register_buffer("coset_order", coset_order, persistent=False)
        self.register_buffer("coset_order_inverse", GF.inverse_permutations(coset_order),
                             persistent=False)


def windows_of_images(subgroup: Subgroup) -> bool:
    """Whether pooling over ``subgroup`` is 2 x 2 stride-2 pooling of every (channel, point) image:
    the parent a wallpaper group p4(n) / p4m(n) (functions (|H|, n, n)), the subgroup laid out on
    (|H|, n/2, n/2), and the coset of its element (h, a, b) the window
    {(h, 2a + i, 2b + j) : i, j in {0, 1}} (the even subgroup, in any coset order). Then
    ``F.max_pool2d(x.view(B, C |H|, n, n), 2)`` computes the max pooling (gmcnn.nn.blocks)."""
    parent, group = subgroup.parent, subgroup.group
    if not (isinstance(parent, WallpaperGroup) and isinstance(group, WallpaperGroup)
            and parent.kind == group.kind and 2 * group.n == parent.n):
        return False
    h, a, b = np.unravel_index(np.arange(group.order), (group.acting.order, group.n, group.n))
    i, j = np.divmod(np.arange(4), 2)
    windows = h * parent.n ** 2 + (2 * a + i[:, None]) * parent.n + 2 * b + j[:, None]   # (4, |H'|)
    return bool(np.array_equal(np.sort(subgroup.pooling_index, 0), np.sort(windows, 0)))


class GMPool(_CosetLayer):
    """Max or mean over the right cosets of a subgroup: (B, C, |G|) -> (B, C, |H|)."""

    def __init__(self, group: FiniteGroup | str | Sequence[str],
                 subgroup: Subgroup | str | Sequence[int] = "even", mode: str = "max"):
        if mode not in POOL_MODES:
            raise ValueError(f"pooling mode must be one of {POOL_MODES}, got {mode!r}")
        super().__init__(group, subgroup)
        self.mode = mode
        self.in_space, self.out_space = self.subgroup, self.subgroup.group
        self.image_windows = windows_of_images(self.subgroup)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.group.order, None, "GMPool", self.group.name)
        grouped = GF.permutation_gather(x, self.coset_order, self.coset_order_inverse)
        grouped = grouped.reshape(*x.shape[:2], self.subgroup.index, self.subgroup.group.order)
        return grouped.amax(2) if self.mode == "max" else grouped.mean(2)

    def example_input(self, batch_size: int = 2) -> Tensor:
        return torch.randn(batch_size, 3, self.group.order)

    def extra_repr(self) -> str:
        return f"{self.subgroup.name}, mode={self.mode}"


class GMUnpool(_CosetLayer):
    """Learned transposed pooling: (B, C_in, |H|) -> (B, C_out, |G|), every position written once."""

    def __init__(self, group: FiniteGroup | str | Sequence[str], in_channels: int,
                 out_channels: int, subgroup: Subgroup | str | Sequence[int] = "even",
                 bias: bool = True):
        super().__init__(group, subgroup)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.in_space, self.out_space = self.subgroup.group, self.subgroup
        bound = 1 / math.sqrt(in_channels)
        self.weight = nn.Parameter(
            torch.empty(in_channels, out_channels, self.subgroup.index).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.subgroup.group.order, self.in_channels, "GMUnpool",
                    self.subgroup.group.name)
        per_coset = torch.einsum("bch,coj->bojh", x, self.weight).flatten(2)  # position j|H| + h
        y = GF.permutation_gather(per_coset, self.coset_order_inverse, self.coset_order)[:, :, 0]
        return y if self.bias is None else y + self.bias[:, None]

    def example_input(self, batch_size: int = 2) -> Tensor:
        return torch.randn(batch_size, self.in_channels, self.subgroup.group.order)

    def extra_repr(self) -> str:
        return f"{self.subgroup.name}, {self.in_channels} -> {self.out_channels}"


