"""GM linear layer (docs/design.md §2.4): a group matrix with full support.

    y_o(u) = b_o + sum_{c, m} w[o, c, u^-1 m] x_c(m),    i.e.  y_o = sum_c GM(w_oc) x_c,

with GM(w)[i, j] = w(g_i^-1 g_j): a structured N x N map with N parameters per channel pair
(circulant for C_n, doubly circulant for C_n x C_n). Shared mode applies one GM(w_o) to the channel
sum. The layer builds the explicit matrices, so memory grows with C_out C' N^2: meant for small
groups or few channels (the weights, not the batch, are gathered). Relaxations apply as in GMConv.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from gmcnn import functional as GF
from gmcnn.groups import FiniteGroup, make_group
from gmcnn.nn.base import GroupMatrixLayer


class GMLinear(GroupMatrixLayer):
    """Full-support group-matrix layer on functions (B, C, N)."""

    def __init__(self, group: FiniteGroup | str | Sequence[str], in_channels: int,
                 out_channels: int, *, channel_mode: str = "shared", bias: bool = True,
                 rank: int = 0, relaxation: str = "additive"):
        group = make_group(group)
        super().__init__(group, in_channels, out_channels, group.order, channel_mode, bias,
                         rank, relaxation)
        self.register_buffer("index", GF.group_matrix_index(group), persistent=False)

    def group_matrix_product(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return GF.gm_linear(x, weight, self.index, bias)
