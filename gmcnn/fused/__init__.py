"""Fused kernels: autograd Functions with hand-derived backwards that compute exactly what a
composition of modules computes, with fewer passes over activation-sized tensors. The blocks
of :mod:`gmcnn.nn.blocks` call them behind their structural checks.

* :mod:`gmcnn.fused.layer_norm`: GM convolution -> LayerNorm -> PReLU (the GM-CNN layer), the
  last one or two residual blocks with the global max.
* :mod:`gmcnn.fused.stream`: the GM dynamics body, a residual stream of exact or relaxed GM
  layers between pointwise convolutions (or from a given readout of the stream, the p4 / p4m
  lifting folded in by the caller), without materialising the stream.
* :mod:`gmcnn.fused.prelu`: a one-slope PReLU with a faster backward.
"""

from gmcnn.fused.layer_norm import gm_conv_norm_prelu, gm_residual_block_max, gm_two_blocks_max
from gmcnn.fused.prelu import prelu
from gmcnn.fused.stream import StreamBlock, gm_residual_stream, readout_rows

__all__ = ["StreamBlock", "gm_conv_norm_prelu", "gm_residual_block_max", "gm_residual_stream",
           "gm_two_blocks_max", "prelu", "readout_rows"]
