"""The GM dynamics network's body as one kernel: a residual stream read only by linear maps.

With a pointwise lift (or none), residual blocks of one relaxed shared-mode GM layer and a
one-slope PReLU each (docs/design.md §2.2, §3.2), and a pointwise projection to F channels:

    x_0 = W_in f + b_in 1^T              (x_0 = f without a lift)
    x_l = x_{l-1} + z_l,   z_l = PReLU_{a_l}(h_l),   h_l = [W_l, b_l] q_l      (C x N)
    q_l = [p_l0 o g_l; ..; p_l,R-1 o g_l; 1^T],   g_l[k, u] = s_{l-1}(u e_k^-1),   s = 1^T x
    y   = W_out x_L + b_out 1^T

every reader of the stream is linear: block l + 1 reads its channel sum s_l (shared channel
mode), the projection reads W_out x_L. So with A = [1^T; W_out] ((1 + F) x C) the kernel carries
t_l = A x_l, 1 + F rows instead of the C channels of the stream:

    t_0 = (A W_in) f + A b_in,    t_l = t_{l-1} + A z_l,    s_l = t_l[0],    y = t_L[1:] + b_out,

and the stream itself is never materialised: per block one matmul writes h_l, PReLU writes z_l
and one matmul reads it. Weight sets whose profile is the constant 1 (the exact layer's only
set, the additive relaxation's first) come first and take no profile: q_l = [g_l; p o g_l ..; 1^T]
for the profiled ones, and q_l = [g_l; 1^T] for an exact layer (profiles None). A caller whose
lift is another linear map (the p4 lifting, :class:`gmcnn.nn.blocks.ResidualStream`) folds A
into it and passes t_0 itself (``readout_given``): the kernel then returns its gradient V_0, and
autograd takes it through the caller's t_0 = A lift(f).

Backward, with V_l = [gs_l; gy] the gradient of t_l (gs_l that of s_l; gs_L = 0): the gradient
reaching z_l is A^T V_l, of rank 1 + F over channels. One matmul writes it, the PReLU's
derivative masks it into gh_l, and two matmuls read gh_l: grad [W_l, b_l] = sum_b gh_l q_l^T and
grad q_l = [W_l, b_l]^T gh_l, from which the profiles' gradient and, through the adjoint of the
gather, gs_{l-1} = gs_l + gather^T (sum_i p_li o grad q_li). The slope's gradient
Q = sum_{h <= 0} gz h comes from small matrices: gz . h = <A [W_l, b_l], sum_b V_l q_l^T> and
gh . h = <[W_l, b_l], grad [W_l, b_l]> = P + a Q with P + Q = gz . h, so Q = (gz . h - gh . h) /
(1 - a); near a = 1, where that division loses precision, Q = gz . h - P with P one dot product
(:mod:`gmcnn.fused.prelu`).
The projection's gradient is gy x_L^T = gy x_0^T + sum_l gy z_l^T, the lift's A^T V_0 f^T.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from gmcnn.functional import gather_adjoint, gather_taps
from gmcnn.fused.prelu import prelu_input_grad, slope_grad
from gmcnn.fused.saving import save_by_name, saved_by_name


class StreamBlock(NamedTuple):
    """One residual block's parameters: the layer as ``relaxation.profiled_weights`` gives it
    (weight sets (C, R, 1, K)) and the profiles (R', N) of its last R' sets, R' = R or R - 1,
    the first set's profile then being the constant 1 (an exact layer: its weight as
    (C, 1, 1, K) and profiles None), its bias (C,) or None, the PReLU slope (1,), and the layer's index and
    inverse permutations (K, N)."""
    weight: Tensor
    profiles: Tensor
    bias: Tensor | None
    slope: Tensor
    index: Tensor
    inverse: Tensor


class _Saved(NamedTuple):
    """What one block's backward reads."""
    taps: Tensor        # (B, K, N) g
    profiled: Tensor    # (B, R K + 1, N) q
    h: Tensor           # (B, C, N)
    z: Tensor           # (B, C, N) PReLU(h)


def _weight_and_bias(weight: Tensor, bias: Tensor | None) -> Tensor:
    """[W, b] (C, R K + 1): the weight sets side by side and the bias against q's row of ones."""
    w = weight.reshape(weight.shape[0], -1)
    return torch.cat([w, (w.new_zeros(w.shape[0]) if bias is None else bias)[:, None]], 1)


