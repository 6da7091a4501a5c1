"""Network blocks that own their fast path (docs/design.md §3).

A block holds its reference computation (the composition of its modules) and the kernel that
computes the same function side by side in its ``forward``, behind one check of the block
itself, ``fast_path(x)``: the name of the fast path that computes exactly this block on this
input, or None for the reference. The check inspects the actual modules (the layer's type,
channel mode, relaxation, backend and index; the norm's type, shape and affine parameters; the
activation's type and parameter count; the shortcut's type) and the runtime: float32 / float64
input and parameters, no autocast (the kernels are not written for reduced precision), not under
torch.compile (which fuses the reference itself). The kernels are once-differentiable autograd
Functions with a hand-derived backward: a double backward through them raises, and needs
``fused=False``. So a change to a block that its kernel does not implement (a
SiLU for the PReLU, an affine norm, a vector-field lifting, another shortcut) takes the
reference path.
``fused=False`` (a block's flag, or :func:`set_fast_path` for a whole model) forces the reference.

* :class:`ConvNormAct` ``(layer, activation, norm="layer")``: activation(norm(layer(x))) with
  norm the LayerNorm over (C, N) without affine (GM-CNN) or None (GMDynamics). Fast paths:
  ``"conv_norm_prelu"`` (exact shared-mode gather GMConv, that LayerNorm, a one-slope PReLU: the
  whole block as :func:`gmcnn.fused.gm_conv_norm_prelu`), ``"lifting_norm_prelu"`` (the same
  after an exact scalar gather :class:`~gmcnn.nn.lifting.GMLifting` with a one-input-channel
  weight, which is the GM convolution on G of the pulled-back channel sum) and ``"profiled"`` (a relaxed
  shared-mode gather GMConv: its (1 + r) GM products from one gather,
  :meth:`~gmcnn.nn.conv.GMConv.profiled_product`; the norm by its module, a one-slope PReLU as
  :func:`gmcnn.fused.prelu`, another activation by its module).
* :class:`ResidualBlock` ``(layers, shortcut=None)``: layers(x) + shortcut(x), the shortcut the
  identity or a :class:`~gmcnn.nn.pointwise.PointwiseConv`. Fast path ``"add_in_place"`` (the
  shortcut accumulates into the last layer's output when that is a PReLU's, whose backward does
  not read its output: one activation-sized buffer less).
* :class:`ResidualStream` ``(lift, blocks, project)``: project(blocks(lift(x))), the GMDynamics
  body. Fast paths (every block one shared-mode gather GMConv, exact or relaxed, no norm, a
  one-slope PReLU and an identity shortcut; a PointwiseConv projection; the whole as
  :func:`gmcnn.fused.gm_residual_stream`, which never materialises the stream):
  ``"residual_stream"`` (a PointwiseConv lift, folded in, or any other lift but a GMLifting, run
  first by its own forward) and ``"lifting_stream"`` (a :class:`~gmcnn.nn.lifting.GMLifting`
  onto the stream, any field, channel mode, backend or relaxation: the stream kernel reads only
  t_0 = A lift(x), A = [1^T; W_out], so A is folded into the lifting's weight sets and t_0 is one
  conv2d of the grid input with 1 + F output channels per point of H
  (:meth:`~gmcnn.nn.lifting.GMLifting.conv2d`) instead of the lifting's C; the relaxation's
  profiles and the bias are applied to those 1 + F rows).
* :class:`GlobalMaxTail` ``(blocks)``: max over positions of the last one or two residual blocks'
  output, (B, C, N) -> (B, C). Fast paths: ``"two_blocks_max"`` (two one-layer blocks whose
  layers take ``"conv_norm_prelu"``, share the index, the PReLU slope and the eps, an identity or
  1x1 shortcut then an identity: :func:`gmcnn.fused.gm_two_blocks_max`) and ``"block_max"`` (the
  last such block with an identity shortcut: :func:`gmcnn.fused.gm_residual_block_max`).

* :class:`ImageGridStages` ``(*stages)``: the stages of a GM-CNN on p4 / p4m before its readout,
  applied in sequence, (B, C, |G|) -> (B, C', |G'|). Fast path ``"image_grid"`` (every stage a
  ConvNormAct of a conv-backend GMLifting / GMConv on a wallpaper group, exact, with a BatchNorm1d
  or no norm; a GMPool whose cosets are the 2 x 2 windows of every (channel, point) image
  (:func:`gmcnn.nn.pool.windows_of_images`) in max mode; a ResidualBlock of such layers with an
  identity or PointwiseConv shortcut): functions on G stay in the layout the vendor convolution
  reads, (B, C |H|, n, n) as a view; the dense kernels come from index buffers (an index_select,
  whose backward is an index_add); the boundary is conv2d's own zero padding or one circular pad
  per convolution (:func:`gmcnn.functional.circular_pad2d`, whose backward adds the wrapped
  strips); the pooling is :func:`gmcnn.functional.max_pool2x2` (F.max_pool2d's values and
  gradient from the four strided sub-images); a ReLU right before a pooling runs after it (max
  and ReLU commute: a quarter of the work), any other ReLU in place; and in eval mode the
  BatchNorm's running statistics are folded into the kernel and bias (one pass over the
  activations less). A BatchNorm with batch statistics (train mode) right before a ReLU and a
  pooling is normalised and pooled in one kernel, :func:`gmcnn.functional.batch_norm_max_pool2x2`
  (the per-channel affine map a h + b pooled as a max of s h, s the sign of a: the normalised
  activations are never written, the backward is one pass over h and a scatter-add), with the
  module's running-statistics update; unless the norm has hooks (precise_bn's), then the module
  runs. Plain torch ops, so it also runs under autocast (float16 / bfloat16; the batch norm then
  by its module), where the reference would too. The pooling sends a window's gradient to the first of tied maxima
  where the reference's amax splits it among them: the same function, and the same gradients
  wherever a window's maximum is unique (after a ReLU, ties at zero get no gradient either way).
  The circular pad and the pooling are once-differentiable Functions (``fused=False`` for a
  double backward).

A layer is anything with the GroupMatrixLayer interface: ``in_channels``, ``out_channels``,
``weight``, ``bias``, ``in_space``, ``out_space`` and ``forward`` (B, C, N_in) -> (B, O, N_out);
only GMConv and GMLifting themselves (``type(layer) is GMConv``, not a subclass) have fast paths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gmcnn import functional as GF
from gmcnn import fused as kernels
from gmcnn import native
from gmcnn.groups import WallpaperGroup
from gmcnn.nn.conv import GMConv
from gmcnn.nn.lifting import GMLifting, conv2d_on_grid, group_kernel
from gmcnn.nn.pointwise import PointwiseConv
from gmcnn.nn.pool import GMPool
from gmcnn.spaces import num_points

KERNEL_DTYPES = (torch.float32, torch.float64)


def runtime_allows_fast_path(x: Tensor, parameters: Sequence[Tensor]) -> bool:
    """Whether the kernels may run now on x with these parameters (see the module docstring)."""
    return (x.dtype in KERNEL_DTYPES and all(p.dtype == x.dtype for p in parameters)
            and not torch.is_autocast_enabled(x.device.type)
            and not torch.compiler.is_compiling())


class FastPathModule(nn.Module):
    """A block with a fast path next to its reference; ``fused`` False forces the reference."""

    fused: bool = True

    def fast_path(self, x: Tensor) -> str | None:
        """The name of the fast path that computes this block on ``x``, or None."""
        raise NotImplementedError


def set_fast_path(module: nn.Module, enabled: bool) -> None:
    """Set the ``fused`` flag of every block inside ``module``."""
    for block in module.modules():
        if isinstance(block, FastPathModule):
            block.fused = bool(enabled)


class FusedFlag:
    """Models: ``model.fused`` reads the flag, and setting it sets every block's."""

    @property
    def fused(self) -> bool:
        return self._fused

    @fused.setter
    def fused(self, enabled: bool) -> None:
        self._fused = bool(enabled)
        set_fast_path(self, enabled)


