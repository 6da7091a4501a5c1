"""Fused GM convolution -> LayerNorm -> PReLU (the GM-CNN layer) with a hand-derived backward.

For one sample, with s = sum_c x_c the channel sum and g[k, u] = s(u e_k^-1) the gathered taps
(shared channel mode, DESIGN 2.1),

    h = W g + b 1^T                      (O x N, the GM convolution)
    y = (h - mu) / sqrt(var + eps)       (LayerNorm over all O N entries, no affine)
    z = PReLU_a(y)

Every entry of h is a linear function of the K x N matrix g, so the LayerNorm statistics follow
from K x K quantities instead of a pass over h. With g = gc + gbar 1^T (gc centred along u,
so gc 1 = 0) and c = W gbar + b - mu (mean over channels 0):

    mu  = mean_o (W gbar + b)_o,     var = (tr(W Gc W^T) + N |c|^2) / (O N),    Gc = gc gc^T,

and y = rstd (W gc + c 1^T) is a single batched matmul with the normalisation folded into the
weight. The backward uses the LayerNorm gradient gh = rstd (gy - alpha - beta y), where
alpha = mean(gy) and beta = mean(gy * y) per sample, and folds alpha and beta into K x K terms
again (y gc^T = rstd W Gc, y 1 = N rstd c), so neither h nor gh is ever materialised:

    dL/dW = sum_b [ rstd (gy gc^T - beta rstd W Gc) + (gh 1) gbar^T ],   dL/db = sum_b gh 1,
    dL/dg = rstd (W^T gy - alpha W^T 1 1^T - beta rstd (W^T W gc + W^T c 1^T)).

beta itself is <W, gy gc^T> rstd + <c, gy 1> rstd over O N, from the same product. The PReLU
gradient is ReLU's backward kernel and an in-place lerp (boolean masks are several times slower
on CPU); the centred Gram matrix keeps the variance as accurate as a two-pass computation.

:func:`gm_residual_block_max` fuses the network's last residual block with the global max pool:
max_u (x + z)(o, u). Its gradient reaches one position per sample and channel, so gy is sparse
and gy gc^T, W^T gy are gathers and scatters of B x O values instead of two large matmuls.

Both equal the composition of the modules (``F.prelu(F.layer_norm(gm_conv(...)))``) to rounding
and are once differentiable.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from gmcnn.functional import gather_adjoint, gather_taps


class _Normalized(NamedTuple):
    """y = rstd (W gc + c 1^T) and what its backward needs, for one batch."""
    y: Tensor            # (B, O, N) normalised convolution output
    gc_ones: Tensor      # (B, K + 1, N) [gc; 1^T]: gathered taps centred along positions, ones
    g_mean: Tensor       # (B, K)
    w_gram: Tensor       # (B, O, K) W Gc
    offset: Tensor       # (B, O) c = W gbar + b - mu
    rstd: Tensor         # (B,)

    @property
    def gc(self) -> Tensor:
        return self.gc_ones[:, :-1]


def _normalized_conv(x: Tensor, w: Tensor, bias: Tensor | None, index: Tensor,
                     eps: float) -> _Normalized:
    """LayerNorm(GM conv(x)) with the statistics taken from the K x K Gram matrix."""
    batch, positions = x.shape[0], x.shape[-1]
    taps = w.shape[1]
    g = gather_taps(x.sum(1), index)                                 # (B, K, N)
    g_mean = g.mean(-1)
    # [gc; 1^T]: one matmul with [rstd W, rstd c] adds the offset, one with gy gives gy 1 too
    gc_ones = g.new_empty(batch, taps + 1, positions)
    gc = torch.sub(g, g_mean[..., None], out=gc_ones[:, :taps])
    gc_ones[:, taps].fill_(1)
    gram = torch.bmm(gc, gc.transpose(1, 2))                         # (B, K, K)
    offset = g_mean @ w.T if bias is None else torch.addmm(bias, g_mean, w.T)
    offset = offset - offset.mean(1, keepdim=True)
    w_gram = torch.matmul(w, gram)
    var = ((w_gram * w).sum((1, 2)) + positions * offset.square().sum(1)) / (w.shape[0] * positions)
    rstd = (var + eps).rsqrt()
    y = torch.bmm(torch.cat([w.expand(batch, -1, -1), offset[..., None]], 2) * rstd[:, None, None],
                  gc_ones)
    return _Normalized(y, gc_ones, g_mean, w_gram, offset, rstd)


def _normalized_conv_backward(saved: _Normalized, w: Tensor, grad_y_sum: Tensor,
                              grad_y_gc: Tensor, grad_y_to_taps, inverse: Tensor,
                              needs: tuple[bool, bool, bool]):
    """Gradients of (x, weight, bias), and gy . y summed over the batch, from the two
    contractions of the LayerNorm input gradient gy that the weight needs, gy 1 (B, O) and
    gy gc^T (B, O, K); ``grad_y_to_taps()`` returns W^T gy (B, K, N) and is called only when x
    needs a gradient."""
    need_x, need_w, need_b = needs
    gc, g_mean, w_gram, offset, rstd = saved.gc, *saved[2:]
    out_channels, positions = w.shape[0], gc.shape[-1]
    numel = out_channels * positions
    # alpha = mean(gy), beta = mean(gy * y) with y = rstd (W gc + c 1^T)
    alpha = grad_y_sum.sum(1) / numel
    grad_y_y = rstd * ((grad_y_gc * w).sum((1, 2)) + (grad_y_sum * offset).sum(1))  # gy . y
    beta_rstd = rstd * grad_y_y / numel
    grad_x = grad_w = grad_b = None
    if need_w or need_b:
        # gh 1 = rstd (gy 1 - N alpha - beta N rstd c), per sample and output channel
        grad_h_sum = rstd[:, None] * (grad_y_sum - positions * (
            alpha[:, None] + beta_rstd[:, None] * offset))
        if need_w:
            grad_hg = rstd[:, None, None] * (grad_y_gc - beta_rstd[:, None, None] * w_gram)
            grad_w = (grad_hg.sum(0) + grad_h_sum.T @ g_mean)[:, None]
        if need_b:
            grad_b = grad_h_sum.sum(0)
    if need_x:
        grad_g = grad_y_to_taps()
        grad_g -= beta_rstd[:, None, None] * torch.matmul(w.T @ w, gc)
        grad_g -= (alpha[:, None] * w.sum(0) + beta_rstd[:, None] * (offset @ w))[..., None]
        grad_g *= rstd[:, None, None]
        grad_x = gather_adjoint(grad_g, inverse)                     # (B, N), per channel
    return grad_x, grad_w, grad_b, grad_y_y.sum()


class _GMConvNormPReLU(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, slope: Tensor,
                index: Tensor, inverse: Tensor, eps: float) -> Tensor:
        saved = _normalized_conv(x, weight[:, 0], bias, index, eps)
        ctx.save_for_backward(*saved, weight, slope, inverse)
        ctx.channels, ctx.has_bias = x.shape[1], bias is not None
        return F.prelu(saved.y, slope)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_z: Tensor):
        *saved, weight, slope, inverse = ctx.saved_tensors
        saved = _Normalized(*saved)
        y, w = saved.y, weight[:, 0]
        # grad_z where y > 0 (ReLU's backward kernel), then in place: on CPU every fresh
        # activation-sized buffer costs more than the arithmetic on it
        grad_y = torch.ops.aten.threshold_backward(grad_z, y, 0)
        # The slope's gradient is Q = sum over y <= 0 of grad_z * y. With P the sum over y > 0,
        # grad_z . y = P + Q and grad_y . y = P + a Q, the latter known from the matmul below,
        # so Q = (grad_z . y - grad_y . y) / (1 - a) takes one dot product; near a = 1 (where
        # that division loses precision) Q is grad_z . y - P, two dot products.
        need_slope = ctx.needs_input_grad[3]
        a = float(slope) if need_slope else 0.0  # (a host sync on GPU)
        grad_z_y = torch.dot(grad_z.flatten(), y.flatten()) if need_slope else None
        near_one = abs(1 - a) < 0.5
        if need_slope and near_one:
            q = grad_z_y - torch.dot(grad_y.flatten(), y.flatten())  # grad_y is grad_z on y > 0
        grad_y.lerp_(grad_z, slope)                                  # grad_z * (1 or slope)
        grad_y_gc_ones = torch.bmm(grad_y, saved.gc_ones.transpose(1, 2))  # [gy gc^T, gy 1]
        grad_x, grad_w, grad_b, grad_y_y = _normalized_conv_backward(
            saved, w, grad_y_gc_ones[..., -1], grad_y_gc_ones[..., :-1],
            lambda: torch.bmm(w.T.expand(y.shape[0], -1, -1), grad_y), inverse,
            (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
             ctx.needs_input_grad[2] and ctx.has_bias))
        grad_slope = None
        if need_slope:
            q = q if near_one else (grad_z_y - grad_y_y) / (1 - a)
            grad_slope = q.reshape(slope.shape)
        if grad_x is not None:
            grad_x = grad_x[:, None].expand(-1, ctx.channels, -1)
        return grad_x, grad_w, grad_b, grad_slope, None, None, None


class _GMResidualBlockMax(torch.autograd.Function):
    """max_u [x + PReLU(LayerNorm(GM conv(x)))](o, u): the last residual block and the global
    max pool. The pool's gradient reaches one position per sample and channel, so the block's
    backward works on B x O values instead of B x O x N ones."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, slope: Tensor,
                index: Tensor, inverse: Tensor, eps: float) -> Tensor:
        saved = _normalized_conv(x, weight[:, 0], bias, index, eps)
        pooled, argmax = F.prelu(saved.y, slope).add_(x).max(-1)    # (B, O)
        y_at_max = saved.y.gather(-1, argmax[..., None])[..., 0]
        ctx.save_for_backward(*saved[1:], y_at_max, argmax, weight, slope, inverse)
        ctx.has_bias = bias is not None
        return pooled

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_pooled: Tensor):
        gc_ones, g_mean, w_gram, offset, rstd, y_at_max, argmax, weight, slope, inverse = \
            ctx.saved_tensors
        saved = _Normalized(None, gc_ones, g_mean, w_gram, offset, rstd)
        gc = saved.gc
        w = weight[:, 0]
        positive = y_at_max > 0
        grad_slope = None
        if ctx.needs_input_grad[3]:
            grad_slope = (grad_pooled * y_at_max).masked_fill(positive, 0).sum()
            grad_slope = grad_slope.reshape(slope.shape)
        grad_y = torch.where(positive, grad_pooled, grad_pooled * slope)  # (B, O) at argmax
        # gy gc^T has one term per (b, o): grad_y[b, o] * gc[b, :, argmax[b, o]]
        gc_at_max = gc.gather(-1, argmax[:, None].expand(-1, gc.shape[1], -1))  # (B, K, O)
        grad_y_gc = grad_y[..., None] * gc_at_max.transpose(1, 2)

        def grad_y_to_taps() -> Tensor:  # W^T gy, a scatter of B x O columns of W^T
            taps = gc.new_zeros(gc.shape)
            return taps.scatter_add_(-1, argmax[:, None].expand_as(gc_at_max),
                                     w.T[None] * grad_y[:, None])

        grad_taps, grad_w, grad_b, _ = _normalized_conv_backward(
            saved, w, grad_y, grad_y_gc, grad_y_to_taps, inverse,
            (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
             ctx.needs_input_grad[2] and ctx.has_bias))
        grad_x = None
        if grad_taps is not None:  # the convolution's input gradient plus the residual's
            grad_x = grad_taps[:, None].repeat(1, w.shape[0], 1)
            grad_x.scatter_add_(-1, argmax[..., None], grad_pooled[..., None])
        return grad_x, grad_w, grad_b, grad_slope, None, None, None