def readout_rows(project_weight: Tensor) -> Tensor:
    """A = [1^T; W_out] (1 + F, C)."""
    return torch.cat([project_weight.new_ones(1, project_weight.shape[1]), project_weight])


def _profiled_taps(s: Tensor, sets: int, profiles: Tensor | None, index: Tensor) -> tuple[Tensor, Tensor]:
    """g (B, K, N) and q (B, R K + 1, N) = [g (if R' = R - 1); p o g for the R' profiles; 1^T]
    from the channel sum s (B, N), written in place into q."""
    taps = gather_taps(s, index)
    batch, k, n = taps.shape
    plain = sets - (0 if profiles is None else profiles.shape[0])
    profiled = taps.new_empty(batch, sets * k + 1, n)
    if plain:
        profiled[:, :k] = taps
    if plain < sets:
        torch.mul(taps[:, None], profiles[None, :, None],
                  out=profiled[:, plain * k:-1].unflatten(1, (sets - plain, k)))
    profiled[:, -1] = 1
    return taps, profiled


class _ResidualStream(torch.autograd.Function):

    @staticmethod
    def forward(ctx, f: Tensor, lift_weight: Tensor | None, lift_bias: Tensor | None,
                project_weight: Tensor, project_bias: Tensor | None, readout_given: bool,
                *flat: Tensor) -> Tensor:
        blocks = [StreamBlock(*flat[i:i + len(StreamBlock._fields)])
                  for i in range(0, len(flat), len(StreamBlock._fields))]
        batch = f.shape[0]
        rows = readout_rows(project_weight)
        if readout_given:
            t = f                                                              # t_0 = A x_0
        elif lift_weight is None:
            t = torch.matmul(rows, f)                                          # (B, 1 + F, N)
        else:
            lift = _weight_and_bias(lift_weight, lift_bias)
            folded = rows @ lift                                               # [A W_in, A b_in]
            t = torch.baddbmm(folded[:, -1:].expand(batch, -1, f.shape[-1]),
                              folded[:, :-1].expand(batch, -1, -1), f)
        records = {}
        for i, block in enumerate(blocks):
            taps, profiled = _profiled_taps(t[:, 0], block.weight.shape[1], block.profiles, block.index)
            h = torch.bmm(_weight_and_bias(block.weight, block.bias).expand(batch, -1, -1), profiled)
            z = F.prelu(h, block.slope)
            t = torch.baddbmm(t, rows.expand(batch, -1, -1), z)               # t + A z
            records[f"block_{i}"] = _Saved(taps, profiled, h, z)
        save_by_name(ctx, f=None if readout_given else f, lift_weight=lift_weight, lift_bias=lift_bias,
                     project_weight=project_weight, **records,
                     **{f"params_{i}": block for i, block in enumerate(blocks)})
        ctx.num_blocks, ctx.has_project_bias = len(blocks), project_bias is not None
        ctx.readout_given = readout_given
        y = t[:, 1:]
        return y + project_bias[:, None] if project_bias is not None else y.contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):
        saved = saved_by_name(ctx)
        f, project_weight = saved.f, saved.project_weight
        batch, positions = grad_y.shape[0], grad_y.shape[-1]
        rows = readout_rows(project_weight)
        rows_t = rows.T.expand(batch, -1, -1)                                  # A^T
        grad_s = grad_y.new_zeros(batch, 1, positions)
        grad_project = grad_y.new_zeros(project_weight.shape)
        block_grads = []
        for i in reversed(range(ctx.num_blocks)):
            record, block = getattr(saved, f"block_{i}"), getattr(saved, f"params_{i}")
            v = torch.cat([grad_s, grad_y], 1)                                 # (B, 1 + F, N)
            grad_z = torch.bmm(rows_t, v)                                      # (B, C, N)
            a = float(block.slope)  # (a host sync on GPU)
            grad_h = prelu_input_grad(grad_z, record.h, a)
            wb = _weight_and_bias(block.weight, block.bias)
            profiled_t = record.profiled.transpose(1, 2)
            grad_wb = torch.bmm(grad_h, profiled_t).sum(0)                     # (C, R K + 1)
            grad_z_h = ((rows @ wb) * torch.bmm(v, profiled_t).sum(0)).sum()
            grad_slope = slope_grad(grad_z, record.h, a, grad_z_h, (grad_wb * wb).sum())
            grad_project += torch.bmm(grad_y, record.z.transpose(1, 2)).sum(0)
            sets, taps = block.weight.shape[1], block.weight.shape[-1]
            grad_profiled = torch.bmm(wb[:, :-1].T.expand(batch, -1, -1), grad_h)
            grad_profiled = grad_profiled.unflatten(1, (sets, taps))          # (B, R, K, N)
            plain = sets - (0 if block.profiles is None else block.profiles.shape[0])
            grad_taps = grad_profiled[:, 0] if plain else None
            grad_profiles = None
            if plain < sets:
                extra = grad_profiled[:, plain:]                               # (B, R', K, N)
                grad_profiles = torch.stack([(extra[:, i] * record.taps).sum((0, 1))
                                             for i in range(extra.shape[1])])
                for i, profile in enumerate(block.profiles):
                    grad_taps = (extra[:, i] * profile if grad_taps is None
                                 else torch.addcmul(grad_taps, extra[:, i], profile))
            grad_s = grad_s + gather_adjoint(grad_taps, block.inverse)[:, None]
            block_grads[:0] = [grad_wb[:, :-1].reshape(block.weight.shape), grad_profiles,
                               None if block.bias is None else grad_wb[:, -1],
                               grad_slope.reshape(block.slope.shape), None, None]
        v = torch.cat([grad_s, grad_y], 1)                                     # gradient of t_0
        grad_lift_weight = grad_lift_bias = None
        if ctx.readout_given:
            grad_f = v
        elif saved.lift_weight is None:
            grad_f = torch.bmm(rows_t, v)
            grad_project += torch.bmm(grad_y, f.transpose(1, 2)).sum(0)
        else:
            lift_weight, lift_bias = saved.lift_weight, saved.lift_bias
            grad_f = torch.matmul((rows @ lift_weight).T, v)
            v_f, v_sum = torch.bmm(v, f.transpose(1, 2)).sum(0), v.sum((0, 2))  # sum_b V f^T, V 1
            grad_lift_weight = rows.T @ v_f
            grad_project += v_f[1:] @ lift_weight.T
            if lift_bias is not None:
                grad_lift_bias = rows.T @ v_sum
                grad_project += v_sum[1:, None] * lift_bias
        grad_project_bias = grad_y.sum((0, 2)) if ctx.has_project_bias else None
        return (grad_f, grad_lift_weight, grad_lift_bias, grad_project, grad_project_bias, None,
                *block_grads)


