"""The fused kernels of gmcnn.fused against the composition of the modules they replace."""

import pytest
import torch
import torch.nn.functional as F

from gmcnn.functional import conv_index, gather_taps, gram_plan
from gmcnn.fused import gm_conv_norm_prelu, gm_residual_block_max, gm_two_blocks_max
from gmcnn.groups import make_group
from gmcnn.models import GMCNN
from gmcnn.nn import GMConv, PointwiseConv

# (group, PReLU weight, input offset): a negative and a unit slope, and inputs whose mean is large
# against their spread (the variance must not cancel)
CASES = [(["C8", "C6"], 0.25, 0.0), ("D5", -0.3, 50.0), ("S4", 1.0, 3.0)]


def composed(conv, x, slope):
    return F.prelu(F.layer_norm(conv(x), (conv.out_channels, conv.group.order)), slope)


def assert_same_function(fused, reference, inputs):
    """Equal values and equal gradients for every input, in float64."""
    out, ref = fused(*inputs), reference(*inputs)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(out, inputs, grad),
                         torch.autograd.grad(ref, inputs, grad)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def layer_and_inputs(group, slope, offset, in_channels, bias=True):
    torch.manual_seed(0)
    conv = GMConv(group, in_channels, 6, t=1, bias=bias).double()
    x = (torch.randn(3, in_channels, conv.group.order, dtype=torch.double) + offset)
    a = torch.tensor([slope], dtype=torch.double)
    params = [x, conv.weight, a] + ([conv.bias] if bias else [])
    for p in params:
        p.requires_grad_(True)
    return conv, x, a


