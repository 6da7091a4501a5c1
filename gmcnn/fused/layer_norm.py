"""Fused GM convolution -> LayerNorm -> PReLU (the GM-CNN layer) with a hand-derived backward.

For one sample, with s = sum_c x_c the channel sum and g[k, u] = s(u e_k^-1) the gathered taps
(shared channel mode, docs/design.md §2.1),

    h = W g + b 1^T                      (O x N, the GM convolution)
    y = (h - mu) / sqrt(var + eps)       (LayerNorm over all O N entries, no affine)
    z = PReLU_a(y)

Every entry of h is a linear function of the K x N matrix g, so the LayerNorm statistics follow
from K x K quantities instead of a pass over h. With g = gc + gbar 1^T (gc centred along u,
so gc 1 = 0; every index row is a permutation, so gbar = mean(s) for every tap and gc is the
gather of s - mean(s)) and c = W gbar + b - mu (mean over channels 0):

    mu  = mean_o (W gbar + b)_o,     var = (tr(W Gc W^T) + N |c|^2) / (O N),    Gc = gc gc^T,

and y = rstd (W gc + c 1^T) is a single batched matmul with the normalisation folded into the
weight. The backward uses the LayerNorm gradient gh = rstd (gy - alpha - beta y), where
alpha = mean(gy) and beta = mean(gy * y) per sample, and folds alpha and beta into K x K terms
again (y gc^T = rstd W Gc, y 1 = N rstd c), so neither h nor gh is ever materialised:

    dL/dW = sum_b [ rstd (gy gc^T - beta rstd W Gc) + (gh 1) gbar^T ],   dL/db = sum_b gh 1,
    (with W shared, sum_b beta rstd^2 W Gc = W sum_b beta rstd^2 Gc, and tr(W Gc W^T) = <W^T W, Gc>:
    no O x K x K product per sample)
    dL/dg = rstd (W^T gy - alpha W^T 1 1^T - beta rstd (W^T W gc + W^T c 1^T)).

beta itself is <W, gy gc^T> rstd + <c, gy 1> rstd over O N, from the same product. The PReLU
gradient is leaky ReLU's backward kernel (:mod:`gmcnn.fused.prelu`; boolean masks are several
times slower on CPU); the centred Gram matrix keeps the variance as accurate as a two-pass
computation.

:func:`gm_residual_block_max` fuses the network's last residual block with the global max pool:
max_u (x + z)(o, u). Its gradient reaches one position per sample and channel, so gy is sparse
and gy gc^T, W^T gy are gathers and scatters of B x O values instead of two large matmuls.
:func:`gm_two_blocks_max` adds the block before it: the gradient reaching that block's output is
the same for every channel apart from one position per channel, so its backward needs one
matmul with the sign mask of its pre-activation and no dense activation gradient.

Gc = gc gc^T needs only K A inner products: <gc_k, gc_l> depends only on e_k e_l^-1, and A
anchor taps reach every such element (:func:`gmcnn.functional.gram_plan`; A = 4 for a 7 x 7
neighbourhood on C32 x C32). Gc enters only linearly, through <W^T W, Gc> per sample (W shared)
and through sum_b beta_b Gc_b, so it is kept as its P distinct entries per sample (P = K A, or
K^2 without a plan) and never expanded to B x K x K: <W^T W, Gc> is the P entries against W^T W
summed onto them, and the batch sum is expanded once.

All three equal the composition of the modules (``F.prelu(F.layer_norm(gm_conv(...)))``) to rounding
and are once differentiable.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from gmcnn.functional import gather_adjoint, gather_taps, pointwise_add_
from gmcnn.fused.prelu import prelu_input_grad, slope_grad
from gmcnn.fused.saving import save_by_name, saved_by_name


class _Normalized(NamedTuple):
    """y = rstd (W gc + c 1^T) and what its backward needs, for one batch."""
    y: Tensor            # (B, O, N) normalised convolution output
    gc_ones: Tensor      # (B, K + 1, N) [gc; 1^T]: gathered taps centred along positions, ones
    g_mean: Tensor       # (B, K)
    gram: Tensor         # (B, P) the distinct entries of Gc (:func:`_gram_entries`)
    gram_pairs: Tensor | None  # (K, K) where <gc_k, gc_l> is in gram; None: gram is Gc flattened
    offset: Tensor       # (B, O) c = W gbar + b - mu
    rstd: Tensor         # (B,)

    @property
    def gc(self) -> Tensor:
        return self.gc_ones[:, :-1]


Gram = tuple[Tensor, Tensor]   # (anchors, pairs) of gmcnn.functional.gram_plan


def _gram_entries(gc: Tensor, gram_plan: Gram | None) -> Tensor:
    """(B, K, N) -> (B, P): entry pairs[k, l] is <gc_k, gc_l> (P = K A with a plan, else K^2)."""
    if gram_plan is None:
        return torch.bmm(gc, gc.transpose(1, 2)).flatten(1)
    anchors, _ = gram_plan
    # (A, K) products, then laid out as (K, A): the short side first is the faster matmul on CPU
    return torch.bmm(gc[:, anchors], gc.transpose(1, 2)).transpose(1, 2).flatten(1)


def _onto_gram_entries(matrix: Tensor, pairs: Tensor | None, size: int) -> Tensor:
    """(K, K) -> (P,) with P = ``size``: each entry the sum of the matrix over the pairs (k, l)
    it stands for, so that <matrix, Gc> = entries @ this (``pairs`` None: Gc flattened)."""
    if pairs is None:
        return matrix.flatten()
    return matrix.new_zeros(size).index_add_(0, pairs.flatten(), matrix.flatten())


def _gram_matrix(entries: Tensor, pairs: Tensor | None, taps: int) -> Tensor:
    """(P,) -> (K, K): the Gram matrix with these entries."""
    return entries.view(taps, taps) if pairs is None else entries[pairs]


def _normalized_conv(x: Tensor, w: Tensor, bias: Tensor | None, index: Tensor, eps: float,
                     gram_plan: Gram | None) -> _Normalized:
    """LayerNorm(GM conv(x)) with the statistics taken from the K x K Gram matrix (from the
    anchors' K x A inner products when a gram_plan is given)."""
    batch, positions = x.shape[0], x.shape[-1]
    taps = w.shape[1]
    # channel sum s as a matmul (faster than a reduction over the middle axis on CPU)
    s = torch.matmul(x.new_ones(1, x.shape[1]), x)[:, 0]             # (B, N)
    # every row of the index is a permutation, so each tap's mean over positions is mean(s):
    # gather the centred s, and a ones row by an extra index row pointing past its end
    s_mean = s.mean(-1, keepdim=True)
    centred_and_one = torch.cat([s - s_mean, s.new_ones(batch, 1)], -1)
    gc_ones = gather_taps(centred_and_one, torch.cat([index, index.new_full((1, positions),
                                                                            positions)]))
    gc = gc_ones[:, :taps]                                           # (B, K, N)
    g_mean = s_mean.expand(-1, taps)
    gram = _gram_entries(gc, gram_plan)                               # (B, P)
    offset = g_mean @ w.T if bias is None else torch.addmm(bias, g_mean, w.T)
    offset = offset - offset.mean(1, keepdim=True)
    # tr(W Gc W^T) = <W^T W, Gc>: W^T W once per batch, not W Gc per sample
    pairs = None if gram_plan is None else gram_plan[1]
    var = (gram @ _onto_gram_entries(w.T @ w, pairs, gram.shape[1])
           + positions * offset.square().sum(1)) / (w.shape[0] * positions)
    rstd = (var + eps).rsqrt()
    y = torch.bmm(torch.cat([w.expand(batch, -1, -1), offset[..., None]], 2) * rstd[:, None, None],
                  gc_ones)
    return _Normalized(y, gc_ones, g_mean, gram, pairs, offset, rstd)


def _fold_y(w: Tensor) -> bool:
    """Whether the input gradient's beta term is taken as W^T (gy - beta y) rather than
    beta rstd (W^T W gc + W^T c 1^T) (the same, since y = rstd (W gc + c 1^T)): with more taps
    than output channels (K > O; K = 196 on D14 x D14) the K x K x N product costs more than
    an O x N pass and an O x K x N product."""
    return w.shape[1] > w.shape[0]


def _normalized_conv_backward(saved: _Normalized, w: Tensor, grad_y_sum: Tensor,
                              grad_y_gc: Tensor, grad_y_to_taps, inverse: Tensor,
                              needs: tuple[bool, bool, bool]):
    """Gradients of (x, weight, bias), and gy . y summed over the batch, from the two
    contractions of the LayerNorm input gradient gy that the weight needs, gy 1 (B, O) and
    gy gc^T (B, O, K); ``grad_y_to_taps(beta)`` returns W^T (gy - beta y) (B, K, N) if
    :func:`_fold_y` (beta (B,)), W^T gy otherwise, and is called only when x needs a gradient."""
    need_x, need_w, need_b = needs
    gc, g_mean, gram, offset, rstd = saved.gc, saved.g_mean, saved.gram, saved.offset, saved.rstd
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
            # sum_b rstd (gy gc^T - beta rstd W Gc): W is shared, so W (sum_b beta rstd^2 Gc)
            # is one O x K x K product per batch
            grad_hg = torch.einsum("b,bok->ok", rstd, grad_y_gc) - w @ _gram_matrix(
                (rstd * beta_rstd) @ gram, saved.gram_pairs, w.shape[1])
            grad_w = (grad_hg + grad_h_sum.T @ g_mean)[:, None]
        if need_b:
            grad_b = grad_h_sum.sum(0)
    if need_x:
        grad_g = grad_y_to_taps(grad_y_y / numel)
        # a term constant along positions adds its sum over taps to every position of the
        # adjoint, and rstd scales it: both applied to the (B, N) result
        constant = alpha[:, None] * w.sum(0)                                        # (B, K)
        if not _fold_y(w):
            grad_g.baddbmm_(-beta_rstd[:, None, None] * (w.T @ w), gc)
            constant = constant + beta_rstd[:, None] * (offset @ w)
        grad_x = (gather_adjoint(grad_g, inverse) - constant.sum(1, keepdim=True)) * rstd[:, None]
    return grad_x, grad_w, grad_b, grad_y_y.sum()


class _GMConvNormPReLU(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, slope: Tensor,
                index: Tensor, inverse: Tensor, eps: float, gram_plan: Gram | None) -> Tensor:
        saved = _normalized_conv(x, weight[:, 0], bias, index, eps, gram_plan)
        save_by_name(ctx, conv=saved, weight=weight, slope=slope, inverse=inverse)
        ctx.channels, ctx.has_bias = x.shape[1], bias is not None
        return F.prelu(saved.y, slope)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_z: Tensor):
        record = saved_by_name(ctx)
        saved, slope, inverse = record.conv, record.slope, record.inverse
        y, w = saved.y, record.weight[:, 0]
        a = float(slope)  # (a host sync on GPU)
        grad_y = prelu_input_grad(grad_z, y, a)
        # The slope's gradient Q = (grad_z . y - grad_y . y) / (1 - a) (gmcnn.fused.prelu) with
        # grad_y . y from the matmul below: one dot product
        need_slope = ctx.needs_input_grad[3]
        grad_z_y = torch.dot(grad_z.flatten(), y.flatten()) if need_slope else None
        # [gy gc^T, gy 1]; this operand order is the faster matmul layout on CPU
        grad_y_gc_ones = torch.bmm(saved.gc_ones, grad_y.transpose(1, 2)).transpose(1, 2)
        grad_x, grad_w, grad_b, grad_y_y = _normalized_conv_backward(
            saved, w, grad_y_gc_ones[..., -1], grad_y_gc_ones[..., :-1],
            lambda beta: torch.bmm(w.T.expand(y.shape[0], -1, -1), grad_y.addcmul_(
                y, -beta[:, None, None]) if _fold_y(w) else grad_y), inverse,
            (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
             ctx.needs_input_grad[2] and ctx.has_bias))
        grad_slope = None
        if need_slope:
            grad_slope = slope_grad(grad_z, y, a, grad_z_y, grad_y_y).reshape(slope.shape)
        if grad_x is not None:
            grad_x = grad_x[:, None].expand(-1, ctx.channels, -1)
        return grad_x, grad_w, grad_b, grad_slope, None, None, None, None