def gm_residual_stream(f: Tensor, lift_weight: Tensor | None, lift_bias: Tensor | None,
                       blocks: list[StreamBlock], project_weight: Tensor,
                       project_bias: Tensor | None, readout_given: bool = False) -> Tensor:
    """``project(blocks(lift(f)))`` (module docstring): f (B, C_in, N) with a lift (weight
    (C, C_in), bias (C,) or None), or the stream x_0 (B, C, N) itself (``lift_weight`` None), or
    (``readout_given``) its readout t_0 = [1^T; W_out] x_0 (B, 1 + F, N); blocks as
    :class:`StreamBlock`; project weight (F, C) and bias (F,) or None. Returns (B, F, N). Once
    differentiable."""
    channels = project_weight.shape[1]
    if readout_given:
        if lift_weight is not None or f.shape[1] != 1 + project_weight.shape[0]:
            raise ValueError(f"a given readout t_0 has 1 + {project_weight.shape[0]} rows (the channel sum "
                             f"and the projection) and no lift; got input {tuple(f.shape)}")
    elif (lift_weight is None and f.shape[1] != channels) or (
            lift_weight is not None and tuple(lift_weight.shape) != (channels, f.shape[1])):
        raise ValueError(f"the stream has {channels} channels (the projection's input); got input "
                         f"{tuple(f.shape)} and lift weight "
                         f"{None if lift_weight is None else tuple(lift_weight.shape)}")
    for block in blocks:
        profiled = 0 if block.profiles is None else block.profiles.shape[0]
        if (block.weight.shape[0] != channels or block.weight.shape[2] != 1 or block.slope.numel() != 1
                or block.weight.shape[1] - profiled not in (0, 1)):
            raise ValueError("every block needs a shared-mode weight (C, R, 1, K) over the stream's "
                             f"{channels} channels, R or R - 1 profiles and one PReLU slope; got weight "
                             f"{tuple(block.weight.shape)}, {profiled} profiles and {block.slope.numel()} slopes")
    flat = [tensor for block in blocks for tensor in block]
    return _ResidualStream.apply(f, lift_weight, lift_bias, project_weight, project_bias,
                                 readout_given, *flat)
