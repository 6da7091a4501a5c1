"""Measuring equivariance (docs/design.md §2.5).

For a map f, an input x and a group element g acting by left translation, (g . x)(u) = x(g^-1 u):

    equivariant output:  err(g) = ||f(g . x) - g . f(x)|| / ||f(x)||
    invariant output:    err(g) = ||f(g . x) - f(x)|| / ||f(x)||

per sample, then averaged (or maximised) over samples and the chosen elements. Exact layers give
about 1e-6 in float32; relaxed layers a measurable value.

The input and output *spaces* say how g acts: a FiniteGroup acts on functions on itself, a
Subgroup acts (through its embedding) on functions on its parent. Tensors may carry the positions
flattened in the last axis or as an image (..., H, W) flattened row-major.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from gmcnn.groups import FiniteGroup, Subgroup

Space = FiniteGroup | Subgroup


def acting_group(space: Space) -> FiniteGroup:
    return space.group if isinstance(space, Subgroup) else space


def act(space: Space, g: int, x: Tensor) -> Tensor:
    """(g . x)(u) = x(g^-1 u) on the trailing position axes of ``x``."""
    permutation = torch.as_tensor(space.left_action(g), device=x.device)
    n = permutation.numel()
    trailing = 1
    for d in range(x.dim() - 1, -1, -1):
        trailing *= x.shape[d]
        if trailing == n:
            flat = x.flatten(d)
            return flat[..., permutation].reshape(x.shape)
        if trailing > n:
            break
    raise ValueError(f"tensor of shape {tuple(x.shape)} has no trailing axes holding the {n} "
                     f"positions of {getattr(space, 'name', space)}")


def equivariance_error(fn: Callable[[Tensor], Tensor], x: Tensor, in_space: Space | None = None,
                       out_space: Space | None | str = "module",
                       elements: Sequence[int] | None = None, reduction: str = "mean") -> float:
    """Relative equivariance error of ``fn`` at ``x`` (see the module docstring).

    ``in_space``/``out_space`` default to ``fn.in_space``/``fn.out_space``; ``out_space=None``
    means the output is invariant. ``elements`` are indices in the acting group (default: all).
    ``reduction`` is "mean" or "max" over samples and elements.
    """
    in_space = in_space if in_space is not None else getattr(fn, "in_space", None)
    if in_space is None:
        raise ValueError("in_space is required when fn has no in_space attribute")
    if out_space == "module":
        out_space = getattr(fn, "out_space", None)
    if reduction not in ("mean", "max"):
        raise ValueError(f"reduction must be 'mean' or 'max', got {reduction!r}")
    group = acting_group(in_space)
    elements = range(group.order) if elements is None else elements
    with torch.no_grad():
        reference = fn(x)
        scale = reference.flatten(1).norm(dim=1).clamp_min(torch.finfo(reference.dtype).tiny)
        errors = []
        for g in elements:
            moved = fn(act(in_space, int(g), x))
            expected = reference if out_space is None else act(out_space, int(g), reference)
            errors.append((moved - expected).flatten(1).norm(dim=1) / scale)
    errors = torch.stack(errors)
    return float(errors.mean() if reduction == "mean" else errors.max())


def assert_equivariant(fn: Callable[[Tensor], Tensor], x: Tensor, atol: float = 1e-5,
                       **kwargs) -> None:
    """Assert that the largest relative equivariance error is at most ``atol`` (pytest helper)."""
    error = equivariance_error(fn, x, reduction="max", **kwargs)
    assert error <= atol, f"equivariance error {error:.3g} exceeds {atol:.1g}"


def displacement_rank(coefficients: Tensor, tol: float = 1e-6) -> int:
    """Rank of D(F) = F - F P for a tap-by-position matrix F (P: cyclic shift of positions).

    F[k, u] is the weight tap k applies at position u; F of an exact GM layer is constant along
    positions, so D(F) = 0. ``tol`` is relative to the largest singular value of F.
    """
    displacement = coefficients - coefficients.roll(-1, dims=-1)
    singular = torch.linalg.svdvals(displacement.double())
    scale = torch.linalg.svdvals(coefficients.double()).max()
    return int((singular > tol * scale).sum())
