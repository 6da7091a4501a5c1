"""Blocks that own their fast path (gmcnn.nn.blocks): the kernels of gmcnn.fused against the
composition of the modules they replace, every block and every model config through
assert_fast_path_matches_reference, and the rule that sends a changed block to its reference."""


import inspect

import hydra
import pytest
import torch
import torch.nn.functional as F
from omegaconf import open_dict
from torch import nn

from gmcnn.functional import conv_index, gather_taps, gram_plan
from gmcnn.fused import (
    StreamBlock,
    gm_conv_norm_prelu,
    gm_residual_block_max,
    gm_residual_stream,
    gm_two_blocks_max,
    prelu,
    readout_rows,
)
from gmcnn.groups import make_group
from gmcnn.models import GMCNN, GMDynamics
from gmcnn.nn import ConvNormAct, GlobalMaxTail, GMConv, PointwiseConv, ResidualBlock
from gmcnn.nn.blocks import stream_block
from tests.helpers import ROOT, assert_fast_path_matches_reference, compose_config, recorded_fast_paths

# (group, PReLU weight, input offset): a negative and a unit slope, and inputs whose mean is large
# against their spread (the variance must not cancel); C8 x C6 has 9 taps, more than the 5 or 6
# channels of these tests (the backward that folds y in, _fold_y), D5 and S4 have 6 and 4
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


@pytest.mark.parametrize("options,paths", [
    (dict(), {"two_blocks_max"}),
    (dict(rank=1), {"profiled", "add_in_place"}),  # a LayerNorm: not the dynamics block's kernel
    (dict(blocks=3), {"conv_norm_prelu", "add_in_place", "two_blocks_max"}),
    (dict(blocks=3, layers_per_block=2), {"conv_norm_prelu", "add_in_place"}),
    (dict(blocks=1), {"conv_norm_prelu", "add_in_place"}),  # 2 inputs: a 1x1 shortcut
    (dict(blocks=1, channels=2), {"block_max"}),
    (dict(rank=1, relaxation="multiplicative"), {"profiled", "add_in_place"}),
])
def test_model_fast_paths_equal_reference(options, paths):
    """GMCNN with fast paths computes what its reference path does, logits and every gradient
    (the images' too), whether the last two blocks, the last one or none run with the max."""
    model = GMCNN(["C6", "C6"], 2, 3, t=1, **{"channels": 5, **options})
    images = torch.randn(4, 2, 6, 6)
    assert assert_fast_path_matches_reference(model, [images]) == paths


@pytest.mark.parametrize("group,options,paths", [
    ("p4", dict(), {"lifting_norm_prelu", "two_blocks_max"}),      # the paper's model on p4
    ("p4m", dict(in_channels=1), {"lifting_norm_prelu", "two_blocks_max"}),
    ("p4", dict(channel_mode="full"), {"add_in_place"}),           # full mode: a conv lifting
    ("p4", dict(norm="batch"), {"add_in_place"}),
])
def test_lifting_block_fast_path_equals_reference(group, options, paths):
    """The lifting block of a wallpaper-group GM-CNN (scalar, gather, one weight channel) takes
    the conv_norm_prelu kernel on the pulled-back channel sum, with equal logits and gradients
    (the images' too); other liftings and norms take the reference."""
    options = {"in_channels": 2, "t": 1, "lifting_t": 1, "channels": 4, **options}
    model = GMCNN(group, num_classes=3, image_size=6, **options)
    images = torch.randn(3, options["in_channels"], 6, 6)
    assert assert_fast_path_matches_reference(model, [images]) == paths


QUICK_CONFIGS = {("gmcnn", "cifar10"), ("gmcnn", "rot-mnist"), ("gm_dynamics", "plume-rotation"),
                 ("gm_dynamics", "jetflow")}


def model_configs():
    """(model config, experiment) for both GM models on every experiment's symmetry; those
    outside QUICK_CONFIGS are marked slow."""
    exps = sorted(p.stem for p in (ROOT / "configs" / "exp").glob("*.yaml"))
    return [pytest.param(model, exp, marks=() if (model, exp) in QUICK_CONFIGS else pytest.mark.slow)
            for model in ("gmcnn", "gm_dynamics") for exp in exps]


