"""Spaces: what a group acts on, and how a function on one is laid out (docs/design.md §1, §5).

A *space* is one of three things, each with an acting group and a set of points; a function on it
is a tensor whose last axis holds one value per point (:func:`num_points`), in the row-major
order of the shape :func:`layout`:

* a :class:`~gmcnn.groups.FiniteGroup` G: functions on G, acted on by left translation,
  (g . f)(u) = f(g^-1 u); laid out as ``G.layout`` (a product's (|G1|, |G2|), ...);
* a :class:`~gmcnn.groups.Subgroup` H < G: functions on the parent G, acted on by the elements
  of H through the embedding (what a layer or a pooled model still commutes with);
* a :class:`PixelGrid`: functions on the n x n pixel grid of a wallpaper group (below), laid
  out as (n, n); a :class:`SubgroupPixelGrid` is the grid acted on by a subgroup only.

The pixel grid as a homogeneous space: for G = p4(n) or p4m(n)
(:class:`~gmcnn.groups.WallpaperGroup`) and H its point group (the rotations, and mirrors, about
pixel (0, 0)), the n x n pixel torus X = Z_n x Z_n is G / H:
g = (t, h) moves a pixel x to g . x = t + L_h x. Pixel (a, b) = (row, col) has index a * n + b, so
an image (..., n, n) flattened row-major is a function on X, acted on by

    scalar field:  (g . f)(x) = f(g^-1 . x)
    vector field:  (g . v)(x) = L_h v(g^-1 . x)

For vector fields the channels come in pairs (v_x, v_y), the plume layout [t, (v_x, v_y), y, x]:
v_x is the component along the column axis and v_y along the row axis, each positive towards
increasing index. In that component order L_h is ``component_matrices[h]``: R sends
(v_x, v_y) to (v_y, -v_x) and M sends it to (-v_x, v_y).

The grid spaces expose what :func:`gmcnn.equivariance.act` needs: ``group`` (the acting group),
``num_points``, ``left_action(g)`` (the permutation p with (g . f)[p] = f[p[...]]) and, for
vector fields, ``component_matrix(g)``.

A model reads its images as functions on :func:`image_space` (the pixel grid of a wallpaper group,
else the group laid out on the image axes). A boundary (``BOUNDARIES``) fixes what the layers
commute with: "circular" (the torus) all of G, "zero" (a finite patch) only the point group about
the image centre (:func:`boundary_subgroup`); a chain of poolings keeps the subgroup it pools
onto, so a model's input space is :func:`symmetry_space`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gmcnn.groups import FiniteGroup, IndexArray, Subgroup, WallpaperGroup, make_group

SWAP = np.array([[0, 1], [1, 0]])  # (row, col) <-> (v_x, v_y) = (col, row)


class PixelGrid:
    """Scalar functions on the n x n pixel torus, acted on by a wallpaper group."""

    components = 1

    def __init__(self, group: WallpaperGroup | str):
        group = make_group(group)
        if not isinstance(group, WallpaperGroup):
            raise ValueError(f"a pixel grid is a homogeneous space of p4(n) or p4m(n), not of "
                             f"{group.name}; use a group spec such as 'p4(28)'")
        self.group: WallpaperGroup = group
        self.n = group.n
        self.name = f"pixel grid of {group.name}"

    @property
    def num_points(self) -> int:
        return self.n * self.n

    def move(self, g, x) -> IndexArray:
        """Index of the pixel g . x = t + L_h x (vectorised, broadcasting g against x)."""
        t, h = self.group.split(g)
        a, b = np.divmod(np.asarray(x), self.n)
        linear = self.group.linear[h]                                   # (..., 2, 2)
        row = linear[..., 0, 0] * a + linear[..., 0, 1] * b + t // self.n
        col = linear[..., 1, 0] * a + linear[..., 1, 1] * b + t % self.n
        return (row % self.n) * self.n + col % self.n

    def left_action(self, g: int) -> IndexArray:
        """Permutation p of the pixels with (g . f)[x] = f[p[x]], i.e. p[x] = g^-1 . x."""
        return self.move(self.group.inverse[g], np.arange(self.num_points))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.group.name})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.group == self.group

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.group.name))


class SubgroupPixelGrid(PixelGrid):
    """The pixel grid of a wallpaper group G acted on by a subgroup H only: h moves pixels as
    ``embedding[h]`` of G does. ``group`` is H (a wallpaper group of a coarser grid after
    pooling, or the point group about the image centre of a zero-boundary model)."""

    def __init__(self, grid: PixelGrid, group: FiniteGroup, embedding: IndexArray):
        self.grid, self.group, self.n = grid, group, grid.n
        self.embedding = np.asarray(embedding)
        self.name = f"{grid.name} under {group.name}"

    def move(self, g, x) -> IndexArray:
        return self.grid.move(self.embedding[np.asarray(g)], x)

    def __eq__(self, other: object) -> bool:
        return (type(other) is type(self) and other.grid == self.grid and other.group == self.group
                and np.array_equal(other.embedding, self.embedding))

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.grid.group.name, self.group.name))


class VectorField(PixelGrid):
    """Fields of 2-vectors (v_x, v_y) on the pixel torus: channels in pairs, rotated with the grid."""

    components = 2

    def __init__(self, group: WallpaperGroup | str):
        super().__init__(group)
        self.name = f"vector field on the pixel grid of {self.group.name}"
        self.component_matrices = SWAP @ self.group.linear @ SWAP      # (|H|, 2, 2)

    def component_matrix(self, g: int) -> np.ndarray:
        """L_h of g = (t, h) acting on the components (v_x, v_y)."""
        return self.component_matrices[self.group.split(g)[1]]


def make_space(group: FiniteGroup | str, field: str = "scalar") -> PixelGrid:
    """The pixel grid of ``group`` for ``field`` "scalar" (images) or "vector" (velocity fields)."""
    if field not in FIELDS:
        raise ValueError(f"field must be one of {tuple(FIELDS)}, got {field!r}")
    return FIELDS[field](group)


FIELDS = {"scalar": PixelGrid, "vector": VectorField}

Space = FiniteGroup | Subgroup | PixelGrid

BOUNDARIES = ("circular", "zero")


def num_points(space: Space) -> int:
    """Number of points of ``space``: the length of the last axis of a function on it."""
    if isinstance(space, PixelGrid):
        return space.num_points
    return space.parent.order if isinstance(space, Subgroup) else space.order


def acting_group(space: Space) -> FiniteGroup:
    """The group whose elements act on ``space`` (H for a subgroup space, G for G's grid)."""
    return space.group if isinstance(space, (Subgroup, PixelGrid)) else space


def layout(space: Space) -> tuple[int, ...]:
    """The shape a function on ``space`` reshapes to (row-major): the grid's (n, n), a group's
    ``layout`` (a subgroup space: its parent's)."""
    if isinstance(space, PixelGrid):
        return (space.n, space.n)
    return (space.parent if isinstance(space, Subgroup) else space).layout


def image_space(group: FiniteGroup) -> PixelGrid | FiniteGroup:
    """The space a model on ``group`` reads its images as: the pixel grid of a wallpaper group,
    else the group itself laid out on the image axes (one axis per product factor)."""
    return PixelGrid(group) if isinstance(group, WallpaperGroup) else group


def boundary_subgroup(group: WallpaperGroup, boundary: str, layer: str) -> Subgroup | None:
    """None for ``boundary`` "circular" (a layer commutes with all of G); for "zero" the point
    group about the image centre (:meth:`~gmcnn.groups.WallpaperGroup.centre_point_group`), the
    symmetries of a finite patch that a layer keeps. ``layer`` names the caller in the error."""
    if boundary not in BOUNDARIES:
        raise ValueError(f"{layer}: boundary must be one of {BOUNDARIES}, got {boundary!r}")
    return None if boundary == "circular" else group.centre_point_group()


def symmetry_space(group: FiniteGroup, subgroups: Sequence[Subgroup], boundary: str = "circular") -> Space:
    """The input space of a model on ``group`` (:func:`image_space`) acted on by what a chain of
    poolings over ``subgroups`` keeps (each a subgroup of the previous one's group): the space
    itself without pooling. With ``boundary`` "zero" (a finite image patch), the pixel grid under
    the point group about the image centre, which every layer and the 2 x 2 poolings keep."""
    base = image_space(group)
    kept = boundary_subgroup(group, boundary, "symmetry_space")
    if kept is not None:
        return SubgroupPixelGrid(base, kept.group, kept.embedding)
    if not subgroups:
        return base
    embedding = np.arange(group.order)
    for subgroup in subgroups:
        embedding = embedding[subgroup.embedding]
    if isinstance(base, PixelGrid):
        return SubgroupPixelGrid(base, subgroups[-1].group, embedding)
    return Subgroup(parent=group, group=subgroups[-1].group, embedding=embedding)


__all__ = ["Space", "PixelGrid", "SubgroupPixelGrid", "VectorField", "make_space", "FIELDS", "BOUNDARIES",
           "num_points", "acting_group", "layout", "image_space", "boundary_subgroup", "symmetry_space"]