def layer_norm_over(layer: nn.Module) -> nn.LayerNorm:
    """LayerNorm over all (C, N) entries of the layer's output, without affine parameters."""
    return nn.LayerNorm((layer.out_channels, num_points(layer.out_space)),
                        elementwise_affine=False)


class ConvNormAct(FastPathModule):
    """activation(norm(layer(x))): (B, C, N_in) -> (B, O, N_out). ``norm`` "layer" (default)
    is :func:`layer_norm_over` the layer, None none, or any module."""

    def __init__(self, layer: nn.Module, activation: nn.Module,
                 norm: nn.Module | str | None = "layer", fused: bool = True):
        super().__init__()
        if isinstance(norm, str) and norm != "layer":
            raise ValueError(f"norm must be 'layer', None or a module, got {norm!r}")
        self.conv = layer
        self.norm = layer_norm_over(layer) if norm == "layer" else norm
        self.activation = activation
        self.fused = fused

    def _plain_layer_norm(self) -> bool:
        norm, conv = self.norm, self.conv
        return (type(norm) is nn.LayerNorm and norm.weight is None and norm.bias is None
                and tuple(norm.normalized_shape) == (conv.out_channels, conv.group.order))

    def fast_path(self, x: Tensor) -> str | None:
        return self.path_for(x)

    def path_for(self, x: Tensor) -> str | None:
        """The check behind ``fast_path`` (GlobalMaxTail asks it about its layers directly)."""
        conv = self.conv
        if not (self.fused and x.dim() == 3 and runtime_allows_fast_path(x, list(self.parameters()))):
            return None
        if self.is_shared_gather_conv(x):
            if conv.relaxation is not None:
                return "profiled"
            return "conv_norm_prelu" if self._norm_prelu_fusable() else None
        if (type(conv) is GMLifting and conv.field == "scalar" and conv.backend == "gather"
                and conv.relaxation is None and conv.weight.shape[1] == 1
                and tuple(x.shape[1:]) == (conv.in_channels, conv.group.n ** 2)
                and self._norm_prelu_fusable()):
            return "lifting_norm_prelu"
        return None

    def is_shared_gather_conv(self, x: Tensor) -> bool:
        """The layer is a shared-mode gather-backend GMConv (exactly that type) on inputs like x."""
        conv = self.conv
        return (type(conv) is GMConv and conv.channel_mode == "shared" and conv.backend == "gather"
                and tuple(x.shape[1:]) == (conv.in_channels, conv.group.order))

    def _norm_prelu_fusable(self) -> bool:
        """The norm and activation that the conv_norm_prelu kernel computes, after a layer of a
        shared-mode weight (O, 1, K)."""
        conv = self.conv
        return (self._plain_layer_norm() and type(self.activation) is nn.PReLU
                and self.activation.weight.numel() == 1
                and tuple(conv.weight.shape) == (conv.out_channels, 1, conv.index.shape[0]))

    def forward(self, x: Tensor) -> Tensor:
        path = self.fast_path(x)
        conv = self.conv
        if path == "lifting_norm_prelu":   # a GM convolution of the pulled-back channel sum
            path, x = "conv_norm_prelu", conv.pullback(x.sum(1, keepdim=True))
        if path == "conv_norm_prelu":
            return kernels.gm_conv_norm_prelu(x, conv.weight, conv.bias, self.activation.weight,
                                              conv.index, conv.inverse_index, self.norm.eps,
                                              conv.gram_plan)
        h = conv(x) if path is None else conv.profiled_product(x)
        h = h if self.norm is None else self.norm(h)
        if path == "profiled" and type(self.activation) is nn.PReLU and self.activation.weight.numel() == 1:
            return kernels.prelu(h, self.activation.weight)
        return self.activation(h)


