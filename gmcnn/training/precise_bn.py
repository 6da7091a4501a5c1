"""Precise batch norm: running statistics recomputed from the current weights before evaluating.

A batch-norm layer's running mean and variance are a moving average (momentum 0.1) of batch
statistics taken while the weights changed, so in eval mode it normalises with statistics of
weights that are gone: validation accuracy swings from epoch to epoch while training accuracy
rises smoothly. :func:`recalibrate` replaces them, for every layer that tracks running
statistics, by the exact statistics of its inputs over a fixed set of samples, computed with the
current weights: the batch-norm layers in train mode (each batch normalised with its own
statistics, as in training), every other module in eval mode (no dropout), no gradients, and

    running_mean[c] = S1[c] / n,    running_var[c] = (S2[c] - n running_mean[c]^2) / (n - 1)

where S1, S2 are the sums of the layer's inputs x[c] and x[c]^2 over every sample and position, n
their number per channel: the population mean and the unbiased population variance (PyTorch's
convention for running_var), whatever the batch sizes. Each batch contributes its n_b, mean m_b
and variance v_b about m_b, from :func:`gmcnn.functional.channel_mean_var` (the mean, then the
mean square about it: one float32 temporary of x; on CPU several times faster than
``torch.var_mean`` over these axes) in the input's precision (float32, or float32 for a
half-precision input), as S1 += n_b m_b, S2 += n_b (v_b + m_b^2), accumulated in float64; so the
variance carries only the float32 rounding of m_b and v_b (relative ~1e-7), not the cancellation
of float32 sums of x^2, without float64 copies of x and x^2. Under torchrun each process
passes its share of the samples and the sums are all-reduced, so every process ends with the same
statistics. Momentum and num_batches_tracked are left as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from gmcnn.functional import channel_mean_var
from gmcnn.training import distributed


def batch_norm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The batch-norm layers of ``model`` that keep running statistics (used in eval mode)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                forward: Callable[[Tensor, Tensor], object], device: torch.device) -> int:
    """Set the running statistics of ``model``'s batch-norm layers to those of its inputs over
    ``batches`` of (inputs, targets), each passed as ``forward(inputs, targets)``; the number of
    samples (over all processes). The train / eval mode of every module is restored."""
    layers = batch_norm_layers(model)
    sums = {layer: [0.0, 0.0, 0] for layer in layers}  # S1 (C,), S2 (C,), n

    def accumulate(layer: _BatchNorm, args: tuple[Tensor, ...]) -> None:
        x = args[0].detach()
        x = x if x.dtype in (torch.float32, torch.float64) else x.float()
        mean, var = channel_mean_var(x)                               # about the batch mean
        count = x.numel() // x.shape[1]
        mean, var = mean.double(), var.double()
        entry = sums[layer]
        entry[0] = entry[0] + count * mean
        entry[1] = entry[1] + count * (var + mean.square())
        entry[2] += count

    modes = {module: module.training for module in model.modules()}
    handles = [layer.register_forward_pre_hook(accumulate) for layer in layers]
    tracked = [layer.num_batches_tracked.clone() for layer in layers]
    samples = 0
    try:
        model.eval()
        for layer in layers:
            layer.train()
        for inputs, targets in batches:
            forward(inputs, targets)
            samples += len(targets)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    flat = [samples]
    for layer in layers:
        s1, s2, n = sums[layer]
        zeros = [0.0] * layer.num_features
        flat += [n, *(s1.tolist() if n else zeros), *(s2.tolist() if n else zeros)]
    totals = torch.tensor(distributed.all_sum(flat, device), dtype=torch.float64)
    offset = 1
    for layer, count in zip(layers, tracked):
        channels = layer.num_features
        n = totals[offset]
        s1, s2 = totals[offset + 1:offset + 1 + channels], totals[offset + 1 + channels:offset + 1 + 2 * channels]
        offset += 1 + 2 * channels
        if n > 1:  # a layer that saw no input keeps its statistics
            mean = s1 / n
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(((s2 - n * mean.square()) / (n - 1)).clamp_min(0))
        layer.num_batches_tracked.copy_(count)
    return int(totals[0])
