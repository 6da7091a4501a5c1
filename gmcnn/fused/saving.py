"""``ctx.save_for_backward`` by name, for the kernels' autograd Functions.

A kernel saves tensors (or None) and NamedTuple records of tensors under names, and its backward
reads them back as attributes, so no backward depends on the order in which tensors were saved.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

from torch import Tensor


def save_by_name(ctx, **records: Tensor | NamedTuple | None) -> None:
    """Save tensors (or None) and NamedTuple records of tensors, read back by :func:`saved_by_name`."""
    names, tensors = [], []
    for name, value in records.items():
        record = isinstance(value, tuple) and hasattr(value, "_fields")
        fields = zip(value._fields, value) if record else [(None, value)]
        for field, tensor in fields:
            names.append((name, field))
            tensors.append(tensor)
        if record:
            ctx.saved_record_types = {**getattr(ctx, "saved_record_types", {}), name: type(value)}
    ctx.save_for_backward(*tensors)
    ctx.saved_names = names


def saved_by_name(ctx) -> SimpleNamespace:
    """The tensors and records of :func:`save_by_name`, as attributes by name."""
    plain: dict[str, Tensor | None] = {}
    fields: dict[str, dict[str, Tensor | None]] = {}
    for (name, field), tensor in zip(ctx.saved_names, ctx.saved_tensors):
        if field is None:
            plain[name] = tensor
        else:
            fields.setdefault(name, {})[field] = tensor
    types = getattr(ctx, "saved_record_types", {})
    return SimpleNamespace(**plain, **{name: types[name](**values) for name, values in fields.items()})