def _max_over_positions(z: Tensor) -> tuple[Tensor, Tensor]:
    """(B, O, N) -> the max over positions and its first position, both (B, O); the pooling
    kernel is about twice as fast on CPU as ``Tensor.max(-1)``, with the same result."""
    pooled, argmax = F.max_pool1d(z, z.shape[-1], return_indices=True)
    return pooled[..., 0], argmax[..., 0]


def _prelu_at_max(grad_pooled: Tensor, y_at_max: Tensor, slope: Tensor,
                  need_slope: bool) -> tuple[Tensor, Tensor | None]:
    """PReLU's backward at the maximising positions: (B, O) gradients of the pre-activation y,
    and the slope's gradient sum_{y <= 0} grad * y (None unless needed)."""
    positive = y_at_max > 0
    grad_slope = None
    if need_slope:
        grad_slope = (grad_pooled * y_at_max).masked_fill(positive, 0).sum().reshape(slope.shape)
    return torch.where(positive, grad_pooled, grad_pooled * slope), grad_slope


def _at_max(t: Tensor, argmax: Tensor) -> Tensor:
    """(B, R, N) -> (B, R, O): the columns of t at the positions argmax (B, O)."""
    return t.gather(-1, argmax[:, None].expand(-1, t.shape[1], -1))


