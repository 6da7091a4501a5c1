"""Test utilities for code built on gmcnn: the checks a new layer, block or model must pass
(docs/extending.md), importable from the installed package like ``torch.testing``.

* :func:`assert_group_axioms`: a :class:`~gmcnn.groups.FiniteGroup`'s Cayley table is a group's
  (closed, identity, inverses, associative on 2,000 random triples) and its neighbourhoods of
  radius 0..max_radius() hold distinct elements, the identity among them.
* :func:`assert_equivariant`: the largest relative equivariance error of ``fn`` over the chosen
  group elements, err(g) = ||f(g . x) - g . f(x)|| / ||f(x)|| (:func:`gmcnn.equivariance.equivariance_error`;
  ``out_space=None``: invariance), is at most ``atol``.
* :func:`assert_fast_path_matches_reference`: a module whose blocks own a fast path
  (:class:`gmcnn.nn.blocks.FastPathModule`) computes the same values and gradients (of every
  input and parameter) with the fast paths allowed as with every block on its reference path,
  in float64, and takes at least one fast path (else the comparison is vacuous).
* :func:`recorded_fast_paths`: the fast-path decisions the blocks inside a module make while the
  context is open.

The checks raise :class:`AssertionError` (not ``assert`` statements, so they also hold under
``python -O``), which pytest reports like its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from gmcnn.equivariance import equivariance_error
from gmcnn.groups import FiniteGroup
from gmcnn.nn.blocks import FastPathModule, set_fast_path


def assert_group_axioms(group: FiniteGroup, max_radius: int = 3) -> None:
    """AssertionError unless ``group`` (materialising its order x order table: test a small
    instance of a large family) satisfies the group axioms and its neighbourhoods of radius
    0..min(max_radius(), ``max_radius``) are distinct element indices containing the identity."""
    table, n = group.table, group.order
    elements = np.arange(n)
    if table.shape != (n, n):
        raise AssertionError(f"{group.name}: table of shape {table.shape}, expected {(n, n)}")
    if not ((np.sort(table, axis=1) == elements).all() and (np.sort(table, axis=0) == elements[:, None]).all()):
        raise AssertionError(f"{group.name}: a row or column of the table is not a permutation of 0..{n - 1}")
    e = group.identity
    if not ((table[e] == elements).all() and (table[:, e] == elements).all()):
        raise AssertionError(f"{group.name}: element {e} is not the identity")
    if not ((table[elements, group.inverse] == e).all() and (table[group.inverse, elements] == e).all()):
        raise AssertionError(f"{group.name}: inverse[a] is not the inverse of a")
    a, b, c = np.random.default_rng(0).integers(0, n, size=(3, 2000))
    if not (table[table[a, b], c] == table[a, table[b, c]]).all():
        raise AssertionError(f"{group.name}: the product is not associative")
    for t in range(min(group.max_radius(), max_radius) + 1):
        support = np.asarray(group.neighbourhood(t))
        if len(np.unique(support)) != len(support) or support.min() < 0 or support.max() >= n or e not in support:
            raise AssertionError(f"{group.name}: neighbourhood({t}) = {support.tolist()} is not a set of distinct "
                                 f"elements of 0..{n - 1} containing the identity")


def assert_equivariant(fn: Callable[[Tensor], Tensor], x: Tensor, atol: float = 1e-5, **kwargs) -> None:
    """AssertionError unless the largest relative equivariance error of ``fn`` at ``x`` is at most
    ``atol``; ``kwargs`` go to :func:`gmcnn.equivariance.equivariance_error` (``in_space``,
    ``out_space``, ``elements``; by default the spaces ``fn`` declares and the whole group)."""
    error = equivariance_error(fn, x, reduction="max", **kwargs)
    if not error <= atol:
        raise AssertionError(f"equivariance error {error:.3g} exceeds {atol:.1g}")


@contextlib.contextmanager
def recorded_fast_paths(module: nn.Module) -> Iterator[list[str | None]]:
    """Collects the ``fast_path`` decision of every block inside ``module`` (gmcnn.nn.blocks)
    made while the context is open, as a list of names (None: the reference path)."""
    taken: list[str | None] = []
    blocks = [m for m in module.modules() if isinstance(m, FastPathModule)]
    for block in blocks:
        def recorder(x, decide=block.fast_path):
            taken.append(decide(x))
            return taken[-1]
        block.fast_path = recorder
    try:
        yield taken
    finally:
        for block in blocks:
            del block.fast_path


def assert_fast_path_matches_reference(module: nn.Module, inputs: Sequence[Tensor], require_fast_path: bool = True,
                                       rtol: float = 1e-8, atol: float = 1e-10, training: bool = False) -> set[str]:
    """``module(*inputs)`` with every block's fast path allowed equals it with every block on its
    reference path (``fused`` False), in float64 and eval mode (``training``: train mode, for batch
    statistics; the module must then be deterministic, e.g. without dropout): the values and the
    gradients of every input and every parameter. Returns the names of the fast paths taken;
    AssertionError if none was (unless ``require_fast_path`` is False), since the comparison would
    then be vacuous. ``module`` is left in float64, with its fast paths allowed."""
    module = module.double().train(training)
    inputs = [x.detach().double().requires_grad_(True) for x in inputs]
    params = [p for p in module.parameters() if p.requires_grad]
    runs = []
    for enabled in (True, False):
        set_fast_path(module, enabled)
        with recorded_fast_paths(module) as taken:
            out = module(*inputs)
        grad_out = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
        grads = torch.autograd.grad(out, inputs + params, grad_out, allow_unused=True)
        runs.append((out, grads, {name for name in taken if name is not None}))
    set_fast_path(module, True)
    (fast, fast_grads, paths), (reference, reference_grads, reference_paths) = runs
    if reference_paths:
        raise AssertionError(f"fused=False still took {reference_paths}")
    if require_fast_path and not paths:
        raise AssertionError("no block took a fast path: the comparison would be vacuous")
    torch.testing.assert_close(fast, reference, rtol=rtol, atol=atol)
    names = [f"input {i}" for i in range(len(inputs))] + [
        name for name, p in module.named_parameters() if p.requires_grad]
    for name, got, want in zip(names, fast_grads, reference_grads):
        if (got is None) != (want is None):
            raise AssertionError(f"gradient of {name}: {got} against {want}")
        if got is not None:
            torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")
    return paths


__all__ = ["assert_group_axioms", "assert_equivariant", "assert_fast_path_matches_reference", "recorded_fast_paths"]