class ResidualBlock(FastPathModule):
    """layers(x) + shortcut(x); ``shortcut`` None is the identity."""

    def __init__(self, layers: Sequence[nn.Module], shortcut: nn.Module | None = None,
                 fused: bool = True):
        super().__init__()
        if not layers:
            raise ValueError("a residual block needs at least one layer")
        self.layers = nn.ModuleList(layers)
        self.shortcut = nn.Identity() if shortcut is None else shortcut
        self.fused = fused

    def fast_path(self, x: Tensor) -> str | None:
        last = self.layers[-1]
        if (self.fused and type(self.shortcut) in (nn.Identity, PointwiseConv)
                and isinstance(last, ConvNormAct) and type(last.activation) is nn.PReLU
                and runtime_allows_fast_path(x, [])):
            return "add_in_place"
        return None

    def forward(self, x: Tensor) -> Tensor:
        path = self.fast_path(x)
        out = x
        for layer in self.layers:
            out = layer(out)
        if path == "add_in_place":
            if isinstance(self.shortcut, PointwiseConv):
                return self.shortcut.add_to(out, x)
            return out.add_(x)
        return out + self.shortcut(x)


class ResidualStream(FastPathModule):
    """project(blocks(lift(x))): residual blocks between a lift (``None``: the identity) and a
    projection, (B, C_in, N_in) -> (B, F, N)."""

    def __init__(self, lift: nn.Module | None, blocks: Sequence[nn.Module], project: nn.Module,
                 fused: bool = True):
        super().__init__()
        self.lift = nn.Identity() if lift is None else lift
        self.blocks = nn.Sequential(*blocks)
        self.project = project
        self.fused = fused

    @staticmethod
    def _stream_layer(block: nn.Module, stream: Tensor) -> ConvNormAct | None:
        """The block's layer if the block is x + PReLU(shared-mode gather GMConv(x)), exact or
        relaxed, with one slope and no norm, on a stream like ``stream``."""
        if not (type(block) is ResidualBlock and len(block.layers) == 1
                and type(block.shortcut) is nn.Identity):
            return None
        layer = block.layers[0]
        if (isinstance(layer, ConvNormAct) and layer.fused and layer.norm is None
                and type(layer.activation) is nn.PReLU and layer.activation.weight.numel() == 1
                and layer.is_shared_gather_conv(stream) and layer.conv.out_channels == stream.shape[1]):
            return layer
        return None

    def _lifts_to_grid(self, x: Tensor) -> bool:
        """The lift is a GMLifting (exactly that type) onto the stream's width, x its input."""
        lift = self.lift
        return (type(lift) is GMLifting and lift.out_channels == self.project.weight.shape[1]
                and tuple(x.shape[1:]) == (lift.in_channels, num_points(lift.in_space)))

    def fast_path(self, x: Tensor) -> str | None:
        """x: the input of a pointwise lift or a GMLifting (which the kernel folds in), or the
        stream itself (after the identity or any other lift, which runs by its own forward)."""
        project, folded = self.project, type(self.lift) is PointwiseConv
        if not (self.fused and type(project) is PointwiseConv and x.dim() == 3
                and runtime_allows_fast_path(x, list(self.parameters()))):
            return None
        width = project.weight.shape[1]
        if type(self.lift) is GMLifting:
            if not self._lifts_to_grid(x):
                return None
            path, stream = "lifting_stream", x.new_empty(0, width, self.lift.group.order)
        else:
            if x.shape[1] != (self.lift.weight.shape[1] if folded else width):
                return None
            path, stream = "residual_stream", x.new_empty(0, width, x.shape[-1])
        if all(self._stream_layer(block, stream) is not None for block in self.blocks):
            return path
        return None

    def forward(self, x: Tensor) -> Tensor:
        folded = type(self.lift) in (PointwiseConv, GMLifting)     # folded in on the fast path
        if not folded:
            x = self.lift(x)
        path = self.fast_path(x)
        if path is None:
            return self.project(self.blocks(self.lift(x) if folded else x))
        blocks = [stream_block(block.layers[0].conv, block.layers[0].activation.weight)
                  for block in self.blocks]
        if path == "lifting_stream":
            return kernels.gm_residual_stream(self._lifted_readout(x), None, None, blocks,
                                              self.project.weight, self.project.bias, readout_given=True)
        pointwise = type(self.lift) is PointwiseConv
        return kernels.gm_residual_stream(x, self.lift.weight if pointwise else None,
                                          self.lift.bias if pointwise else None, blocks,
                                          self.project.weight, self.project.bias)

    def _lifted_readout(self, x: Tensor) -> Tensor:
        """t_0 = A lift(x), A = [1^T; W_out]: the lifting's weight sets W_i and profiles P_i
        (exact: W_0 = w, P_0 = 1) give A lift(x) = sum_i P_i o lift_{A W_i}(x) + A b, each
        lift_{A W_i} one conv2d on the grid with 1 + F output channels per point of H
        (:meth:`~gmcnn.nn.lifting.GMLifting.conv2d`) instead of the stream's C."""
        lift, rows = self.lift, kernels.readout_rows(self.project.weight)
        weights, profiles = (lift.weight[:, None], None) if lift.relaxation is None else (
            lift.relaxation.profiled_weights(lift.weight))                  # (C, S, C', K), (S, N)
        folded = torch.einsum("ac,csik->saik", rows, weights).flatten(0, 1)  # (S (1 + F), C', K)
        t0 = lift.conv2d(x, folded, None, fast_pad=True).unflatten(1, (weights.shape[1], -1))
        t0 = t0[:, 0] if profiles is None else torch.einsum("bsan,sn->ban", t0, profiles.to(t0.dtype))
        return t0 if lift.bias is None else t0 + (rows @ lift.bias)[:, None]