def _scatter_at_max(out: Tensor, argmax: Tensor, columns: Tensor) -> Tensor:
    """Adds columns (B, R, O) to out (B, R, N) at the positions argmax (B, O), in place."""
    return out.scatter_add_(-1, argmax[:, None].expand_as(columns), columns)


def _over_channels_plus_at_max(per_position: Tensor, channels: int, argmax: Tensor,
                               values: Tensor) -> Tensor:
    """(B, N) repeated over channels, plus values (B, C) at the positions argmax (B, C)."""
    out = per_position[:, None].repeat(1, channels, 1)
    return out.scatter_add_(-1, argmax[..., None], values[..., None])


def _last_block_backward(saved: _Normalized, w: Tensor, slope: Tensor, y_at_max: Tensor,
                         argmax: Tensor, grad_pooled: Tensor, inverse: Tensor,
                         needs: tuple[bool, bool, bool, bool]):
    """Backward of max_u PReLU(LayerNorm(GM conv(x)))(o, u) without the residual: the gradient
    of x's channel sum (B, N), of the weight, the bias and the slope. The pool's gradient
    reaches one position per sample and channel, so gy gc^T and W^T gy are gathers and
    scatters of B x O values instead of two large matmuls (``saved.y`` is kept only where
    :func:`_fold_y` needs it)."""
    grad_y, grad_slope = _prelu_at_max(grad_pooled, y_at_max, slope, needs[3])
    grad_y_gc = grad_y[..., None] * _at_max(saved.gc, argmax).transpose(1, 2)

    def grad_y_to_taps(beta: Tensor) -> Tensor:
        dense = (torch.bmm(w.T.expand(beta.shape[0], -1, -1), saved.y * -beta[:, None, None])
                 if _fold_y(w) else saved.gc.new_zeros(saved.gc.shape))
        return _scatter_at_max(dense, argmax, w.T[None] * grad_y[:, None])

    grad_sum, grad_w, grad_b, _ = _normalized_conv_backward(
        saved, w, grad_y, grad_y_gc, grad_y_to_taps, inverse, needs[:3])
    return grad_sum, grad_w, grad_b, grad_slope


