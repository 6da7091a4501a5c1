"""Group-matrix operations as batched index gathers and matrix products.

Functions on a group G of order N are tensors whose last dimension has length N. For the kernel
support e_1..e_K, the convolution index is

    index[k, u] = u * e_k^-1,

and a GM convolution (docs/design.md §2.1) is ``y[b, o, u] = sum_{c, k} w[o, c, k] x[b, c, index[k, u]]``.
In "shared" channel mode (the original GM-CNN semantics) the weight has a single input channel
that is applied to the channel sum, so the channels are summed *before* the gather.

Each row ``index[k]`` is a permutation of the N positions. The gather's adjoint, normally a
scatter-add, is therefore a gather with the inverse permutations followed by a sum over k; the
two autograd functions below are each other's backward, so higher derivatives work too.

For products of cyclic groups the convolution is a circular convolution, which
:func:`circular_gm_conv` computes with the vendor convolution (cuDNN / oneDNN).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gmcnn import native
from gmcnn.groups import CyclicGroup, FiniteGroup, ProductGroup


def conv_index(group: FiniteGroup, neighbourhood: np.ndarray) -> Tensor:
    """``index[k, u] = u * e_k^-1`` as a (K, N) int64 tensor."""
    neighbourhood = np.asarray(neighbourhood)
    positions = np.arange(group.order)
    index = group.multiply(positions[None, :], group.inverse[neighbourhood][:, None])
    return torch.as_tensor(index, dtype=torch.long)


def inverse_permutations(index: Tensor) -> Tensor:
    """Row-wise inverse: ``out[k, index[k, u]] = u``. Every row must be a permutation."""
    out = torch.empty_like(index)
    positions = torch.arange(index.shape[-1], device=index.device).expand_as(index)
    out.scatter_(-1, index, positions)
    if not torch.equal(torch.gather(out, -1, index), positions):
        raise ValueError("index rows are not permutations of the positions")
    return out


def gram_plan(group: FiniteGroup, neighbourhood: np.ndarray) -> tuple[Tensor, Tensor]:
    """Fewer inner products for the Gram matrix of gathered taps g_k(u) = s(u e_k^-1).

    <g_k, g_l> = sum_v s(v) s(v e_k e_l^-1) depends only on e_k e_l^-1. Returns anchor taps
    a_1..a_A, picked greedily until every e_k e_l^-1 equals some e_j e_a^-1, and pairs (K, K)
    such that <g_k, g_l> = (g g_anchors^T).flatten()[pairs[k, l]]: K A inner products instead
    of K^2 (four anchors, the corners, cover a 7 x 7 box on C_n x C_n)."""
    e = np.asarray(neighbourhood)
    taps = len(e)
    quotient = group.multiply(e[:, None], group.inverse[e][None, :])   # e_k e_l^-1, (K, K)
    values, ids = np.unique(quotient, return_inverse=True)
    ids = ids.reshape(taps, taps)
    covers = np.zeros((taps, len(values)), dtype=bool)                 # anchor l -> its ids
    covers[np.arange(taps)[:, None], ids.T] = True
    uncovered, anchors = np.ones(len(values), dtype=bool), []
    while uncovered.any():
        anchors.append(int((covers & uncovered).sum(1).argmax()))
        uncovered &= ~covers[anchors[-1]]
    # position in the flattened (K, A) products of one (k, a) pair for each value of e_k e_a^-1
    where = np.empty(len(values), dtype=np.int64)
    for j, a in reversed(list(enumerate(anchors))):
        where[ids[:, a]] = np.arange(taps) * len(anchors) + j
    return torch.as_tensor(anchors), torch.as_tensor(where[ids])


def _flat(index: Tensor) -> Tensor:
    """Offsets row k into the flattened (K * N) axis: flat[k, u] = k * N + index[k, u]."""
    k, n = index.shape
    return (index + n * torch.arange(k, device=index.device)[:, None]).reshape(-1)


def _gather_last(x: Tensor, flat_index: Tensor) -> Tensor:
    """``x[..., flat_index]``; torch.gather with a broadcast index is several times faster on
    CPU than index_select along the last dimension."""
    return x.gather(-1, flat_index.expand(*x.shape[:-1], flat_index.numel()))


def gather_taps(x: Tensor, index: Tensor) -> Tensor:
    """(..., N) -> (..., K, N): out[..., k, u] = x[..., index[k, u]] (no autograd rule)."""
    return _gather_last(x, index.reshape(-1)).unflatten(-1, index.shape)


def gather_adjoint(y: Tensor, inverse: Tensor) -> Tensor:
    """(..., K, N) -> (..., N): out[..., m] = sum_k y[..., k, inverse[k, m]], the adjoint of
    :func:`gather_taps` when every row of the index is a permutation (no autograd rule)."""
    k, n = inverse.shape
    picked = _gather_last(y.reshape(*y.shape[:-2], k * n), _flat(inverse))
    return picked.unflatten(-1, (k, n)).sum(-2)


FOLD_BIAS_MAX_CHANNELS = 16  # copying x with a row of ones is cheaper than a pass over y up to here


def pointwise_add_(y: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``y += weight x + bias 1^T`` in place, per sample: y (B, O, N), x (B, C, N), weight (O, C).
    With few input channels the bias rides in the matmul, as a weight column against a row of
    ones appended to x, instead of taking a pass of its own over y (and another for its
    gradient)."""
    if bias is not None and x.shape[1] <= FOLD_BIAS_MAX_CHANNELS:
        weight, bias = torch.cat([weight, bias[:, None]], 1), None
        x = torch.cat([x, x.new_ones(x.shape[0], 1, x.shape[-1])], 1)
    y = y.baddbmm_(weight.expand(x.shape[0], -1, -1), x)
    return y if bias is None else y.add_(bias[:, None])


