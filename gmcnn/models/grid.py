"""The group a model runs on and the image layout it expects (docs/design.md §3, §5).

A per-axis group (the paper's, e.g. ``["D14", "D14"]``) is laid out on the image itself: the
image flattened row-major is a function on G, and the axis lengths are the factor orders. A
wallpaper group p4(n) / p4m(n) acts on the n x n pixel grid X = G / H (:mod:`gmcnn.spaces`), and a
bare ``"p4"`` / ``"p4m"`` takes n from ``image_size`` (the data's). The space a model's input is a
function on, pooled or not, is :func:`gmcnn.spaces.symmetry_space`.
"""

from __future__ import annotations

from collections.abc import Sequence

from gmcnn.groups import FiniteGroup, is_wallpaper_spec, make_group
from gmcnn.spaces import image_space, layout


def model_group(spec: str | Sequence[str] | FiniteGroup,
                image_size: int | Sequence[int] | None = None) -> tuple[FiniteGroup, tuple[int, ...]]:
    """(group, image shape): ``make_group(spec, n)`` for square images of side n, and the
    (H, W) the model expects its inputs in (the layout of :func:`gmcnn.spaces.image_space`)."""
    sizes = (image_size,) * 2 if isinstance(image_size, int) else (
        None if image_size is None else tuple(int(v) for v in image_size))
    side = sizes[0] if sizes is not None and len(set(sizes)) == 1 else None
    if is_wallpaper_spec(spec) and sizes is not None and side is None:
        raise ValueError(f"{spec} acts on square images, but the images are "
                         f"{' x '.join(map(str, sizes))}; use per-axis groups such as "
                         "['C32', 'C28'] for non-square images")
    group = make_group(spec, side)
    return group, layout(image_space(group))