def stream_block(conv: GMConv, slope: Tensor) -> kernels.StreamBlock:
    """A shared-mode GMConv and its PReLU slope as the stream kernel's block: the relaxation's
    weight sets and the profiles of those whose profile is not the constant 1 (the relaxation's
    ``constant_profiles`` first rows are), or (exact) the weight as one set without profiles."""
    relaxation = conv.relaxation
    if relaxation is None:
        return kernels.StreamBlock(conv.weight[:, None], None, conv.bias, slope, conv.index, conv.inverse_index)
    weights, profiles = relaxation.profiled_weights(conv.weight)
    return kernels.StreamBlock(weights, profiles[relaxation.constant_profiles:], conv.bias, slope,
                               conv.index, conv.inverse_index)


class GlobalMaxTail(FastPathModule):
    """The last one or two residual blocks and the global max over positions: (B, C, N) ->
    (B, O), ``blocks(x).max(-1)``."""

    def __init__(self, blocks: Sequence[nn.Module], fused: bool = True):
        super().__init__()
        if not 1 <= len(blocks) <= 2:
            raise ValueError(f"the tail takes one or two blocks, got {len(blocks)}")
        self.blocks = nn.ModuleList(blocks)
        self.fused = fused

    @staticmethod
    def _kernel_layer(block: nn.Module, x: Tensor, channels: int | None = None) -> ConvNormAct | None:
        """The block's only layer if it is a ConvNormAct that takes "conv_norm_prelu" on an input
        like x (with ``channels`` channels, if given)."""
        if type(block) is not ResidualBlock or len(block.layers) != 1:
            return None
        layer = block.layers[0]
        if not isinstance(layer, ConvNormAct):
            return None
        probe = x if channels is None else x.new_empty(0, channels, x.shape[-1])
        return layer if layer.path_for(probe) == "conv_norm_prelu" else None

    def fast_path(self, x: Tensor) -> str | None:
        last_block = self.blocks[-1]
        if not (self.fused and x.dim() == 3 and runtime_allows_fast_path(x, [])
                and type(last_block) is ResidualBlock and type(last_block.shortcut) is nn.Identity):
            return None
        if len(self.blocks) == 2:
            first = self._kernel_layer(self.blocks[0], x)
            shortcut = self.blocks[0].shortcut
            if first is not None:
                width = first.conv.out_channels
                second = self._kernel_layer(last_block, x, width)
                if (second is not None and second.conv.out_channels == width
                        and (type(shortcut) is nn.Identity or (
                            type(shortcut) is PointwiseConv
                            and tuple(shortcut.weight.shape) == (width, x.shape[1])))
                        and second.activation.weight is first.activation.weight
                        and second.norm.eps == first.norm.eps
                        and torch.equal(second.conv.index, first.conv.index)):
                    return "two_blocks_max"
        layer = last_block.layers[-1]
        channels = getattr(getattr(layer, "conv", None), "out_channels", None)
        last = self._kernel_layer(last_block, x, channels if len(self.blocks) == 2 else None)
        if last is not None and last.conv.in_channels == last.conv.out_channels:
            return "block_max"
        return None

    def forward(self, x: Tensor) -> Tensor:
        path = self.fast_path(x)
        if path == "two_blocks_max":
            (first,), (second,) = self.blocks[0].layers, self.blocks[1].layers
            shortcut = self.blocks[0].shortcut
            pointwise = isinstance(shortcut, PointwiseConv)
            c1, c2 = first.conv, second.conv
            return kernels.gm_two_blocks_max(
                x, c1.weight, c1.bias, shortcut.weight if pointwise else None,
                shortcut.bias if pointwise else None, c2.weight, c2.bias,
                first.activation.weight, c1.index, c1.inverse_index, first.norm.eps,
                c1.gram_plan)
        for block in self.blocks[:-1]:
            x = block(x)
        if path == "block_max":
            (last,) = self.blocks[-1].layers
            conv = last.conv
            return kernels.gm_residual_block_max(x, conv.weight, conv.bias,
                                                 last.activation.weight, conv.index,
                                                 conv.inverse_index, last.norm.eps,
                                                 conv.gram_plan)
        return self.blocks[-1](x).max(-1).values


