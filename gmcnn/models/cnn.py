"""A plain CNN baseline of configurable width, to compare accuracy against parameter count.

    image -> blocks x [Conv3x3 -> BatchNorm -> ReLU -> MaxPool 2x2 (while the side is >= 4)]
    -> global average pool -> Dropout -> Linear(classes)

Block i has ``width * 2**i`` channels.
"""

from __future__ import annotations

from torch import Tensor, nn


class CNN(nn.Module):
    """Standard convolutional classifier for (B, C_in, H, W) images."""

    task = "classification"

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, blocks: int = 3,
                 dropout: float = 0.0, image_size: int = 32):
        super().__init__()
        if width < 1 or blocks < 1:
            raise ValueError(f"width and blocks must be >= 1, got width={width}, blocks={blocks}")
        layers: list[nn.Module] = []
        channels, side = in_channels, image_size
        for i in range(blocks):
            out = width * 2 ** i
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            if side >= 4:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(channels, num_classes))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))