@pytest.mark.parametrize("model_name,exp", model_configs())
def test_every_model_config_fast_path_matches_reference(model_name, exp):
    """Each configs/model/ GM model on each experiment's group (4 channels to stay small)."""
    cfg = compose_config(f"exp={exp}", f"model={model_name}", "++data.num_classes=3")
    accepted = inspect.signature(hydra.utils.get_class(cfg.model._target_)).parameters
    with open_dict(cfg):  # a classification experiment's GMCNN keys (dropout, pool, ...) on GMDynamics
        for key in [k for k in cfg.model if k != "_target_" and k not in accepted]:
            cfg.model.pop(key)
        if "field" in cfg.model and cfg.data.in_channels % 2:  # one image channel is no vector field
            cfg.model.field = "scalar"
    model = hydra.utils.instantiate(cfg.model, channels=4)
    kernels = cfg.model.get("channel_mode", "shared") == "shared"  # full-mode layers have none
    assert_fast_path_matches_reference(model, [model.example_input(2)], require_fast_path=kernels)


def small_model(**options):
    torch.manual_seed(0)
    return GMCNN(["C6", "C6"], 2, 3, t=1, channels=5, **options).double().eval()


def conv_norm_acts(model):
    return [m for m in model.modules() if isinstance(m, ConvNormAct)]


def replace_activation(model):
    for layer in conv_norm_acts(model):
        layer.activation = nn.SiLU()


def replace_norm(model):
    for layer in conv_norm_acts(model):
        layer.norm = nn.LayerNorm(layer.norm.normalized_shape).double()
        nn.init.normal_(layer.norm.weight)


def replace_last_shortcut(model):
    model.tail.blocks[-1].shortcut = PointwiseConv(5, 5).double()


@pytest.mark.parametrize("mutate,still_fast", [(replace_activation, set()), (replace_norm, set()),
                                               (replace_last_shortcut, {"conv_norm_prelu"})])
def test_a_changed_block_changes_the_default_models_output(mutate, still_fast):
    """A change to the blocks' modules that the kernels do not implement takes effect in the
    default (fused) model: its output changes and equals the reference path's (a kernel runs
    only for the unchanged layers)."""
    model, images = small_model(), torch.randn(3, 2, 6, 6, dtype=torch.double)
    before = model(images)
    mutate(model)
    with recorded_fast_paths(model) as taken:
        after = model(images)
    assert {"conv_norm_prelu", "two_blocks_max", "block_max"} & set(taken) == still_fast
    assert (after - before).abs().max() > 1e-3
    model.fused = False
    torch.testing.assert_close(after, model(images), rtol=1e-12, atol=1e-12)


def test_kernels_use_the_norms_eps():
    model = small_model()
    for layer in conv_norm_acts(model):
        layer.norm.eps = 0.5
    paths = assert_fast_path_matches_reference(model, [torch.randn(3, 2, 6, 6)])
    assert paths == {"two_blocks_max"}


def test_two_block_kernel_needs_one_index_and_one_slope():
    """Two layers over different neighbourhoods of the same size, or with their own PReLUs, do
    not run as the two-block kernel (it applies the first layer's index and slope to both)."""
    model = small_model()
    second = model.tail.blocks[1].layers[0]
    group = second.conv.group
    shifted = [int(group.multiply(e, 1)) for e in group.neighbourhood(1)]
    other = GMConv(group, 5, 5, neighbourhood=shifted).double()
    assert other.weight.shape == second.conv.weight.shape
    second.conv = other
    each_block = {"conv_norm_prelu", "add_in_place", "block_max"}
    assert assert_fast_path_matches_reference(model, [torch.randn(3, 2, 6, 6)]) == each_block
    model = small_model()
    model.tail.blocks[1].layers[0].activation = nn.PReLU(init=0.1)
    assert assert_fast_path_matches_reference(model, [torch.randn(3, 2, 6, 6)]) == each_block