class ImageGridStages(FastPathModule, nn.Sequential):
    """Stages applied in sequence (an nn.Sequential: the same state-dict keys), with the fast path
    ``"image_grid"`` of the module docstring."""

    def __init__(self, *stages: nn.Module, fused: bool = True):
        super().__init__(*stages)
        self.fused = fused

    @staticmethod
    def _grid_layer(layer: nn.Module) -> bool:
        """A ConvNormAct that the image-grid path computes: conv-backend scalar lifting or group
        convolution on a wallpaper group, exact, a BatchNorm1d (or no norm), any activation."""
        if type(layer) is not ConvNormAct:
            return False
        conv, norm = layer.conv, layer.norm
        return (type(conv) in (GMLifting, GMConv) and isinstance(conv.group, WallpaperGroup)
                and conv.backend == "conv" and conv.relaxation is None
                and getattr(conv, "field", "scalar") == "scalar"
                and (norm is None or type(norm) is nn.BatchNorm1d))

    def _grid_stage(self, stage: nn.Module) -> bool:
        if type(stage) is GMPool:
            return stage.mode == "max" and stage.image_windows
        if type(stage) is ResidualBlock:
            return (all(self._grid_layer(layer) for layer in stage.layers)
                    and type(stage.shortcut) in (nn.Identity, PointwiseConv))
        return self._grid_layer(stage)

    def fast_path(self, x: Tensor) -> str | None:
        if not (self.fused and len(self) and x.dim() == 3
                and (runtime_allows_fast_path(x, list(self.parameters()))
                     or (torch.is_autocast_enabled(x.device.type) and not torch.compiler.is_compiling()))):
            return None
        first = self[0]
        layer = first.layers[0] if type(first) is ResidualBlock else first
        if not all(self._grid_stage(stage) for stage in self):
            return None
        if type(layer) is ConvNormAct and x.shape[1:] != (layer.conv.in_channels,
                                                          num_points(layer.conv.in_space)):
            return None            # a wrong shape: the reference path raises the layer's error
        return "image_grid"

    def forward(self, x: Tensor) -> Tensor:
        if self.fast_path(x) != "image_grid":
            for stage in self:
                x = stage(x)
            return x
        stages, i = list(self), 0
        while i < len(stages):
            stage = stages[i]
            if type(stage) is GMPool:
                x = max_pool_images(x, stage.group.n)
            elif type(stage) is ResidualBlock:
                out = x
                for layer in stage.layers:
                    out = grid_conv_norm_act(layer, out)
                x = out + stage.shortcut(x)
            elif (type(stage.activation) is nn.ReLU and i + 1 < len(stages)
                    and type(stages[i + 1]) is GMPool):   # max(relu) = relu(max): a quarter of the ReLU
                x = grid_conv_norm_pool_relu(stage, x, stages[i + 1].group.n)
                i += 1
            else:
                x = grid_conv_norm_act(stage, x)
            i += 1
        return x


