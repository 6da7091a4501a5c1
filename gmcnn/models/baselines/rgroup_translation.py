"""RGroup baseline, translation (relaxed convolution; Wang, Walters, Yu 2022).

A layer holds ``banks`` ordinary k x k convolutions (with bias) and combination weights
c (H, W, banks), initialised to 1 / banks, that mix the banks' outputs per pixel:

    y(u) = sum_b c[u, b] (W_b * x + beta_b)(u)

computed as one conv2d to banks x out channels and one einsum. With c constant over the pixels
the layer is the single convolution with filter sum_b c_b W_b: translation-equivariant (up to
the zero-padded borders); a varying c breaks it. ReLU after every layer but the last; 5 layers.

Penalty (upstream's): with C the layers' combination weights stacked (H, W, banks, layers), the
spatial total variation mean |C[u + e_row] - C[u]| + mean |C[u + e_col] - C[u]|; zero at the
exact point. Upstream weighs it by 0 on the plumes and 1e-5 on JetFlow (trainer.relaxation_penalty).

Published setting: channels 128, 2 banks, 64 x 64: 977,412 parameters (JetFlow, 3 banks, 62 x 23:
1,426,068).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gmcnn.models.baselines.common import check_grid, check_sizes
from gmcnn.nn.relaxation import Relaxation


class BankMixedConv2d(nn.Module):
    """``banks`` k x k convolutions mixed per pixel (module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, banks: int, image_shape: tuple[int, int],
                 kernel_size: int = 3):
        super().__init__()
        self.banks = banks
        self.convs = nn.Conv2d(in_channels, banks * out_channels, kernel_size, padding=kernel_size // 2)
        self.combination = nn.Parameter(torch.full((*image_shape, banks), 1 / banks))

    def forward(self, x: Tensor) -> Tensor:
        y = self.convs(x).unflatten(1, (self.banks, -1))
        return torch.einsum("bkoxy,xyk->boxy", y, self.combination)


class RGroupTranslation(Relaxation):
    """Relaxed translation-equivariant next-frame predictor on a fixed grid."""

    task = "dynamics"

    def __init__(self, image_size: Sequence[int], input_frames: int = 10, field_channels: int = 2,
                 channels: int = 128, layers: int = 5, banks: int = 2, kernel_size: int = 3):
        super().__init__()
        check_sizes("RGroupTranslation", input_frames=input_frames, channels=channels, kernel_size=kernel_size,
                    layers=layers, banks=banks)
        self.grid_shape = tuple(int(side) for side in image_size)
        self.in_channels = input_frames * field_channels
        widths = [self.in_channels] + [channels] * (layers - 1) + [field_channels]
        self.convs = nn.ModuleList(BankMixedConv2d(i, o, banks, self.grid_shape, kernel_size)
                                   for i, o in zip(widths, widths[1:]))

    def forward(self, frames: Tensor) -> Tensor:
        check_grid("RGroupTranslation", frames, self.in_channels, self.grid_shape)
        x = frames
        for conv in self.convs[:-1]:
            x = torch.relu(conv(x))
        return self.convs[-1](x)

    def penalty(self) -> Tensor:
        c = torch.stack([conv.combination for conv in self.convs], -1)
        return (c[1:] - c[:-1]).abs().mean() + (c[:, 1:] - c[:, :-1]).abs().mean()

