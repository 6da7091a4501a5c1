"""Data-preparation tools run from the repository root (``python -m tools.NAME``); not part of the
installed package. They may import :mod:`dataset`; the loaders never import them."""
