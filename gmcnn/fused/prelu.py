"""PReLU with one slope a and a faster backward on CPU:

    z = max(h, 0) + a min(h, 0),    dz/dh = 1 (h > 0) or a,    dz/da = min(h, 0).

The input gradient is one pass, leaky ReLU's backward kernel (:func:`prelu_input_grad`); the
slope's gradient Q = sum_{h <= 0} gz h needs no mask: with P the sum over h > 0,
gz . h = P + Q and gh . h = P + a Q, so Q = (gz . h - gh . h) / (1 - a); near a = 1, where that
division loses precision, Q = gz . h - P with P from ReLU's backward kernel
(:func:`positive_part_dot`): :func:`slope_grad`, which the fused kernels call with gh . h from
their own matmuls.
aten's PReLU backward is several times slower on CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


def prelu_input_grad(grad_z: Tensor, h: Tensor, slope: float) -> Tensor:
    """grad_z where h > 0, slope * grad_z elsewhere, in one pass."""
    return torch.ops.aten.leaky_relu_backward(grad_z, h, slope, False)


def near_one(slope: float) -> bool:
    """Whether (gz . h - gh . h) / (1 - a) loses precision: then use :func:`positive_part_dot`."""
    return abs(1 - slope) < 0.5


def positive_part_dot(grad_z: Tensor, h: Tensor) -> Tensor:
    """P = sum over h > 0 of grad_z h."""
    return torch.dot(torch.ops.aten.threshold_backward(grad_z, h, 0).flatten(), h.flatten())


def slope_grad(grad_z: Tensor, h: Tensor, slope: float, grad_z_h: Tensor,
               grad_h_h: Tensor | Callable[[], Tensor]) -> Tensor:
    """Q = sum over h <= 0 of grad_z h, the slope's gradient, from grad_z . h and grad_h . h (or
    a function computing it, called only where it is used): (gz . h - gh . h) / (1 - a), or
    gz . h - P near a = 1."""
    if near_one(slope):
        return grad_z_h - positive_part_dot(grad_z, h)
    return (grad_z_h - (grad_h_h() if callable(grad_h_h) else grad_h_h)) / (1 - slope)


class _PReLU(torch.autograd.Function):

    @staticmethod
    def forward(ctx, h: Tensor, slope: Tensor) -> Tensor:
        ctx.save_for_backward(h, slope)
        return F.prelu(h, slope)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_z: Tensor):
        h, slope = ctx.saved_tensors
        a = float(slope)  # (a host sync on GPU)
        grad_h = prelu_input_grad(grad_z, h, a)
        grad_slope = None
        if ctx.needs_input_grad[1]:
            grad_slope = slope_grad(grad_z, h, a, torch.dot(grad_z.flatten(), h.flatten()),
                                    lambda: torch.dot(grad_h.flatten(), h.flatten())).reshape(slope.shape)
        return grad_h, grad_slope


def prelu(h: Tensor, slope: Tensor) -> Tensor:
    """``F.prelu(h, slope)`` for a single slope (1,), with a faster backward."""
    if slope.numel() != 1:
        raise ValueError(f"the fused PReLU takes one slope, got {slope.numel()}")
    return _PReLU.apply(h, slope)