class PixelLift(nn.Module):
    """A stand-in for a lifting layer: the GroupMatrixLayer interface from a 4-pixel input
    space to functions on C2 x C4 (each output position reads one pixel), no permutation index."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.in_space, self.out_space = make_group("C4"), make_group("C2xC4")
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels))
        self.bias = nn.Parameter(torch.randn(out_channels))

    def forward(self, x):
        return torch.einsum("oc,bcn->bon", self.weight, x.repeat(1, 1, 2)) + self.bias[:, None]


class GMConvVariant(GMConv):
    """A subclass with its own forward: not what the kernels compute."""

    def forward(self, x):
        return 2 * super().forward(x)


def test_other_layers_take_the_reference_path():
    """A lifting layer (another output space, no permutation index) and a GMConv subclass slot
    into ConvNormAct and run its reference: LayerNorm over their (O, N_out) output."""
    lift = ConvNormAct(PixelLift(3, 4), nn.PReLU())
    x = torch.randn(2, 3, 4)
    assert lift.norm.normalized_shape == (4, 8)
    with recorded_fast_paths(lift) as taken:
        out = lift(x)
    assert taken == [None]
    torch.testing.assert_close(out, F.prelu(F.layer_norm(lift.conv(x), (4, 8)),
                                            lift.activation.weight))
    variant = ConvNormAct(GMConvVariant("C6", 2, 3, t=1), nn.PReLU())
    x = torch.randn(2, 2, 6)
    assert variant.fast_path(x) is None
    torch.testing.assert_close(variant(x), F.prelu(F.layer_norm(2 * variant.conv(x), (3, 6)),
                                                   variant.activation.weight))


def test_autocast_takes_the_reference_path():
    """Under CPU autocast (bfloat16) no kernel runs: the fused model computes exactly what the
    reference path computes under autocast."""
    model, images = small_model().float(), torch.randn(3, 2, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with recorded_fast_paths(model) as taken:
            fast = model(images)
        model.fused = False
        reference = model(images)
    assert set(taken) == {None} and fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast, reference, rtol=0, atol=0)


def test_residual_block_with_an_activation_that_saves_its_output():
    """Tanh's backward reads its output: the shortcut is not added in place there."""
    block = ResidualBlock([ConvNormAct(GMConv("C6", 3, 3, t=1).double(), nn.Tanh())])
    x = torch.randn(2, 3, 6, dtype=torch.double, requires_grad=True)
    assert block.fast_path(x) is None
    assert torch.autograd.gradcheck(block, (x,))


def test_tail_rejects_bad_sizes():
    with pytest.raises(ValueError, match="one or two blocks"):
        GlobalMaxTail([])


@pytest.mark.parametrize("relaxation,rank", [("additive", 1), ("additive", 2),
                                             ("multiplicative", 1)])
@pytest.mark.parametrize("channel_mode", ["shared", "full"])
def test_profiled_product_equals_the_relaxed_layer(relaxation, rank, channel_mode):
    """GMConv.profiled_product (one gather, the profiles on the taps) against the layer's
    forward ((1 + r) O output rows, then combine): values and every gradient."""
    torch.manual_seed(0)
    conv = GMConv("D4xC3", 3, 4, t=1, rank=rank, relaxation=relaxation,
                  channel_mode=channel_mode).double()
    with torch.no_grad():
        for p in conv.relaxation.parameters():
            p.normal_()
    x = torch.randn(2, 3, conv.group.order, dtype=torch.double, requires_grad=True)
    inputs = (x, *conv.parameters())
    assert_same_function(lambda x, *_: conv.profiled_product(x), lambda x, *_: conv(x), inputs)


@pytest.mark.parametrize("slope", [0.25, -0.3, 0.0, 1.0, 1.2])
def test_prelu_equals_aten_prelu(slope):
    h = torch.randn(3, 4, 5, dtype=torch.double, requires_grad=True)
    a = torch.tensor([slope], dtype=torch.double, requires_grad=True)
    assert_same_function(prelu, F.prelu, (h, a))


@pytest.mark.parametrize("options,path", [
    (dict(group=["C8", "C8"]), "residual_stream"),
    (dict(group=["C8", "C8"], rank=0), "residual_stream"),                     # exact blocks
    (dict(group=["C8", "C8"], relaxation="multiplicative"), "residual_stream"),
    (dict(group="p4", image_size=6, field="vector", rank=0), "lifting_stream"),  # GMLifting folded in
    (dict(group="p4", image_size=6, field="vector"), "lifting_stream"),
    (dict(group="p4m", image_size=5, field="vector", rank=2), "lifting_stream"),
    (dict(group="p4", image_size=6, field="vector", relaxation="multiplicative"), "lifting_stream"),
    (dict(group="p4", image_size=6, field="scalar", field_channels=1), "lifting_stream"),
])
def test_dynamics_body_runs_as_one_stream_kernel(options, path):
    """The stream kernel (a pointwise lift folded in, or the p4 / p4m lifting of vector or scalar
    fields with the readout folded into its kernels) against the composed modules, float64,
    values and every gradient, exact and relaxed (the relaxations perturbed away from exact)."""
    torch.manual_seed(0)
    model = GMDynamics(input_frames=2, channels=5, **{"rank": 1, **options})
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "coefficients"):
                module.coefficients.normal_()
            if hasattr(module, "position_weight"):
                module.position_weight.normal_()
    assert assert_fast_path_matches_reference(model, [model.example_input(2)]) == {path}


