"""Symmetry diagnostics of a trained model.

* ``equivariance_metric``: the relative equivariance (or, for logits, invariance) error of the
  model on a batch, averaged over a fixed random set of group elements (docs/design.md §2.5).
* ``plot_relaxation``: for every relaxed GM layer, the map over positions u of
  ||F(., u) - mean_u F||, where F[o, c, k, u] is the weight tap k applies at position u; it is zero
  where the layer is exactly equivariant, so the picture shows where the learned relaxation breaks
  the symmetry. Saved as one PNG with a panel per layer, positions laid out as the group lays out
  a function on itself (``group.layout``: a product's image; p4(n)'s (|H|, n, n) as |H| images
  side by side; any other group as one row).
* ``plot_step_scores``: the test score of every roll-out step (``test_future_rmse_per_step``, ...),
  one line per test set, step 1 to L.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gmcnn.equivariance import equivariance_error
from gmcnn.nn import EquivariantModule, GroupMatrixLayer
from gmcnn.spaces import acting_group


@torch.no_grad()
def equivariance_metric(model: nn.Module, inputs: Tensor, num_elements: int = 8,
                        seed: int = 0) -> float | None:
    """None if the model does not declare its input/output spaces."""
    if not isinstance(model, EquivariantModule):
        return None
    group = acting_group(model.in_space)
    generator = torch.Generator().manual_seed(seed)
    others = torch.tensor([g for g in range(group.order) if g != group.identity])
    elements = others[torch.randperm(len(others), generator=generator)[:num_elements]].tolist()
    return equivariance_error(model.eval(), inputs, elements=elements)


def symmetry_breaking_maps(model: nn.Module) -> dict[str, Tensor]:
    """Layer name -> (H, W) map of the relaxation's deviation from equivariance per position."""
    maps = {}
    for name, layer in model.named_modules():
        if isinstance(layer, GroupMatrixLayer) and layer.relaxation is not None:
            with torch.no_grad():
                coefficients = layer.position_coefficients().float()
                deviation = coefficients - coefficients.mean(-1, keepdim=True)
                per_position = deviation.pow(2).flatten(0, -2).sum(0).sqrt()
            maps[name] = as_image(per_position, layer.group.layout).cpu()
    return maps


def as_image(values: Tensor, layout: tuple[int, ...]) -> Tensor:
    """A function on a group (flat, row-major in ``layout``) as one (H, W) image: a line
    (1, N), an image as it is, a stack (..., H, W) of images side by side (H, ... * W)."""
    if len(layout) == 1:
        return values.reshape(1, -1)
    stack = values.reshape(-1, *layout[-2:])
    return stack.permute(1, 0, 2).reshape(layout[-2], -1)


def plot_relaxation(model: nn.Module, path: Path) -> bool:
    """Write the maps of :func:`symmetry_breaking_maps` to ``path``; False if there are none."""
    maps = symmetry_breaking_maps(model)
    if not maps:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(maps), figsize=(4 * len(maps), 4), squeeze=False)
    for axis, (name, image) in zip(axes[0], maps.items()):
        shown = axis.imshow(image.numpy(), cmap="magma")
        axis.set_title(f"{name}\nmax {image.max():.3g}")
        axis.set_xticks([])
        axis.set_yticks([])
        fig.colorbar(shown, ax=axis, fraction=0.046)
    fig.suptitle("where the relaxed layers break the symmetry: ||F(., u) - mean F||")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_step_scores(metrics: dict[str, Any], path: Path) -> bool:
    """Plot every ``*_per_step`` list of ``metrics`` against the roll-out step (1..L) to ``path``;
    False, writing nothing, if there is none (classification)."""
    curves = {key.removesuffix("_per_step"): values for key, values in metrics.items()
              if key.endswith("_per_step") and isinstance(values, list) and values}
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        axis.plot(range(1, len(values) + 1), values, marker="o", markersize=3,
                  label=f"{name} (overall {metrics.get(name, float('nan')):.4g})")
    finish_step_figure(fig, [axis], ["RMSE" if all(name.endswith("rmse") for name in curves) else "score"],
                       path)
    return True


def finish_step_figure(fig: Any, axes: list[Any], labels: list[str], path: Path) -> None:
    """Label each axis of a per-step figure (integer roll-out steps, ``labels`` on y), save it to
    ``path`` and close it."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    for axis, label in zip(axes, labels):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("roll-out step")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