@pytest.mark.parametrize("group,slope,offset", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_norm_prelu_equals_composition(group, slope, offset, bias):
    conv, x, a = layer_and_inputs(group, slope, offset, 4, bias)
    inputs = (x, conv.weight, a) + ((conv.bias,) if bias else ())

    def fused(x, w, a, b=None):
        return gm_conv_norm_prelu(x, w, b, a, conv.index, conv.inverse_index,
                                  gram_plan=conv.gram_plan)

    assert_same_function(fused, lambda x, w, a, b=None: composed(conv, x, a), inputs)


@pytest.mark.parametrize("group,slope,offset", CASES)
def test_residual_block_max_equals_composition(group, slope, offset):
    conv, x, a = layer_and_inputs(group, slope, offset, 6)

    def fused(x, w, b, a):
        return gm_residual_block_max(x, w, b, a, conv.index, conv.inverse_index,
                                     gram_plan=conv.gram_plan)

    assert_same_function(fused, lambda x, w, b, a: (x + composed(conv, x, a)).amax(-1),
                         (x, conv.weight, conv.bias, a))


def two_blocks_and_inputs(group, slope, offset, pointwise, bias):
    """Two one-layer blocks of 5 channels on a 4-channel (pointwise shortcut) or 5-channel input."""
    conv, x, a = layer_and_inputs(group, slope, offset, 4 if pointwise else 5, bias)
    first = GMConv(group, x.shape[1], 5, t=1, bias=bias).double()
    second = GMConv(group, 5, 5, t=1, bias=bias).double()
    shortcut = PointwiseConv(4, 5, bias=bias).double() if pointwise else None
    modules = [first, shortcut, second]
    params = [p.requires_grad_(True) for m in modules if m is not None for p in m.parameters()]

    def fused(x, a, *_):
        return gm_two_blocks_max(x, first.weight, first.bias,
                                 shortcut.weight if pointwise else None,
                                 shortcut.bias if pointwise else None, second.weight,
                                 second.bias, a, conv.index, conv.inverse_index,
                                 gram_plan=conv.gram_plan)

    def reference(x, a, *_):
        r = composed(first, x, a) + (shortcut(x) if pointwise else x)
        return (r + composed(second, r, a)).amax(-1)

    return fused, reference, (x, a, *params)


@pytest.mark.parametrize("group,slope,offset", CASES)
@pytest.mark.parametrize("pointwise", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_two_blocks_max_equals_composition(group, slope, offset, pointwise, bias):
    fused, reference, inputs = two_blocks_and_inputs(group, slope, offset, pointwise, bias)
    assert_same_function(fused, reference, inputs)


@pytest.mark.parametrize("group,t,anchors", [(["C32", "C32"], 3, 4), (["D8", "D8"], 2, 4),
                                             ("D5", 1, 2), ("S4", 1, 4), (["C8", "C6"], 1, 4)])
def test_gram_plan_gives_the_gram_matrix(group, t, anchors):
    """<g_k, g_l> of the gathered taps from the K x A inner products with the anchor taps."""
    group = make_group(group)
    neighbourhood = group.neighbourhood(t)
    anchor_taps, pairs = gram_plan(group, neighbourhood)
    assert len(anchor_taps) == anchors and pairs.shape == (len(neighbourhood),) * 2
    g = gather_taps(torch.randn(3, group.order, dtype=torch.double),
                    conv_index(group, neighbourhood))
    products = (g @ g[:, anchor_taps].transpose(1, 2)).flatten(1)
    torch.testing.assert_close(products[:, pairs], g @ g.transpose(1, 2), rtol=1e-12, atol=1e-12)


def test_fused_functions_pass_gradcheck():
    conv, x, a = layer_and_inputs("D3", 0.2, 1.0, 6)
    index, inverse = conv.index, conv.inverse_index
    args = (x, conv.weight, conv.bias, a)
    assert torch.autograd.gradcheck(
        lambda x, w, b, a: gm_conv_norm_prelu(x, w, b, a, index, inverse), args)
    assert torch.autograd.gradcheck(
        lambda x, w, b, a: gm_residual_block_max(x, w, b, a, index, inverse), args)
    for pointwise in (True, False):
        fused, _, inputs = two_blocks_and_inputs("D3", 0.2, 1.0, pointwise, True)
        assert torch.autograd.gradcheck(fused, inputs)


def test_fused_functions_reject_what_they_do_not_compute():
    full = GMConv("C5", 2, 2, t=1, channel_mode="full")
    x = torch.randn(1, 2, 5)
    with pytest.raises(ValueError, match="shared channel mode"):
        gm_conv_norm_prelu(x, full.weight, full.bias, torch.ones(1), full.index, full.inverse_index)
    conv = GMConv("C5", 2, 3, t=1)
    with pytest.raises(ValueError, match="identity shortcut"):
        gm_residual_block_max(x, conv.weight, conv.bias, torch.ones(1), conv.index,
                              conv.inverse_index)
    with pytest.raises(ValueError, match="identity shortcut"):
        gm_two_blocks_max(x, conv.weight, conv.bias, None, None, conv.weight, conv.bias,
                          torch.ones(1), conv.index, conv.inverse_index)


@pytest.mark.parametrize("options", [dict(), dict(rank=1), dict(blocks=3),
                                     dict(blocks=3, layers_per_block=2), dict(blocks=1),
                                     dict(blocks=1, channels=2)])
def test_fused_model_equals_composed_model(options):
    """GMCNN(fused=True) computes what GMCNN(fused=False) does, logits and every gradient (the
    images' too), whether the last two blocks, the last one (blocks=1 with as many channels as
    inputs) or none (relaxed layers, a 1x1 shortcut in the last block) run fused with the max."""
    models = []
    for fused in (True, False):
        torch.manual_seed(0)
        models.append(GMCNN(["C6", "C6"], 2, 3, t=1, fused=fused,
                            **{"channels": 5, **options}).double())
    images = torch.randn(4, 2, 6, 6, dtype=torch.double)
    inputs = [images.clone().requires_grad_(True) for _ in models]
    outputs = [m(x) for m, x in zip(models, inputs)]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-10, atol=1e-10)
    for out in outputs:
        out.square().sum().backward()
    torch.testing.assert_close(inputs[0].grad, inputs[1].grad, rtol=1e-8, atol=1e-10)
    for (name, p), q in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-10, msg=name)


@pytest.mark.parametrize("in_channels", [3, 20])  # bias folded into the matmul, or added
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_add_to_equals_adding_its_output(in_channels, bias):
    torch.manual_seed(0)
    shortcut = PointwiseConv(in_channels, 5, bias=bias).double()
    x = torch.randn(2, in_channels, 7, dtype=torch.double, requires_grad=True)
    y = torch.randn(2, 5, 7, dtype=torch.double, requires_grad=True)
    inputs = (x, y, *shortcut.parameters())
    assert_same_function(lambda x, y, *_: shortcut.add_to(y * 1, x),
                         lambda x, y, *_: y + shortcut(x), inputs)
