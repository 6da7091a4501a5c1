"""ConvNet baseline (Wang, Walters, Yu 2022): no symmetry built in.

    (B, input_frames * field_channels, H, W)
    -> (layers - 1) x [Conv k x k (zero padding) -> BatchNorm -> ReLU], ``channels`` wide
    -> Conv k x k to field_channels

Published setting: channels 92, 5 layers, k = 3: 247,850 parameters (channels 128: 469,250).
"""

from __future__ import annotations

from torch import Tensor, nn

from gmcnn.models.baselines.common import check_sizes, conv_block


class ConvNet(nn.Module):
    """Plain convolutional next-frame predictor."""

    task = "dynamics"

    def __init__(self, input_frames: int = 10, field_channels: int = 2, channels: int = 92,
                 layers: int = 5, kernel_size: int = 3):
        super().__init__()
        check_sizes("ConvNet", input_frames=input_frames, channels=channels, kernel_size=kernel_size, layers=layers)
        widths = [input_frames * field_channels] + [channels] * (layers - 1)
        self.blocks = nn.Sequential(*(conv_block(a, b, kernel_size) for a, b in zip(widths, widths[1:])))
        self.head = nn.Conv2d(channels, field_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, frames: Tensor) -> Tensor:
        return self.head(self.blocks(frames))