@pytest.mark.parametrize("mutate", [
    lambda model: setattr(model.stream.blocks[1].layers[0], "activation", nn.SiLU()),
    lambda model: setattr(model.stream.blocks[0], "shortcut", PointwiseConv(5, 5).double()),
    lambda model: setattr(model.stream, "project", nn.Sequential(model.stream.project)),
])
def test_a_changed_dynamics_body_takes_the_reference(mutate):
    """Another activation, shortcut or projection than the stream kernel computes: the body runs
    its modules (the other blocks their own fast paths), and the output changes."""
    torch.manual_seed(0)
    model = GMDynamics(["C8", "C8"], input_frames=2, channels=5, rank=1).double()
    x = model.example_input(2).double()
    before = model(x)
    mutate(model)
    with recorded_fast_paths(model) as taken:
        after = model(x)
    assert "residual_stream" not in taken and "profiled" in taken
    model.fused = False
    torch.testing.assert_close(after, model(x), rtol=1e-12, atol=1e-12)
    if not isinstance(model.stream.project, nn.Sequential):
        assert (after - before).abs().max() > 1e-3


@pytest.mark.parametrize("relaxation,rank,slopes", [("additive", 1, (0.25, -0.3)),
                                                    ("additive", 2, (1.0, 0.0)),
                                                    ("multiplicative", 1, (0.6, 1.2)),
                                                    ("additive", 0, (0.25, 1.0))])  # exact blocks
@pytest.mark.parametrize("lift", ["pointwise", None, "readout"])
@pytest.mark.parametrize("bias", [True, False])
def test_residual_stream_equals_composition(relaxation, rank, slopes, lift, bias):
    """gm_residual_stream against lift -> residual blocks (x + PReLU(GMConv(x)), exact or
    relaxed) -> projection, values and every gradient, for slopes near and far from 1, with a
    pointwise lift folded in, without a lift, or given the readout t_0 = [1^T; W_out] lift(x)
    (whose gradient autograd takes on), with and without biases, two blocks over different
    neighbourhoods of one group."""
    torch.manual_seed(0)
    convs = [GMConv("C6xC5", 5, 5, t=t, rank=rank, relaxation=relaxation, bias=bias).double()
             for t in (1, 2)]
    with torch.no_grad():
        for conv in convs:
            for p in conv.relaxation.parameters() if rank else ():
                p.normal_()
    lifting = PointwiseConv(3, 5, bias=bias).double() if lift else None
    project = PointwiseConv(5, 2, bias=bias).double()
    x = torch.randn(2, 3 if lift else 5, convs[0].group.order, dtype=torch.double, requires_grad=True)
    a = [torch.tensor([slope], dtype=torch.double, requires_grad=True) for slope in slopes]
    params = [*[p for m in (*convs, lifting, project) if m is not None for p in m.parameters()], *a]

    def fused(x, *_):
        blocks = [stream_block(conv, slope) for conv, slope in zip(convs, a)]
        if lift == "readout":
            return gm_residual_stream(readout_rows(project.weight) @ lifting(x), None, None, blocks,
                                      project.weight, project.bias, readout_given=True)
        return gm_residual_stream(x, lifting.weight if lift else None,
                                  lifting.bias if lift else None, blocks, project.weight, project.bias)

    def reference(x, *_):
        h = lifting(x) if lift else x
        for conv, slope in zip(convs, a):
            h = h + F.prelu(conv(h), slope)
        return project(h)

    assert_same_function(fused, reference, (x, *params))


def test_residual_stream_rejects_mismatched_blocks_and_readouts_in_one_line():
    conv = GMConv("C6xC5", 5, 5, t=1, rank=1)
    weights, profiles = conv.relaxation.profiled_weights(conv.weight)
    project = PointwiseConv(5, 2)
    x = torch.randn(2, 5, conv.group.order)
    extra_profile = StreamBlock(weights, torch.cat([profiles, profiles]), conv.bias, torch.ones(1),
                                conv.index, conv.inverse_index)
    with pytest.raises(ValueError, match=r"R or R - 1 profiles and one PReLU slope; got weight \(5, 2, 1, 9\), "
                                         r"4 profiles and 1 slopes$"):
        gm_residual_stream(x, None, None, [extra_profile], project.weight, project.bias)
    with pytest.raises(ValueError, match=r"a given readout t_0 has 1 \+ 2 rows .*; got input \(2, 5, 30\)$"):
        gm_residual_stream(x, None, None, [stream_block(conv, torch.ones(1))], project.weight, project.bias,
                           readout_given=True)


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
