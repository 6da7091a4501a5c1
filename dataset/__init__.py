"""Datasets of the paper behind one registry (docs/design.md §4): ``build_dataset(name, root, **options)``.

Registered: cifar10, rot-mnist, mnist-bg-rot, mnist-noise, rectangles, norb, smallnorb (real data,
see each module's docstring for format, download and split), rectangles-generated and
rot-mnist-generated (offline generators). The plume / JetFlow task files are read by
:func:`dataset.plume.load_tasks`.
"""

from dataset import cifar, larochelle, norb, plume, rotmnist, synthetic  # noqa: F401  (register builders)
from dataset.registry import DatasetError, Splits, available, build_dataset, register

__all__ = ["DatasetError", "Splits", "available", "build_dataset", "register"]
