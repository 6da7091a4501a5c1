"""The group a model runs on and the image layout it expects (docs/design.md §3, §5).

A per-axis group (the paper's, e.g. ``["D14", "D14"]``) is laid out on the image itself: the
image flattened row-major is a function on G, and the axis lengths are the factor orders. A
wallpaper group p4(n) / p4m(n) acts on the n x n pixel grid X = G / H (:mod:`gmcnn.spaces`), and a
bare ``"p4"`` / ``"p4m"`` takes n from ``image_size`` (the data's).

GM pooling over the "even" subgroup keeps only the symmetries of a subgroup H < G (the
translations of the coarser grid, with the rotations about the image centre), so a pooled model
declares its input space as acted on by H (:func:`symmetry_space`): tooling that draws group
elements from ``model.in_space`` (the runner's equivariance diagnostic) then draws elements of H.
A zero-boundary model (a finite image patch) keeps only the point group about the image centre.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gmcnn.groups import FiniteGroup, Subgroup, WallpaperGroup, axis_sizes, is_wallpaper_spec, make_group
from gmcnn.spaces import PixelGrid, SubgroupPixelGrid


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


def symmetry_space(group: FiniteGroup, subgroups: Sequence[Subgroup], boundary: str = "circular"):
    """The input space of a model on ``group`` (the pixel grid of a wallpaper group, else the group
    itself) acted on by what a chain of poolings over ``subgroups`` keeps (each a subgroup of the
    previous one's group): the space itself without pooling. With ``boundary`` "zero" (a finite
    image patch), the pixel grid under the point group about the image centre, which every layer
    and the 2 x 2 poolings keep."""
    base = PixelGrid(group) if isinstance(group, WallpaperGroup) else group
    if boundary == "zero":
        kept = group.centre_point_group()
        return SubgroupPixelGrid(base, kept.group, kept.embedding)
    if not subgroups:
        return base
    embedding = np.arange(group.order)
    for subgroup in subgroups:
        embedding = embedding[subgroup.embedding]
    kept = subgroups[-1].group
    if isinstance(group, WallpaperGroup):
        return SubgroupPixelGrid(base, kept, embedding)
    return Subgroup(parent=group, group=kept, embedding=embedding)