class _GMResidualBlockMax(torch.autograd.Function):
    """max_u [x + PReLU(LayerNorm(GM conv(x)))](o, u): the last residual block and the global
    max pool."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, slope: Tensor,
                index: Tensor, inverse: Tensor, eps: float, gram_plan: Gram | None) -> Tensor:
        saved = _normalized_conv(x, weight[:, 0], bias, index, eps, gram_plan)
        pooled, argmax = _max_over_positions(F.prelu(saved.y, slope).add_(x))
        y_at_max = saved.y.gather(-1, argmax[..., None])[..., 0]
        save_by_name(ctx, conv=saved if _fold_y(weight[:, 0]) else saved._replace(y=None),
              y_at_max=y_at_max, argmax=argmax, weight=weight, slope=slope, inverse=inverse)
        ctx.has_bias = bias is not None
        return pooled

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_pooled: Tensor):
        saved = saved_by_name(ctx)
        need = ctx.needs_input_grad
        grad_sum, grad_w, grad_b, grad_slope = _last_block_backward(
            saved.conv, saved.weight[:, 0], saved.slope, saved.y_at_max, saved.argmax,
            grad_pooled, saved.inverse, (need[0], need[1], need[2] and ctx.has_bias, need[3]))
        grad_x = None
        if grad_sum is not None:  # the convolution's input gradient plus the residual's
            grad_x = _over_channels_plus_at_max(grad_sum, saved.weight.shape[0], saved.argmax,
                                                grad_pooled)
        return grad_x, grad_w, grad_b, grad_slope, None, None, None, None


class _GMTwoBlocksMax(torch.autograd.Function):
    """max_u [r + PReLU(LayerNorm(GM conv_2(r)))](o, u) with r = x' + PReLU(LayerNorm(GM
    conv_1(x))) and x' = x or a 1x1 convolution of x: the last two one-layer residual blocks
    and the global max pool.

    The tail's gradient with respect to r is 1 gs^T + S: the gradient gs of r's channel sum,
    the same for every channel, plus S, the pool's gradient at one position per channel. So
    the first block's backward needs no dense gradient. With P = [y_1 > 0] and a the slope, the
    gradient of y_1 is gy = (a + (1 - a) P) o (1 gs^T + S), and

        gy [gc; 1]^T = a 1 ([gc; 1] gs)^T + (1 - a) P ([gc; 1] diag(gs))^T + (sparse part),
        W^T gy       = a (W^T 1) gs^T + (1 - a) (W^T P) diag(gs) + (sparse part),

    one matmul with the mask P each. The slope's gradient sum_{y_1 <= 0} gr y_1 is the sum over
    all positions minus that over P, both from [gc; 1] gs and P [gc; 1]^T diag(gs) (since
    y_1 = rstd [W, c] [gc; 1]), plus the sparse part. Compared with the two fused layers this
    drops about a third of a training step's activation-sized memory passes."""

    @staticmethod
    def forward(ctx, x: Tensor, weight_1: Tensor, bias_1: Tensor | None,
                shortcut_weight: Tensor | None, shortcut_bias: Tensor | None, weight_2: Tensor,
                bias_2: Tensor | None, slope: Tensor, index: Tensor, inverse: Tensor,
                eps: float, gram_plan: Gram | None) -> Tensor:
        first = _normalized_conv(x, weight_1[:, 0], bias_1, index, eps, gram_plan)
        r = F.prelu(first.y, slope)
        if shortcut_weight is None:
            r.add_(x)
        else:
            pointwise_add_(r, x, shortcut_weight, shortcut_bias)
        second = _normalized_conv(r, weight_2[:, 0], bias_2, index, eps, gram_plan)
        pooled, argmax = _max_over_positions(F.prelu(second.y, slope).add_(r))
        ys_at_max = [s.y.gather(-1, argmax[..., None])[..., 0] for s in (first, second)]
        save_by_name(ctx, x=x if shortcut_weight is not None else None, first=first,
              second=second if _fold_y(weight_2[:, 0]) else second._replace(y=None),
              y1_at_max=ys_at_max[0], y2_at_max=ys_at_max[1], argmax=argmax, weight_1=weight_1,
              shortcut_weight=shortcut_weight, weight_2=weight_2, slope=slope, inverse=inverse)
        ctx.has_bias = (bias_1 is not None, shortcut_bias is not None, bias_2 is not None)
        return pooled

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_pooled: Tensor):
        saved = saved_by_name(ctx)
        x, first, second, argmax, slope, inverse = (saved.x, saved.first, saved.second,
                                                    saved.argmax, saved.slope, saved.inverse)
        weight_1, shortcut_weight = saved.weight_1, saved.shortcut_weight
        need = ctx.needs_input_grad
        has_b1, has_sb, has_b2 = ctx.has_bias
        grad_sum_r, grad_w2, grad_b2, grad_slope = _last_block_backward(
            second, saved.weight_2[:, 0], slope, saved.y2_at_max, argmax, grad_pooled, inverse,
            (True, need[5], need[6] and has_b2, need[7]))
        # gradient of r: 1 gs^T + S, S = grad_pooled at argmax; through PReLU: m o (1 gs^T + S)
        gs = grad_sum_r
        w1, gc_ones = weight_1[:, 0], first.gc_ones
        taps = w1.shape[1]
        grad_sparse, slope_sparse = _prelu_at_max(grad_pooled, saved.y1_at_max, slope, need[7])
        # P diag(gs), as numbers (O rows: cheaper to scale than [gc; 1]'s K + 1)
        mask_gs = torch.gt(first.y, 0, out=torch.empty_like(first.y)).mul_(gs[:, None])
        gc_ones_gs = torch.bmm(gc_ones, gs[..., None])[..., 0]      # (B, K + 1)
        mask_gc_ones_gs = torch.bmm(gc_ones, mask_gs.transpose(1, 2)).transpose(1, 2)
        a = slope
        grad_y_gc_ones = (a * gc_ones_gs[:, None] + (1 - a) * mask_gc_ones_gs
                          + grad_sparse[..., None] * _at_max(gc_ones, argmax).transpose(1, 2))

        def grad_y_to_taps(beta: Tensor) -> Tensor:
            if _fold_y(w1):   # W^T (P diag((1 - a) gs) - beta y_1)
                dense = mask_gs.mul_(1 - a).addcmul_(first.y, -beta[:, None, None])
                grad_g = torch.matmul(w1.T, dense)
            else:
                grad_g = torch.matmul(w1.T * (1 - a), mask_gs)
            grad_g += (a * w1.sum(0))[None, :, None] * gs[:, None]
            return _scatter_at_max(grad_g, argmax, w1.T[None] * grad_sparse[:, None])

        grad_sum_x, grad_w1, grad_b1, _ = _normalized_conv_backward(
            first, w1, grad_y_gc_ones[..., taps], grad_y_gc_ones[..., :taps], grad_y_to_taps,
            inverse, (need[0], need[1], need[2] and has_b1))
        if need[7]:  # sum_{y_1 <= 0} gr y_1: all positions minus P, y_1 = rstd [W, c] [gc; 1]
            w_offset = torch.cat([w1.expand(gs.shape[0], -1, -1), first.offset[..., None]], 2)
            dense = first.rstd * ((w_offset.sum(1) * gc_ones_gs).sum(1)
                                  - (w_offset * mask_gc_ones_gs).sum((1, 2)))
            grad_slope = grad_slope + slope_sparse + dense.sum()
        grad_sw = grad_sb = grad_x = None
        if shortcut_weight is not None and need[3]:   # sum_u (1 gs^T + S) x^T
            grad_sw = (torch.bmm(x, gs[..., None])[..., 0].sum(0)
                       + torch.einsum("bo,bco->oc", grad_pooled, _at_max(x, argmax)))
        if need[4] and has_sb:
            grad_sb = gs.sum() + grad_pooled.sum(0)
        if need[0]:
            if shortcut_weight is None:   # + 1 gs^T + S
                grad_x = _over_channels_plus_at_max(grad_sum_x + gs, w1.shape[0], argmax,
                                                    grad_pooled)
            else:                         # + Ws^T (1 gs^T + S)
                grad_x = grad_sum_x[:, None].repeat(1, x.shape[1], 1)
                grad_x += shortcut_weight.sum(0)[None, :, None] * gs[:, None]
                _scatter_at_max(grad_x, argmax, shortcut_weight.T[None] * grad_pooled[:, None])
        return (grad_x, grad_w1, grad_b1, grad_sw, grad_sb, grad_w2, grad_b2, grad_slope,
                None, None, None, None)


