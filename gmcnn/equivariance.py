"""Measuring equivariance (docs/design.md §2.5).

For a map f, an input x and a group element g acting by left translation, (g . x)(u) = x(g^-1 u):

    equivariant output:  err(g) = ||f(g . x) - g . f(x)|| / ||f(x)||
    invariant output:    err(g) = ||f(g . x) - f(x)|| / ||f(x)||

per sample, then averaged (or maximised) over samples and the chosen elements. Exact layers give
about 1e-6 in float32; relaxed layers a measurable value.

The input and output *spaces* (:mod:`gmcnn.spaces`) say how g acts: a FiniteGroup acts on functions on itself, a
Subgroup acts (through its embedding) on functions on its parent, and a wallpaper group acts on
the pixel grid (:class:`~gmcnn.spaces.PixelGrid`: (g . x)(p) = x(g^-1 . p)) and on vector fields
(:class:`~gmcnn.spaces.VectorField`: also each vector, (g . v)(p) = L_h v(g^-1 . p), on pairs of
channels (v_x, v_y) in the axis just before the positions; any space with a ``component_matrix(g)``
acts so on its groups of channels). Tensors may carry the positions
flattened in the last axis or as an image (..., H, W) flattened row-major.

On an n x n image, ``torch.rot90(x, 1, (-2, -1))`` (about the image centre) is the element
``group.element((-1, 0), 1)`` of p4(n) or p4m(n), ``torch.roll`` by (a, b) is
``group.element((a, b))`` and ``torch.flip(x, (-1,))`` is ``group.element((0, -1), 4)`` of p4m(n)
(see :func:`image_transform_element`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from gmcnn.groups import WallpaperGroup
from gmcnn.spaces import Space, acting_group


def image_transform_element(group: WallpaperGroup, rot90: int = 0, flip: bool = False,
                            roll: tuple[int, int] = (0, 0)) -> int:
    """The element of p4(n) / p4m(n) acting on n x n images as
    ``torch.roll(torch.rot90(torch.flip(x, (-1,)) if flip else x, rot90, (-2, -1)), roll, (-2, -1))``.

    torch.rot90 by one quarter turn is x -> (-1, 0) + R x on the torus, the column flip is
    x -> (0, -1) + M x; the roll is the translation by ``roll``.
    """
    if flip and group.kind != "p4m":
        raise ValueError(f"{group.name} has no mirrors; flips need p4m(n)")
    rotation, flip_element = group.element((-1, 0), 1), group.element((0, -1), 4)
    g = flip_element if flip else group.identity
    for _ in range(rot90 % 4):
        g = int(group.multiply(rotation, g))
    return int(group.multiply(group.element(roll), g))


def act(space: Space, g: int, x: Tensor) -> Tensor:
    """(g . x)(u) = x(g^-1 u) on the trailing position axes of ``x`` (and, for a field of k-component
    values, a space with ``component_matrix(g)`` (k x k) such as a vector field, that matrix on the
    groups of k channels just before them)."""
    permutation = torch.as_tensor(space.left_action(g), device=x.device)
    n = permutation.numel()
    trailing = 1
    for d in range(x.dim() - 1, -1, -1):
        trailing *= x.shape[d]
        if trailing == n:
            moved = x.flatten(d)[..., permutation]
            if hasattr(space, "component_matrix"):  # a field of k-component values
                matrix = torch.as_tensor(space.component_matrix(g), dtype=x.dtype, device=x.device)
                k = matrix.shape[0]
                if d == 0 or x.shape[d - 1] % k:
                    channels = "an even number of channels (pairs (v_x, v_y))" if k == 2 else \
                        f"a multiple of {k} channels"
                    raise ValueError(f"a field on {space.name} needs {channels} before the positions; got shape "
                                     f"{tuple(x.shape)}")
                moved = torch.einsum("ij,...jp->...ip", matrix, moved.unflatten(-2, (-1, k))).flatten(-3, -2)
            return moved.reshape(x.shape)
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


def displacement_rank(coefficients: Tensor, tol: float = 1e-6) -> int:
    """Rank of D(F) = F - F P for a tap-by-position matrix F (P: cyclic shift of positions).

    F[k, u] is the weight tap k applies at position u; F of an exact GM layer is constant along
    positions, so D(F) = 0. ``tol`` is relative to the largest singular value of F.
    """
    displacement = coefficients - coefficients.roll(-1, dims=-1)
    singular = torch.linalg.svdvals(displacement.double())
    scale = torch.linalg.svdvals(coefficients.double()).max()
    return int((singular > tol * scale).sum())