class _PermutationGather(torch.autograd.Function):
    """(..., N) -> (..., K, N): out[..., k, u] = x[..., index[k, u]]."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(index, inverse)
        return gather_taps(x, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        index, inverse = ctx.saved_tensors
        return _PermutationGatherAdjoint.apply(grad, index, inverse), None, None


class _PermutationGatherAdjoint(torch.autograd.Function):
    """(..., K, N) -> (..., N): out[..., m] = sum_k y[..., k, inverse[k, m]] (the gather's adjoint)."""

    @staticmethod
    def forward(ctx, y: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(index, inverse)
        return gather_adjoint(y, inverse)

    @staticmethod
    def backward(ctx, grad: Tensor):
        index, inverse = ctx.saved_tensors
        return _PermutationGather.apply(grad, index, inverse), None, None


def permutation_gather(x: Tensor, index: Tensor, inverse: Tensor | None = None) -> Tensor:
    """``x[..., index]`` for an index whose rows are permutations, with a gather backward.

    ``index`` is (K, N) with x's last dimension N; the result is (..., K, N). ``inverse`` is
    :func:`inverse_permutations` of ``index`` (computed if not given; cache it in hot loops).
    """
    if inverse is None:
        inverse = inverse_permutations(index)
    return _PermutationGather.apply(x, index, inverse)


def gm_conv(x: Tensor, weight: Tensor, index: Tensor, inverse: Tensor,
            bias: Tensor | None = None) -> Tensor:
    """GM convolution as one gather and one batched matrix product.

    x: (B, C, N); weight: (O, C', K) with C' = 1 (shared mode: applied to the channel sum) or
    C' = C (full mode); index/inverse: (K, N). Returns (B, O, N).
    """
    if weight.shape[1] == 1:
        x = x.sum(1, keepdim=True)
    gathered = permutation_gather(x, index, inverse).flatten(1, 2)  # (B, C' * K, N)
    # bmm with the weight broadcast keeps y contiguous and avoids copying the gathered tensor
    # (matmul's 2-D x 3-D path transposes it into one large GEMM); baddbmm fuses the bias.
    weight = weight.flatten(1).expand(x.shape[0], -1, -1)
    if bias is None:
        return torch.bmm(weight, gathered)
    return torch.baddbmm(bias[:, None].expand(x.shape[0], -1, x.shape[-1]), weight, gathered)


def gm_conv_profiled(x: Tensor, weight: Tensor, profiles: Tensor, index: Tensor, inverse: Tensor,
                     bias: Tensor | None = None) -> Tensor:
    """``y[b, o, u] = sum_i profiles[i, u] gm_conv(x, weight[:, i])[b, o, u]`` (+ bias): R GM
    convolutions with position profiles (a relaxed layer, :mod:`gmcnn.nn.relaxation`) from one
    gather. A profile multiplies the tap that reaches position u as much as the output there, so
    it is applied to the C' K gathered rows instead of the R O output rows, and one matmul with
    the weight sets side by side, [W_0, .., W_R-1] [g p_0; ..; g p_R-1], gives y.

    x: (B, C, N); weight: (O, R, C', K) with C' = 1 (shared mode) or C; profiles: (R, N).
    Returns (B, O, N). Cheaper than R separate products when R C' K is small against R O (shared
    mode)."""
    batch = x.shape[0]
    if weight.shape[2] == 1:  # the channel sum as a matmul (faster than a reduction on CPU)
        x = torch.matmul(x.new_ones(1, x.shape[1]), x)
    taps = permutation_gather(x, index, inverse)                       # (B, C', K, N)
    profiled = (taps[:, None] * profiles.to(taps.dtype)[:, None, None]).flatten(1, 3)
    weight = weight.flatten(1).expand(batch, -1, -1)                  # (B, O, R C' K)
    if bias is None:
        return torch.bmm(weight, profiled)
    return torch.baddbmm(bias[:, None].expand(batch, -1, x.shape[-1]), weight, profiled)


def gm_conv_naive(x: Tensor, weight: Tensor, index: Tensor, bias: Tensor | None = None) -> Tensor:
    """Reference formulation (what the original code did): gather every input channel into a
    (B, C, K, N) tensor, then contract. Memory grows with C * K * N; use only to check."""
    gathered = x[:, :, index]
    if weight.shape[1] == 1:
        y = torch.einsum("bckn,ok->bon", gathered, weight[:, 0])
    else:
        y = torch.einsum("bckn,ock->bon", gathered, weight)
    return y if bias is None else y + bias[:, None]


def cyclic_axes(group: FiniteGroup) -> tuple[int, ...] | None:
    """Axis lengths if ``group`` is a product of at most three cyclic groups, else None."""
    factors = group.factors if isinstance(group, ProductGroup) else (group,)
    if len(factors) <= 3 and all(isinstance(f, CyclicGroup) for f in factors):
        return tuple(f.order for f in factors)
    return None


class _CircularPad2d(torch.autograd.Function):
    """Circular padding of the last two axes by t, with the adjoint as its backward: the interior
    of the gradient plus its 2t wrapped rows, then columns, added onto the opposite edges (strips
    of width t, where autograd's generic rule for F.pad writes whole zero tensors)."""

    @staticmethod
    def forward(ctx, x: Tensor, t: int) -> Tensor:
        ctx.t = t
        return F.pad(x, (t,) * 4, mode="circular")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        t = ctx.t
        rows = grad[..., t:-t, :].clone()
        rows[..., :t, :] += grad[..., -t:, :]
        rows[..., -t:, :] += grad[..., :t, :]
        out = rows[..., t:-t].clone()
        out[..., :t] += rows[..., -t:]
        out[..., -t:] += rows[..., :t]
        return out, None


def circular_pad2d(x: Tensor, t: int) -> Tensor:
    """``F.pad(x, (t,) * 4, mode="circular")`` (t <= the last two sizes) with a cheaper backward
    (once differentiable)."""
    return _CircularPad2d.apply(x, t)


def _quarters(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four strided sub-images of the 2 x 2 windows: (top left, top right, bottom left,
    bottom right)."""
    return x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]


def _index_from_code(code: Tensor, width: int) -> Tensor:
    """F.max_pool2d's argmax index from :func:`gmcnn.native.max_pool2x2`'s offset code
    (2 lower + right) of the windows of images ``width`` wide."""
    rows = torch.arange(0, 2 * code.shape[-2], 2, device=code.device)[:, None] * width
    corner = rows + torch.arange(0, width, 2, device=code.device)
    return corner + (code >> 1).long() * width + (code & 1)


def _max_pool2x2_with_index(x: Tensor) -> tuple[Tensor, Tensor]:
    """The 2 x 2 maxima of the last two axes and their argmax (ties to the first entry in
    row-major order) in F.max_pool2d's index format (the flat position in each image), from three
    quarter-size comparisons; the offset within the window (0, 1, W or W + 1) in one byte where it
    fits, so that the int64 index is written once, by one broadcast add of the windows' corners."""
    top_left, top_right, bottom_left, bottom_right = _quarters(x)
    right_top, right_bottom = top_right > top_left, bottom_right > bottom_left
    top, bottom = torch.maximum(top_left, top_right), torch.maximum(bottom_left, bottom_right)
    lower = bottom > top
    height, width = x.shape[-2:]
    rows = torch.arange(0, height, 2, device=x.device)[:, None] * width
    corner = rows + torch.arange(0, width, 2, device=x.device)                 # (H/2, W/2)
    right = right_top ^ (lower & (right_top ^ right_bottom))    # where(lower, ...): bitwise, far faster on CPU
    offset = lower.to(torch.uint8 if width < 255 else torch.int32).mul_(width).add_(right)
    return torch.maximum(top, bottom), torch.add(corner, offset)


class _MaxPool2x2(torch.autograd.Function):
    """2 x 2 stride-2 max pooling of the last two axes (even sizes) from the four strided
    sub-images; the argmax (ties to the first entry in row-major order, as F.max_pool2d) from
    three quarter-size comparisons, in F.max_pool2d's index format, so that its backward kernel
    applies. Where :func:`gmcnn.native.applies`, the compiled kernels instead, with the argmax's
    offset in one byte."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.native = native.applies(x)
        if ctx.native:        # the argmax as one byte per window, from one pass over x
            values, code = native.max_pool2x2(x)
            ctx.save_for_backward(code)
            return values
        values, index = _max_pool2x2_with_index(x)
        ctx.save_for_backward(x, index)
        return values

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        if ctx.native:
            return native.max_unpool2x2(grad, *ctx.saved_tensors)
        x, index = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [2, 2], [2, 2], [0, 0], [1, 1],
                                                               False, index)


def max_pool2x2(x: Tensor) -> Tensor:
    """``F.max_pool2d(x, 2)`` for even sizes: the same values and gradient, from the four strided
    sub-images (several times faster on CPU; once differentiable, :class:`_MaxPool2x2`); without a
    gradient just their maximum."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _MaxPool2x2.apply(x)
    top_left, top_right, bottom_left, bottom_right = _quarters(x)
    return torch.maximum(torch.maximum(top_left, top_right), torch.maximum(bottom_left, bottom_right))


def channel_mean_var(x: Tensor, chunk: int = 2 ** 20) -> tuple[Tensor, Tensor]:
    """The mean and the biased variance of every channel of x (B, C, ...) over all other axes, in
    two passes: the mean, then the mean square about it, through a reused buffer of about
    ``chunk`` values (as accurate as the input's precision allows; on CPU several times faster
    than ``torch.var_mean`` over non-trailing axes, and no activation-sized temporary; where
    :func:`gmcnn.native.takes` the input, the compiled kernel, with sums in double)."""
    rows = x.reshape(x.shape[0], x.shape[1], -1)
    if native.takes(rows):
        return native.channel_mean_var(rows)
    mean = rows.mean((0, 2), keepdim=True)
    step = max(1, chunk // (rows.shape[1] * rows.shape[2]))
    buffer = torch.empty_like(rows[:step])
    squares = rows.new_zeros(rows.shape[1])
    for start in range(0, rows.shape[0], step):
        part = rows[start:start + step]
        centred = torch.sub(part, mean, out=buffer[:part.shape[0]])
        squares += centred.square_().sum((0, 2))
    return mean.flatten(), squares / (rows.shape[0] * rows.shape[2])


def _batch_norm_affine(mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None,
                       eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """The training batch norm as a per-channel affine map a x + b of its input: (1 / sqrt(var +
    eps), a = gamma / sqrt(var + eps), b = beta - a mean), gamma = 1 and beta = 0 where None."""
    invstd = torch.rsqrt(var + eps)
    scale = invstd if weight is None else invstd * weight
    shift = -mean * scale if bias is None else bias - mean * scale
    return invstd, scale, shift


def _batch_norm_input_grad(scale: Tensor, invstd: Tensor, mean: Tensor, sum_g: Tensor,
                           sum_g_xhat: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """(k, k') of the batch norm's input gradient dx = a g + k x + k' per channel, from the
    channel sums of the output gradient g and of g xhat over ``count`` values."""
    k_x = -scale * invstd * sum_g_xhat / count
    return k_x, -scale * sum_g / count - k_x * mean


class _BatchNormMaxPool2x2(torch.autograd.Function):
    """max_pool2d(batch_norm(h), 2) with batch statistics, per channel c of C over the
    (B, C, P, H, W) view of h (B, C P, H, W), without the normalised h, and a ReLU after it if
    ``relu``: with a_c = gamma_c / sqrt(var_c + eps) and b_c = beta_c - a_c mean_c, a window's
    maximum of a_c h + b_c is a_c h* + b_c, h* its entry maximal in s_c h (s_c the sign of a_c;
    a_c = 0: the first entry, a tie of the whole window). The backward is the batch norm's on the
    scattered gradient: dy is g (where the ReLU passed) at the argmax and 0 elsewhere, so its
    channel sums over dy and dy xhat are quarter-size (h* = s times the saved window maxima of
    s h; gathered from h where some a_c = 0), and dh = a dy + k_c h + k'_c is one pass over h and a
    scatter-add. Where :func:`gmcnn.native.applies`, compiled kernels: the argmax a byte per
    window, the pooled output with its ReLU one pass, and with every a_c > 0 the sums one pass
    and dh one pass (the ReLU's mask recomputed from the window maxima). ``consume``: dh written
    over h, which then must not be read elsewhere; a second backward finds h modified and autograd
    raises."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor | None, bias: Tensor | None, channels: int,
                eps: float, consume: bool, relu: bool) -> tuple[Tensor, Tensor, Tensor]:
        batch = h.shape[0]
        grouped = h.view(batch, channels, -1)
        mean, var = channel_mean_var(grouped)
        invstd, scale, shift = _batch_norm_affine(mean, var, weight, bias, eps)
        positive = bool((scale > 0).all())
        signed = h if positive else (grouped * scale.sign()[:, None]).view_as(h)
        ctx.native = native.applies(signed)       # index: the argmax's offset code (uint8)
        values, index = (native.max_pool2x2 if ctx.native else _max_pool2x2_with_index)(signed)
        if ctx.native and relu:
            out = native.batch_norm_relu(values.view(batch, channels, -1), scale.abs(), shift).view_as(values)
        else:
            points = h.shape[1] // channels
            out = torch.addcmul(shift.repeat_interleave(points)[:, None, None], values,
                                scale.abs().repeat_interleave(points)[:, None, None])
            if relu:
                out = out.relu_()
        ctx.save_for_backward(h, index, values, mean, invstd, scale, shift, out if relu else None)
        ctx.channels, ctx.affine, ctx.consume = channels, (weight is not None, bias is not None), consume
        ctx.positive, ctx.relu = positive, relu
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor, _grad_mean: Tensor, _grad_var: Tensor):
        h, index, values, mean, invstd, scale, shift, out = ctx.saved_tensors
        batch, channels = h.shape[0], ctx.channels
        grouped = h.view(batch, channels, -1)
        count = grouped.shape[0] * grouped.shape[2]
        masked_here = ctx.native and ctx.positive and ctx.relu    # the kernels apply the ReLU's mask
        if masked_here:
            sum_g, sum_g_centred = native.batch_norm_relu_sums(
                grad.reshape(batch, channels, -1), values.view(batch, channels, -1), scale, shift, mean)
            sum_g_xhat = sum_g_centred * invstd
        else:
            if ctx.relu:
                grad = torch.ops.aten.threshold_backward(grad, out, 0)
            at_max = values.view(batch, channels, -1)              # max of s h = s h*, s = +-1
            if not ctx.positive:
                if (scale == 0).any():     # a window's tie: h* is its first entry, not 0 s
                    flat = _index_from_code(index, h.shape[-1]) if ctx.native else index
                    at_max = h.flatten(-2).gather(-1, flat.flatten(-2)).view(batch, channels, -1)
                else:
                    at_max = at_max * scale.sign()[:, None]
            g = grad.reshape(batch, channels, -1)
            sum_g = g.sum((0, 2))
            sum_g_xhat = ((at_max * g).sum((0, 2)) - mean * sum_g) * invstd
        k_h, k_0 = _batch_norm_input_grad(scale, invstd, mean, sum_g, sum_g_xhat, count)
        has_weight, has_bias = ctx.affine
        if ctx.native:
            grad_h = native.batch_norm_unpool2x2_(h if ctx.consume else h.clone(), grad, index, k_0, k_h,
                                                  scale, channels, values if masked_here else None,
                                                  scale.abs(), shift)
        else:
            grad_h = torch.addcmul(k_0[:, None], grouped, k_h[:, None], out=grouped if ctx.consume else None)
            grad_h.view(h.shape[0], h.shape[1], -1).scatter_add_(
                -1, index.flatten(-2), (grad.reshape(batch, channels, -1) * scale[:, None]).view(
                    index.shape[0], index.shape[1], -1))
        return (grad_h.view_as(h), sum_g_xhat if has_weight else None, sum_g if has_bias else None,
                None, None, None, None)


def batch_norm_max_pool2x2(h: Tensor, weight: Tensor | None, bias: Tensor | None, channels: int,
                           eps: float, consume: bool = False,
                           relu: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """``F.max_pool2d(batch_norm(h), 2)`` (``relu``: then a ReLU) with the batch statistics of each
    of ``channels`` channels over the (B, channels, P, H, W) view of h (B, channels P, H, W) (even
    H, W) and the affine ``weight`` / ``bias`` (or None), and those statistics: (pooled, mean,
    biased variance). The same values, and the gradients of F.max_pool2d after the batch norm (a
    window's gradient to the first of tied maxima), without the normalised h
    (:class:`_BatchNormMaxPool2x2`; once differentiable). ``consume``: the backward writes h's
    gradient over h (no new buffer; for an h that nothing else reads, such as a convolution's
    output; a second backward raises)."""
    return _BatchNormMaxPool2x2.apply(h, weight, bias, channels, eps, consume, relu)


class _BatchNormReLU(torch.autograd.Function):
    """relu(batch_norm(x)) with batch statistics per channel of x (B, C, L), by the compiled
    kernels (:func:`gmcnn.native.takes` x): with a_c = gamma_c / sqrt(var_c + eps) and
    b_c = beta_c - a_c mean_c, y = relu(a_c x + b_c) in one pass; the backward, with g the output
    gradient where a x + b > 0 (recomputed from x, so that only x is saved) and
    xhat = (x - mean) / sqrt(var + eps), is the batch norm's: dgamma = sum g xhat, dbeta = sum g
    (one pass), dx = a g + k_c x + k'_c (one pass, written over x: ``consume``, as
    :class:`_BatchNormMaxPool2x2`)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                consume: bool) -> tuple[Tensor, Tensor, Tensor]:
        mean, var = channel_mean_var(x)
        invstd, scale, shift = _batch_norm_affine(mean, var, weight, bias, eps)
        ctx.save_for_backward(x, mean, invstd, scale, shift)
        ctx.affine, ctx.consume = (weight is not None, bias is not None), consume
        ctx.mark_non_differentiable(mean, var)
        return native.batch_norm_relu(x, scale, shift), mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor, _grad_mean: Tensor, _grad_var: Tensor):
        x, mean, invstd, scale, shift = ctx.saved_tensors
        count = x.shape[0] * x.shape[2]
        sum_g, sum_g_centred = native.batch_norm_relu_sums(grad, x, scale, shift, mean)
        sum_g_xhat = sum_g_centred * invstd
        k_x, k_0 = _batch_norm_input_grad(scale, invstd, mean, sum_g, sum_g_xhat, count)
        grad_x = native.batch_norm_relu_backward_(x if ctx.consume else x.clone(), grad, scale, shift,
                                                  k_x, k_0)
        has_weight, has_bias = ctx.affine
        return grad_x, sum_g_xhat if has_weight else None, sum_g if has_bias else None, None, None


def batch_norm_relu(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                    consume: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """``relu(F.batch_norm(x, None, None, weight, bias, True, 0, eps))`` of x (B, C, L) where
    :func:`gmcnn.native.takes` x, and the batch statistics: (output, mean, biased variance); once
    differentiable, the gradients of that composition (:class:`_BatchNormReLU`). ``consume``: the
    backward writes x's gradient over x (for an x nothing else reads; a second backward raises)."""
    return _BatchNormReLU.apply(x, weight, bias, eps, consume)


class _PointMaxMean(torch.autograd.Function):
    """``x.unflatten(-1, (points, -1)).amax(-2).mean(-1)`` of x (B, C, points P) by the compiled
    kernels (:func:`gmcnn.native.takes` x): one pass each way, amax's gradient (shared equally by
    tied maxima)."""

    @staticmethod
    def forward(ctx, x: Tensor, points: int) -> Tensor:
        ctx.save_for_backward(x)
        ctx.points = points
        return native.point_max_mean(x, points)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        return native.point_max_mean_backward(x, grad, ctx.points), None


def point_max_mean(x: Tensor, points: int) -> Tensor:
    """``x.unflatten(-1, (points, -1)).amax(-2).mean(-1)`` of x (B, C, points P) where
    :func:`gmcnn.native.takes` x, by the compiled kernels (:class:`_PointMaxMean`)."""
    return _PointMaxMean.apply(x, points)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def circular_gm_conv(x: Tensor, weight: Tensor, axes: tuple[int, ...], t: int,
                     bias: Tensor | None = None) -> Tensor:
    """GM convolution on C_n1 x ... x C_nd (d <= 3) with the radius-t neighbourhood, computed as
    a circular convolution: y(a) = sum_e w(e) x(a - e), i.e. cross-correlation with the flipped
    kernel. Same arguments and result as :func:`gm_conv`."""
    batch, out_channels = x.shape[0], weight.shape[0]
    if weight.shape[1] == 1:
        x = x.sum(1, keepdim=True)
    d, width = len(axes), 2 * t + 1
    kernel = weight.reshape(out_channels, weight.shape[1], *(width,) * d).flip(list(range(2, 2 + d)))
    padded = F.pad(x.reshape(batch, x.shape[1], *axes), (t,) * (2 * d), mode="circular")
    return _CONV[d](padded, kernel, bias).reshape(batch, out_channels, -1)


def group_matrix_index(group: FiniteGroup) -> Tensor:
    """``index[i, j] = g_i^-1 g_j`` (N x N), so that GM(w)[i, j] = w[index[i, j]]."""
    positions = np.arange(group.order)
    return torch.as_tensor(group.multiply(group.inverse[positions][:, None], positions[None, :]))


def gm_linear(x: Tensor, weight: Tensor, index: Tensor, bias: Tensor | None = None) -> Tensor:
    """Full-support group-matrix layer y = GM(w) x, built as an explicit N x N matrix per channel
    pair: ``y[b, o, u] = sum_{c, m} w[o, c, u^-1 m] x[b, c, m]``.

    x: (B, C, N); weight: (O, C', N) (C' = 1: shared mode on the channel sum); index from
    :func:`group_matrix_index`. Returns (B, O, N).
    """
    if weight.shape[1] == 1:
        x = x.sum(1, keepdim=True)
    matrices = weight[:, :, index]  # (O, C', N, N)
    y = torch.einsum("ocum,bcm->bou", matrices, x)
    return y if bias is None else y + bias[:, None]
