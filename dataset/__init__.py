"""Datasets of the paper behind one registry (docs/design.md §4): ``build_dataset(name, root, **options)``.

Registered: cifar10, rot-mnist, mnist-bg-rot, mnist-noise, rectangles, norb, smallnorb (real data,
see each module's docstring for format, download and split), rectangles-generated and
rot-mnist-generated (offline generators). The plume / JetFlow task files are read by
:func:`dataset.plume.load_tasks`.

This folder is part of the repository, not of the installed ``gmcnn`` package (a bare top-level
``dataset`` would shadow the PyPI package of that name): it is imported from the repository root,
and ``PROJECT`` tells :func:`gmcnn.training.data.datasets` that the ``dataset`` it found is this one.
"""

from dataset import cifar, larochelle, norb, plume, rotmnist, synthetic  # noqa: F401  (register builders)
from dataset.registry import DatasetError, Splits, available, build_dataset, register

PROJECT = "gmcnn"

__all__ = ["PROJECT", "DatasetError", "Splits", "available", "build_dataset", "register"]
