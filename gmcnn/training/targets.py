"""What a configuration may instantiate: the allow-list of ``_target_`` names.

A configuration is data, but a ``_target_`` names code, and configurations arrive from elsewhere:
the config saved in a checkpoint someone sent you, a config directory (``--config-dir``), a sweep
copied from a colleague. So a ``_target_`` is resolved only from this table, never by importing
whatever dotted name the file holds:

- ``model._target_``: a model exported by :mod:`gmcnn.models` (``gmcnn.models.GMCNN``), i.e. a
  name in its ``__all__`` whose class declares the task it solves (``task = "classification"`` or
  ``"dynamics"``);
- ``optimizer._target_``: a ``torch.optim`` optimizer class (``torch.optim.AdamW``);
- ``scheduler._target_``: a ``torch.optim.lr_scheduler`` scheduler class;
- any of these groups: a dotted name listed in the environment variable ``GMCNN_TRUSTED_TARGETS``
  (comma-separated, e.g. ``mylab.models.MyNet``), which a user sets on purpose for their own code
  (docs/design.md §6). The variable is read from the environment only, never from a config.

Nothing else in a run's configuration carries a ``_target_``. :func:`check_targets` walks a whole
config and raises :class:`~gmcnn.training.config.ConfigError` naming the key and the target before
anything is imported from it; :func:`resolve` returns the callable for one group.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

TRUSTED_ENV = "GMCNN_TRUSTED_TARGETS"
GROUPS = ("model", "optimizer", "scheduler")


class TargetRefused(Exception):
    """A ``_target_`` that is not on the allow-list (the message names key and target)."""


def trusted_by_user() -> set[str]:
    """The dotted names of ``GMCNN_TRUSTED_TARGETS``."""
    return {name.strip() for name in os.environ.get(TRUSTED_ENV, "").split(",") if name.strip()}


def models() -> dict[str, type]:
    """``gmcnn.models.NAME`` -> class, for every exported model that declares its task."""
    import gmcnn.models

    found = {f"gmcnn.models.{name}": getattr(gmcnn.models, name) for name in gmcnn.models.__all__}
    return {path: cls for path, cls in found.items() if isinstance(getattr(cls, "task", None), str)}


def _torch_classes(module: Any, base: type | tuple[type, ...]) -> dict[str, type]:
    return {f"{module.__name__}.{name}": value for name, value in vars(module).items()
            if not name.startswith("_") and isinstance(value, type) and issubclass(value, base)}


def allowed(group: str) -> dict[str, Callable]:
    """The project's own targets of ``group`` (``model``, ``optimizer``, ``scheduler``)."""
    if group == "model":
        return models()
    if group == "optimizer":
        return _torch_classes(torch.optim, torch.optim.Optimizer)
    if group == "scheduler":
        schedulers = torch.optim.lr_scheduler
        return _torch_classes(schedulers, (schedulers.LRScheduler, schedulers.ReduceLROnPlateau))
    return {}


def resolve(group: str, path: Any) -> Callable:
    """The callable that ``group._target_ = path`` names; TargetRefused if it is not allowed.
    Only a name the user trusts (``GMCNN_TRUSTED_TARGETS``) is ever imported."""
    table = allowed(group)
    if isinstance(path, str) and path in table:
        return table[path]
    if isinstance(path, str) and path in trusted_by_user():
        module, _, name = path.rpartition(".")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError):
            raise TargetRefused(f"{group}._target_={path!r} (trusted in {TRUSTED_ENV}) cannot be "
                                "imported; check the name and that its package is installed") from None
    raise TargetRefused(refusal(f"{group}._target_", path, group))


def refusal(key: str, path: Any, group: str | None) -> str:
    choices = sorted(allowed(group)) if group in GROUPS else []
    known = f" ({', '.join(choices)})" if 0 < len(choices) <= 12 else ""
    what = f"a {group} of this project{known}" if group in GROUPS else "nothing (no other key is instantiated)"
    return (f"{key}={path!r} is refused: a config may only name {what}; nothing was imported from "
            f"it. If this is your own trusted code, add it to the environment variable {TRUSTED_ENV}")


def check_targets(config: Any) -> None:
    """TargetRefused for the first ``_target_`` in ``config`` (a plain or OmegaConf tree) that is
    not allowed for its place: the top of the model / optimizer / scheduler group."""
    for key, path in _targets(config):
        group = key[: -len("._target_")]
        if group in GROUPS:
            resolve(group, path)
        else:
            raise TargetRefused(refusal(key, path, None))


def _targets(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    items = node.items() if hasattr(node, "items") else enumerate(node) if _is_list(node) else ()
    for key, value in items:
        path = f"{prefix}{key}"
        if key == "_target_":
            yield path, value
        else:
            yield from _targets(value, f"{path}.")


def _is_list(node: Any) -> bool:
    return isinstance(node, (list, tuple)) or type(node).__name__ == "ListConfig"