def _check_fusable(weight: Tensor, slope: Tensor) -> None:
    if weight.shape[1] != 1 or slope.numel() != 1:
        raise ValueError("the fused GM layers need shared channel mode (weight of shape "
                         "(O, 1, K)) and a single PReLU weight")


def gm_conv_norm_prelu(x: Tensor, weight: Tensor, bias: Tensor | None, slope: Tensor,
                       index: Tensor, inverse: Tensor, eps: float = 1e-5,
                       gram_plan: Gram | None = None) -> Tensor:
    """``prelu(layer_norm(gm_conv(x, weight, index, inverse, bias)), slope)`` in shared channel
    mode, LayerNorm over (O, N) without affine, one PReLU weight; x (B, C, N), weight (O, 1, K),
    bias (O,) or None, slope (1,); ``gram_plan`` (a GMConv's ``gram_plan``, from
    :func:`gmcnn.functional.gram_plan`) computes the Gram matrix from fewer inner products.
    Returns (B, O, N)."""
    _check_fusable(weight, slope)
    return _GMConvNormPReLU.apply(x, weight, bias, slope, index, inverse, eps, gram_plan)


def gm_residual_block_max(x: Tensor, weight: Tensor, bias: Tensor | None, slope: Tensor,
                          index: Tensor, inverse: Tensor, eps: float = 1e-5,
                       gram_plan: Gram | None = None) -> Tensor:
    """``(x + gm_conv_norm_prelu(x, ...)).amax(-1)``: a one-layer residual block with an identity
    shortcut followed by the global max over positions; x (B, C, N) with C = O. Returns (B, O).
    At ties the gradient goes to one maximising position (as ``Tensor.max``)."""
    _check_fusable(weight, slope)
    if x.shape[1] != weight.shape[0]:
        raise ValueError(f"an identity shortcut needs as many input channels ({x.shape[1]}) as "
                         f"output channels ({weight.shape[0]})")
    return _GMResidualBlockMax.apply(x, weight, bias, slope, index, inverse, eps, gram_plan)