def _check_fusable(weight: Tensor, slope: Tensor) -> None:
    if weight.shape[1] != 1 or slope.numel() != 1:
        raise ValueError("the fused GM layers need shared channel mode (weight of shape "
                         "(O, 1, K)) and a single PReLU weight")


def gm_conv_norm_prelu(x: Tensor, weight: Tensor, bias: Tensor | None, slope: Tensor,
                       index: Tensor, inverse: Tensor, eps: float = 1e-5) -> Tensor:
    """``prelu(layer_norm(gm_conv(x, weight, index, inverse, bias)), slope)`` in shared channel
    mode, LayerNorm over (O, N) without affine, one PReLU weight; x (B, C, N), weight (O, 1, K),
    bias (O,) or None, slope (1,). Returns (B, O, N)."""
    _check_fusable(weight, slope)
    return _GMConvNormPReLU.apply(x, weight, bias, slope, index, inverse, eps)


def gm_residual_block_max(x: Tensor, weight: Tensor, bias: Tensor | None, slope: Tensor,
                          index: Tensor, inverse: Tensor, eps: float = 1e-5) -> Tensor:
    """``(x + gm_conv_norm_prelu(x, ...)).amax(-1)``: a one-layer residual block with an identity
    shortcut followed by the global max over positions; x (B, C, N) with C = O. Returns (B, O).
    At ties the gradient goes to one maximising position (as ``Tensor.max``)."""
    _check_fusable(weight, slope)
    if x.shape[1] != weight.shape[0]:
        raise ValueError(f"an identity shortcut needs as many input channels ({x.shape[1]}) as "
                         f"output channels ({weight.shape[0]})")
    return _GMResidualBlockMax.apply(x, weight, bias, slope, index, inverse, eps)
