"""The model of a run: built from ``cfg.model``, checked against the data's image size, and its
summary (one line per layer with its parameter count)."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from gmcnn.training.config import ConfigError, instantiate


def build_model(cfg: DictConfig) -> nn.Module:
    model = instantiate("model", cfg.model)
    expected = tuple(getattr(model, "image_shape", cfg.data.image_size))
    if expected != tuple(cfg.data.image_size):
        raise ConfigError(
            f"the group {list(cfg.model.group)} is laid out on {'x'.join(map(str, expected))} "
            f"images, but data {cfg.data.name} has {'x'.join(map(str, cfg.data.image_size))}; "
            "set symmetry.group to factors whose orders equal the image size (Cn has n pixels, "
            "Dn has 2n)")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_summary(model: nn.Module) -> str:
    """One line per leaf module with its parameter count, then the total."""
    rows = [(name, type(m).__name__, sum(p.numel() for p in m.parameters()))
            for name, m in model.named_modules()
            if name and (not list(m.children()) or list(m.parameters(recurse=False)))]
    width = max([len(name) for name, _, _ in rows] + [5])
    lines = [f"{'layer':<{width}}  {'type':<16} {'params':>10}"]
    lines += [f"{name:<{width}}  {kind:<16} {count:>10,}" for name, kind, count in rows]
    lines.append(f"{'total':<{width}}  {'':<16} {count_parameters(model):>10,}")
    return "\n".join(lines)