def gm_two_blocks_max(x: Tensor, weight_1: Tensor, bias_1: Tensor | None,
                      shortcut_weight: Tensor | None, shortcut_bias: Tensor | None,
                      weight_2: Tensor, bias_2: Tensor | None, slope: Tensor, index: Tensor,
                      inverse: Tensor, eps: float = 1e-5,
                      gram_plan: Gram | None = None) -> Tensor:
    """``gm_residual_block_max(r, weight_2, bias_2, ...)`` with ``r = x' + gm_conv_norm_prelu(x,
    weight_1, bias_1, ...)``: the last two one-layer residual blocks and the global max. The
    first block's shortcut x' is x (``shortcut_weight`` None, then x has O channels) or the 1x1
    convolution ``shortcut_weight x + shortcut_bias`` with shortcut_weight (O, C). x (B, C, N);
    returns (B, O)."""
    _check_fusable(weight_1, slope)
    _check_fusable(weight_2, slope)
    if weight_1.shape[0] != weight_2.shape[0]:
        raise ValueError(f"both blocks need the same number of output channels, got "
                         f"{weight_1.shape[0]} and {weight_2.shape[0]}")
    if shortcut_weight is None and x.shape[1] != weight_1.shape[0]:
        raise ValueError(f"an identity shortcut needs as many input channels ({x.shape[1]}) as "
                         f"output channels ({weight_1.shape[0]})")
    return _GMTwoBlocksMax.apply(x, weight_1, bias_1, shortcut_weight, shortcut_bias, weight_2,
                                 bias_2, slope, index, inverse, eps, gram_plan)
