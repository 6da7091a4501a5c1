"""The dataset registry: one name per dataset, each built into train / valid / test splits.

A builder is a function ``builder(root: Path, **options) -> Splits`` registered under a name with
:func:`register`; :func:`build_dataset` looks it up. Classification splits hold
``(image float32 (C, H, W), label int64)`` pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Dataset


class DatasetError(Exception):
    """A dataset cannot be built; the message says which file or option and what to do."""


@dataclass
class Splits:
    """Train / valid / test datasets. ``test_sets`` names every test set the engine evaluates
    (``{"test": test}`` unless given, e.g. ``{"future": ..., "domain": ...}`` for dynamics);
    ``num_classes`` is 0 for regression."""

    train: Dataset
    valid: Dataset
    test: Dataset | None
    num_classes: int
    in_channels: int
    image_shape: tuple[int, ...]
    test_sets: dict[str, Dataset] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.test_sets:
            self.test_sets = {"test": self.test}


Builder = Callable[..., Splits]
_BUILDERS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under ``name``."""
    def decorate(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"dataset {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder
    return decorate


def available() -> list[str]:
    return sorted(_BUILDERS)


def build_dataset(name: str, root: str | Path = "data", **options) -> Splits:
    """Build the splits of dataset ``name`` from files under ``root`` (or generate them)."""
    if name not in _BUILDERS:
        raise DatasetError(f"unknown dataset {name!r}; available: {', '.join(available())}")
    try:
        return _BUILDERS[name](root=Path(root).expanduser(), **options)
    except TypeError as error:  # an option the builder does not take
        raise DatasetError(f"dataset {name!r}: {error}") from None
