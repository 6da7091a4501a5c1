"""Approximate (relaxed) equivariance for group-matrix layers (docs/design.md §2.2).

A GM layer's weight w gives y = GM(w) s. Both relaxations here act in two steps that work for any
GM layer: ``expand_weight`` stacks extra weight rows before the layer's GM product, and
``combine`` mixes the stacked outputs with position-dependent profiles afterwards.

Additive, rank r (the paper's LDR generalisation):

    y_o(u) = sum_k (w[o, k] + sum_{i<r} a[o, i, k] v_i(u)) s(u e_k^-1)
           = (GM(w_o) s)(u) + sum_i v_i(u) (GM(a_oi) s)(u),

so the layer costs (1 + r) GM products; ``profiled_weights`` writes it as
sum_i P[i, u] (GM(W_i) s)(u) with W = [w, a_0..], P = [1, v_0..], which
:func:`gmcnn.functional.gm_conv_profiled` computes from one gather of s. The tap-by-position coefficient matrix
F[k, u] = w[o, k] + sum_i a[o, i, k] v_i(u) has displacement F - F P (P a cyclic shift over
positions) of rank <= r; a = 0 (the initial value) is exactly equivariant. ``penalty()`` is
||sum_i a_i v_i^T||_F^2 / N, the mean squared perturbation per position.

Multiplicative (the original regression code): y_o(u) = e(u) (GM(w_o / ||w_o||) s)(u) with the
learned position vector e renormalised to unit norm at every call; ``penalty()`` is the squared
distance of e from the constant unit vector. e starts constant, i.e. exactly equivariant.

Any other module whose ``penalty()`` measures how far it is from an exact symmetry (the relaxed
baselines of gmcnn.models.baselines) subclasses :class:`Relaxation`; :func:`relaxation_penalty`
sums them all, and the runner weighs the sum by ``trainer.relaxation_penalty``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Relaxation(nn.Module):
    """A module with a ``penalty()``: its distance from exact equivariance (0 at the exact point)."""

    def penalty(self) -> Tensor:
        raise NotImplementedError


class AdditiveRelaxation(Relaxation):
    """Rank-r additive relaxation for a weight of shape (out_channels, *rest)."""

    constant_profiles = 1   # the first row of profiled_weights' P is the constant 1

    def __init__(self, rank: int, weight_shape: tuple[int, ...], num_positions: int):
        super().__init__()
        self.rank, self.out_channels = rank, weight_shape[0]
        self.coefficients = nn.Parameter(torch.zeros(weight_shape[0], rank, *weight_shape[1:]))
        self.profiles = nn.Parameter(torch.randn(rank, num_positions))

    def expand_weight(self, weight: Tensor) -> Tensor:
        """(O, *rest) -> (O * (1 + r), *rest): [w; a_0..a_{r-1} for every o]."""
        return torch.cat([weight, self.coefficients.flatten(0, 1)])

    def combine(self, y: Tensor) -> Tensor:
        """(B, O * (1 + r), N) -> (B, O, N)."""
        exact, extra = y[:, :self.out_channels], y[:, self.out_channels:]
        extra = extra.unflatten(1, (self.out_channels, self.rank))
        return exact + torch.einsum("born,rn->bon", extra, self.profiles.to(extra.dtype))

    def profiled_weights(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """The layer as sum_i P[i, u] GM(W[:, i]) x: weight sets W (O, 1 + r, *rest) = [w, a_0..]
        and position profiles P (1 + r, N) = [1, v_0..]."""
        ones = self.profiles.new_ones(1, self.profiles.shape[1])
        return torch.cat([weight[:, None], self.coefficients], 1), torch.cat([ones, self.profiles])

    def position_coefficients(self, weight: Tensor) -> Tensor:
        """w[o, ...] + sum_i a[o, i, ...] v_i(u): shape (O, *rest, N)."""
        return weight[..., None] + torch.einsum("or...,rn->o...n", self.coefficients, self.profiles)

    def penalty(self) -> Tensor:
        a = self.coefficients.flatten(2)  # (O, r, J)
        gram = self.profiles @ self.profiles.T  # (r, r)
        return torch.einsum("oij,ik,okj->", a, gram, a) / self.profiles.shape[1]

    def extra_repr(self) -> str:
        return f"rank={self.rank}"


class MultiplicativeRelaxation(Relaxation):
    """The original code's rank-1 multiplicative form."""

    rank = 1
    constant_profiles = 0   # profiled_weights' P has no constant row

    def __init__(self, num_positions: int):
        super().__init__()
        self.position_weight = nn.Parameter(torch.ones(num_positions))

    def _unit_profile(self) -> Tensor:
        return self.position_weight / self.position_weight.norm()

    def expand_weight(self, weight: Tensor) -> Tensor:
        return weight / weight.flatten(1).norm(dim=1).reshape(-1, *(1,) * (weight.dim() - 1))

    def combine(self, y: Tensor) -> Tensor:
        return y * self._unit_profile().to(y.dtype)

    def profiled_weights(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """The layer as P[0, u] GM(W[:, 0]) x: W = w / ||w_o|| (O, 1, *rest), P = e (1, N)."""
        return self.expand_weight(weight)[:, None], self._unit_profile()[None]

    def position_coefficients(self, weight: Tensor) -> Tensor:
        """e(u) w[o, ...] / ||w_o||: shape (O, *rest, N)."""
        return self.expand_weight(weight)[..., None] * self._unit_profile()

    def penalty(self) -> Tensor:
        e = self._unit_profile()
        return (e - 1 / math.sqrt(e.numel())).pow(2).sum()


def make_relaxation(kind: str, rank: int, weight_shape: tuple[int, ...],
                    num_positions: int) -> nn.Module | None:
    """None for rank 0 (exact); otherwise the relaxation module of the given kind."""
    if int(rank) != rank or rank < 0:
        raise ValueError(f"rank must be an integer >= 0 (0 = exactly equivariant), got {rank!r}")
    if kind not in ("additive", "multiplicative"):
        raise ValueError(f"relaxation must be 'additive' or 'multiplicative', got {kind!r}")
    if rank == 0:
        return None
    if kind == "multiplicative":
        if rank != 1:
            raise ValueError(f"the multiplicative relaxation has rank 1, got rank={rank}")
        return MultiplicativeRelaxation(num_positions)
    return AdditiveRelaxation(int(rank), weight_shape, num_positions)


def relaxation_penalty(module: nn.Module) -> Tensor:
    """Sum of the penalties of all relaxations inside ``module`` (0 if there are none)."""
    terms = [m.penalty() for m in module.modules() if isinstance(m, Relaxation)]
    return torch.stack(terms).sum() if terms else torch.zeros(())
