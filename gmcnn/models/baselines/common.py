"""Shared pieces of the dynamics baselines: argument checks and the Conv - BatchNorm - ReLU block.

Every baseline maps ``input_frames`` stacked velocity fields (B, input_frames * field_channels,
H, W), frame by frame (v_x, v_y), to the next field (B, field_channels, H, W); roll-outs are the
training protocol's (gmcnn.training.objectives.rollout).
"""

from __future__ import annotations

from torch import Tensor, nn


def check_sizes(model: str, **sizes: int) -> None:
    """Each size (channels, layers, ...) a positive integer; ``layers`` at least 2;
    ``kernel_size`` odd (same-size zero padding k // 2)."""
    for name, value in sizes.items():
        least = 2 if name == "layers" else 1
        if int(value) != value or value < least:
            raise ValueError(f"{model}: {name} must be an integer >= {least}, got {value!r}")
    if sizes.get("kernel_size", 1) % 2 == 0:
        raise ValueError(f"{model}: kernel_size must be odd, got {sizes['kernel_size']}")


def check_vector_input(model: str, field_channels: int) -> None:
    """The rotation baselines read the frames as (v_x, v_y) vector fields."""
    if field_channels != 2:
        raise ValueError(f"{model} is a rotation model of (v_x, v_y) velocity fields: it needs "
                         f"field_channels=2, got {field_channels}; use model=convnet for other data")


def check_grid(model: str, frames: Tensor, channels: int, grid_shape: tuple[int, ...]) -> None:
    """Models with per-pixel parameters take inputs of one grid size only."""
    if tuple(frames.shape[1:]) != (channels, *grid_shape):
        raise ValueError(f"{model} is built for inputs of shape (batch, {channels}, "
                         f"{', '.join(map(str, grid_shape))}); got {tuple(frames.shape)}: set "
                         "model.image_size to the data's grid")


def conv_block(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Conv2d (zero padding k // 2) - BatchNorm2d - ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
                         nn.BatchNorm2d(out_channels), nn.ReLU())
