"""The group a model runs on and the image layout it expects (docs/design.md §3, §5).

A per-axis group (the paper's, e.g. ``["D14", "D14"]``) is laid out on the image itself: the
image flattened row-major is a function on G, and the axis lengths are the factor orders. A
wallpaper group p4(n) / p4m(n) acts on the n x n pixel grid X = G / H (:mod:`gmcnn.spaces`), and a
bare ``"p4"`` / ``"p4m"`` takes n from ``image_size`` (the data's).

GM pooling over the "even" subgroup keeps only the symmetries of a subgroup H < G (the
translations of the coarser grid, with the rotations about the image centre), so a pooled model
declares its input space as acted on by H (:func:`symmetry_space`): tooling that draws group
elements from ``model.in_space`` (the runner's equivariance diagnostic) then draws elements of H.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gmcnn.groups import FiniteGroup, IndexArray, Subgroup, WallpaperGroup, axis_sizes, is_wallpaper_spec, make_group
from gmcnn.spaces import PixelGrid


def model_group(spec: str | Sequence[str] | FiniteGroup,
                image_size: int | Sequence[int] | None = None) -> tuple[FiniteGroup, tuple[int, ...]]:
    """(group, image shape): ``make_group(spec, n)`` for square images of side n, and the
    (H, W) the model expects its inputs in."""
    sizes = (image_size,) * 2 if isinstance(image_size, int) else (
        None if image_size is None else tuple(int(v) for v in image_size))
    side = sizes[0] if sizes is not None and len(set(sizes)) == 1 else None
    if is_wallpaper_spec(spec) and sizes is not None and side is None:
        raise ValueError(f"{spec} acts on square images, but the images are "
                         f"{' x '.join(map(str, sizes))}; use per-axis groups such as "
                         "['C32', 'C28'] for non-square images")
    group = make_group(spec, side)
    if isinstance(group, WallpaperGroup):
        return group, (group.n, group.n)
    return group, axis_sizes(group)


class SubgroupPixelGrid(PixelGrid):
    """The pixel grid of a wallpaper group G acted on by a subgroup H only: h moves pixels as
    ``embedding[h]`` of G does. ``group`` is H (a wallpaper group of a coarser grid)."""

    def __init__(self, grid: PixelGrid, group: WallpaperGroup, embedding: IndexArray):
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


def symmetry_space(group: FiniteGroup, subgroups: Sequence[Subgroup]):
    """The input space of a model on ``group`` (the pixel grid of a wallpaper group, else the group
    itself) acted on by what a chain of poolings over ``subgroups`` keeps (each a subgroup of the
    previous one's group): the space itself without pooling."""
    base = PixelGrid(group) if isinstance(group, WallpaperGroup) else group
    if not subgroups:
        return base
    embedding = np.arange(group.order)
    for subgroup in subgroups:
        embedding = embedding[subgroup.embedding]
    kept = subgroups[-1].group
    if isinstance(group, WallpaperGroup):
        return SubgroupPixelGrid(base, kept, embedding)
    return Subgroup(parent=group, group=kept, embedding=embedding)