def max_pool_images(x: Tensor, n: int) -> Tensor:
    """2 x 2 max pooling of every (channel, point) n x n image of x (B, C, |H| n^2), as
    :func:`gmcnn.functional.max_pool2x2` (F.max_pool2d's values; its argmax as three
    quarter-size comparisons)."""
    return GF.max_pool2x2(x.view(x.shape[0], -1, n, n)).reshape(*x.shape[:2], -1)


def batch_statistics_norm(norm: nn.Module | None, x: Tensor) -> bool:
    """The norm is a BatchNorm1d that normalises ``x`` with its batch statistics (train mode, or
    no running statistics), in float32 / float64 without autocast, and without hooks (which
    :func:`gmcnn.training.precise_bn.recalibrate` uses; the fused kernel does not call the module)."""
    return (type(norm) is nn.BatchNorm1d and (norm.training or norm.running_mean is None)
            and runtime_allows_fast_path(x, list(norm.parameters()))
            and not (norm._forward_pre_hooks or norm._forward_hooks
                     or nn.modules.module._global_forward_pre_hooks or nn.modules.module._global_forward_hooks))


def grid_conv_norm_pool_relu(layer: ConvNormAct, x: Tensor, n: int) -> Tensor:
    """relu of the 2 x 2 max pooling of every image of norm(conv(x)) (:class:`ImageGridStages`;
    max and ReLU commute, so the ReLU runs on a quarter of the values): with a batch-statistics
    BatchNorm (:func:`batch_statistics_norm`), pooled, normalised and activated in one Function
    (:func:`gmcnn.functional.batch_norm_max_pool2x2`, which never writes the normalised
    activations and writes the gradient over the convolution's output, which only it reads) and
    the running statistics updated as the module would."""
    norm = layer.norm
    if not (batch_statistics_norm(norm, x) and norm.num_features == layer.conv.out_channels):
        return torch.relu(max_pool_images(grid_conv_norm_act(layer, x, activate=False), n))
    h = grid_conv_norm_act(layer, x, activate=False, normalise=False)
    pooled, mean, var = GF.batch_norm_max_pool2x2(h.view(h.shape[0], -1, n, n), norm.weight, norm.bias,
                                                  norm.num_features, norm.eps, consume=True, relu=True)
    if norm.training and norm.track_running_stats:
        update_running_statistics(norm, mean, var, h.numel() // h.shape[1])
    return pooled.view(*h.shape[:2], -1)


@torch.no_grad()
def update_running_statistics(norm: nn.modules.batchnorm._BatchNorm, mean: Tensor, var: Tensor,
                              count: int) -> None:
    """What a batch-norm module in train mode does to its running statistics with a batch's mean
    and biased variance over ``count`` values per channel: num_batches_tracked + 1, then the
    moving average with factor ``momentum`` (None: the cumulative average, 1 / batches) of the
    mean and the unbiased variance."""
    norm.num_batches_tracked.add_(1)
    factor = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
    norm.running_mean.lerp_(mean.to(norm.running_mean.dtype), factor)
    norm.running_var.lerp_((var * (count / (count - 1))).to(norm.running_var.dtype), factor)


def grid_conv_norm_act(layer: ConvNormAct, x: Tensor, activate: bool = True, normalise: bool = True) -> Tensor:
    """activation(norm(conv(x))) of an image-grid layer (:class:`ImageGridStages`) on
    (B, C, |G|) (``activate`` False: norm(conv(x))): one conv2d on the (B, C' |H|, n, n) view with
    the dense kernels from the layer's index buffer; in eval mode the BatchNorm's running
    statistics folded into kernel and bias; ``normalise`` False: conv(x), the norm left out."""
    conv, norm, activation = layer.conv, layer.norm, layer.activation
    points, t = conv.group.acting.order, conv.t
    if conv.weight.shape[1] == 1:
        x = x.sum(1, keepdim=True)
    if type(conv) is GMLifting:
        kernel = conv.dense_kernel(conv.weight)
    else:
        kernel = group_kernel(conv.weight, conv.dense_index, t, points)
    bias = conv.bias
    if not normalise:
        norm = None
    folded = norm is not None and not norm.training and norm.running_mean is not None
    if folded:      # y = (conv(x) + b - mean) s + beta, s = gamma / sqrt(var + eps)
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        shift = -norm.running_mean * scale if bias is None else (bias - norm.running_mean) * scale
        bias = shift if norm.bias is None else shift + norm.bias
        kernel = kernel * scale.repeat_interleave(points)[:, None, None, None]
    h = conv2d_on_grid(x, kernel, conv.group.n, t, bias, points, conv.boundary, fast_pad=True)
    if (activate and type(activation) is nn.ReLU and batch_statistics_norm(norm, h)
            and norm.num_features == h.shape[1] and native.takes(h)):
        out, mean, var = GF.batch_norm_relu(h, norm.weight, norm.bias, norm.eps, consume=True)
        if norm.training and norm.track_running_stats:
            update_running_statistics(norm, mean, var, h.numel() // h.shape[1])
        return out                       # normalised and activated in one pass (compiled kernels)
    if norm is not None and not folded:
        h = norm(h)
    if not activate:
        return h
    if type(activation) is nn.ReLU:
        return torch.relu_(h)
    return activation(h)
