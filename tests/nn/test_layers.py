"""GM layers: exact equivariance, agreement with independent formulations, gradients, dtypes."""

import pytest
import torch
import torch.nn.functional as F

from gmcnn import functional as GF
from gmcnn.equivariance import displacement_rank, equivariance_error
from gmcnn.groups import make_group, symmetric_group
from gmcnn.nn import GMConv, GMLinear, GMPool, GMUnpool, PointwiseConv, relaxation_penalty
from gmcnn.testing import assert_equivariant

torch.manual_seed(0)

GROUPS = {"cyclic": "C9", "dihedral": "D5", "mixed product": "D3xC4", "cyclic product": "C4xC6",
          "symmetric": symmetric_group(4)}


def randomise_relaxation(layer, scale=1.0):
    with torch.no_grad():
        for p in layer.relaxation.parameters():
            p.copy_(torch.randn_like(p) * scale)


@pytest.mark.parametrize("group", GROUPS.values(), ids=GROUPS.keys())
@pytest.mark.parametrize("channel_mode", ["shared", "full"])
def test_gmconv_equivariant_to_every_element(group, channel_mode):
    layer = GMConv(group, 3, 5, t=1, channel_mode=channel_mode)
    assert_equivariant(layer, layer.example_input(4), atol=1e-5)


@pytest.mark.parametrize("channel_mode", ["shared", "full"])
def test_gmconv_conv_backend_equivariant(channel_mode):
    layer = GMConv("C6xC5", 2, 4, t=2, channel_mode=channel_mode, backend="conv")
    assert_equivariant(layer, layer.example_input(3), atol=1e-5)


@pytest.mark.parametrize("group", GROUPS.values(), ids=GROUPS.keys())
@pytest.mark.parametrize("channel_mode", ["shared", "full"])
def test_gmlinear_equivariant(group, channel_mode):
    layer = GMLinear(group, 2, 3, channel_mode=channel_mode)
    assert_equivariant(layer, layer.example_input(3), atol=1e-5)


@pytest.mark.parametrize("spec", ["C8xC8", "D6xD6", "D6xC6"])
@pytest.mark.parametrize("mode", ["max", "mean"])
def test_pool_and_unpool_equivariant_to_subgroup(spec, mode):
    pool = GMPool(spec, "even", mode=mode)
    assert pool.out_space == pool.subgroup.group
    assert_equivariant(pool, pool.example_input(3), atol=1e-6)
    unpool = GMUnpool(spec, 3, 2)
    assert_equivariant(unpool, unpool.example_input(3), atol=1e-5)
    # the pooled function lives on the subgroup, so a GMConv on it stays equivariant
    conv = GMConv(pool.out_space, 3, 2, t=1)
    chain = torch.nn.Sequential(pool, conv)
    assert_equivariant(chain, pool.example_input(2), in_space=pool.in_space,
                       out_space=conv.out_space, atol=1e-5)


def test_pool_on_generic_subgroup():
    s4 = symmetric_group(4)
    pool = GMPool(s4, [i for i, p in enumerate(s4.permutations) if p[0] == 0])
    assert_equivariant(pool, pool.example_input(2), atol=1e-6)


def test_pool_on_cyclic_product_is_max_pool2d():
    x = torch.randn(2, 3, 8, 6)
    pooled = GMPool("C8xC6", "even")(x.flatten(2))
    assert torch.equal(pooled, F.max_pool2d(x, 2).flatten(2))
    mean = GMPool("C8xC6", "even", mode="mean")(x.flatten(2))
    torch.testing.assert_close(mean, F.avg_pool2d(x, 2).flatten(2))


def test_unpool_writes_every_position_once():
    unpool = GMUnpool("D4xC6", 1, 1, bias=False)
    with torch.no_grad():
        unpool.weight.copy_(torch.arange(1.0, 5.0).reshape(1, 1, 4))  # coset j scaled by j + 1
    sub = unpool.subgroup
    x = torch.arange(1.0, sub.group.order + 1)[None, None]
    y = unpool(x)[0, 0]
    expected = torch.empty(unpool.group.order)
    for j in range(sub.index):
        for h in range(sub.group.order):
            expected[sub.pooling_index[j, h]] = (j + 1) * (h + 1)
    assert torch.equal(y, expected)


@pytest.mark.parametrize("group", GROUPS.values(), ids=GROUPS.keys())
@pytest.mark.parametrize("channel_mode", ["shared", "full"])
def test_gmconv_equals_naive_formulation(group, channel_mode):
    layer = GMConv(group, 3, 4, t=1, channel_mode=channel_mode).double()
    x = layer.example_input(5)
    expected = GF.gm_conv_naive(x, layer.weight, layer.index, layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    # and the naive formula spelled out element by element
    g = layer.group
    support = [int(e) for e in g.neighbourhood(1)]
    u = 3 % g.order
    weight = layer.weight if channel_mode == "full" else layer.weight.expand(-1, 3, -1)
    manual = layer.bias.clone()
    for k, e in enumerate(support):
        source = int(g.multiply(u, g.inverse[e]))
        manual += (weight[:, :, k] * x[0, :, source]).sum(1)
    torch.testing.assert_close(layer(x)[0, :, u], manual)


@pytest.mark.parametrize("channel_mode", ["shared", "full"])
def test_cyclic_gmconv_is_circular_conv2d_with_flipped_kernel(channel_mode):
    t, rows, cols = 2, 7, 6
    layer = GMConv(f"C{rows}xC{cols}", 3, 4, t=t, channel_mode=channel_mode, backend="gather").double()
    x = layer.example_input(2)
    weight = layer.weight.reshape(4, -1, 2 * t + 1, 2 * t + 1)
    image = x.reshape(2, 3, rows, cols)
    if channel_mode == "shared":
        image = image.sum(1, keepdim=True)
    padded = F.pad(image, (t, t, t, t), mode="circular")
    reference = F.conv2d(padded, weight.flip(-1, -2), layer.bias).flatten(2)
    torch.testing.assert_close(layer(x), reference)
    layer.backend = "conv"
    torch.testing.assert_close(layer(x), reference)


def test_gmlinear_equals_full_support_gmconv():
    group = make_group("D3xC4")
    linear = GMLinear(group, 2, 3, channel_mode="full").double()
    # GM(w)[u, m] = w(u^-1 m); the conv uses tap e = m^-1 u, i.e. weight w(e^-1)
    conv = GMConv(group, 2, 3, neighbourhood=list(range(group.order)), channel_mode="full").double()
    with torch.no_grad():
        conv.weight.copy_(linear.weight[:, :, torch.as_tensor(group.inverse)])
        conv.bias.copy_(linear.bias)
    x = linear.example_input(3)
    torch.testing.assert_close(linear(x), conv(x))


def test_permutation_gather_gradcheck_and_double_backward():
    group = make_group("D3")
    index = GF.conv_index(group, group.neighbourhood(1))
    inverse = GF.inverse_permutations(index)
    x = torch.randn(2, 3, 6, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: GF.permutation_gather(v, index, inverse), (x,))
    assert torch.autograd.gradgradcheck(lambda v: GF.permutation_gather(v, index, inverse), (x,))


@pytest.mark.parametrize("channel_mode", ["shared", "full"])
@pytest.mark.parametrize("rank", [0, 2])
def test_gmconv_gradcheck(channel_mode, rank):
    layer = GMConv("D3xC3", 2, 2, t=1, channel_mode=channel_mode, rank=rank).double()
    if rank:
        randomise_relaxation(layer)
    x = layer.example_input(2).requires_grad_()
    assert torch.autograd.gradcheck(layer, (x,))


@pytest.mark.parametrize("channel_mode", ["shared", "full"])
def test_custom_backward_equals_autograd(channel_mode):
    layer = GMConv("D4xC3", 3, 4, t=1, channel_mode=channel_mode).double()
    x = layer.example_input(3).requires_grad_()
    grad_out = torch.randn(3, 4, layer.group.order, dtype=torch.double)
    ours = torch.autograd.grad(layer(x), (x, layer.weight, layer.bias), grad_out)
    naive = GF.gm_conv_naive(x, layer.weight, layer.index, layer.bias)  # autograd scatter-add
    reference = torch.autograd.grad(naive, (x, layer.weight, layer.bias), grad_out)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b)


def layer_matrix(layer):
    """The N x N matrix of a shared-mode layer with one input channel, probed with unit inputs."""
    n = layer.group.order
    with torch.no_grad():
        columns = layer(torch.eye(n, dtype=layer.weight.dtype)[:, None, :])  # (N, O, N)
        bias = 0 if layer.bias is None else layer.bias[None, :, None]
    return (columns - bias).permute(1, 2, 0)  # (O, u, m)


@pytest.mark.parametrize("relaxation,rank", [("additive", 1), ("additive", 2), ("additive", 3),
                                             ("multiplicative", 1)])
@pytest.mark.parametrize("layer_type", [GMConv, GMLinear])
def test_relaxed_layers_break_equivariance_with_bounded_displacement_rank(relaxation, rank, layer_type):
    group = make_group("C5xC4")
    extra = {"t": 1} if layer_type is GMConv else {}
    layer = layer_type(group, 1, 3, rank=rank, relaxation=relaxation, **extra).double()
    x = layer.example_input(4)
    assert equivariance_error(layer, x, reduction="max") < 1e-12  # initialised exact
    randomise_relaxation(layer)
    assert equivariance_error(layer, x) > 1e-2
    matrices = layer_matrix(layer)
    coefficients = layer.position_coefficients()[:, 0]  # (O, K, N)
    index = GF.conv_index(group, group.neighbourhood(1)) if layer_type is GMConv \
        else GF.group_matrix_index(group)[torch.as_tensor(group.inverse)].T  # m = u e^-1
    for o in range(3):
        # the probed matrix is the coefficient F[k, u] at (u, u e_k^-1), and zero elsewhere
        probed = torch.zeros_like(matrices[o])
        positions = torch.arange(group.order)
        for k in range(index.shape[0]):
            probed[positions, index[k]] += coefficients[o, k]
        torch.testing.assert_close(matrices[o], probed)
        assert 1 <= displacement_rank(coefficients[o]) <= rank


def test_exact_layer_has_displacement_rank_zero():
    layer = GMConv("D4", 1, 2, t=1)
    assert displacement_rank(layer.position_coefficients()[0, 0]) == 0


def test_relaxation_penalty():
    layer = GMConv("C6xC6", 2, 3, t=1, rank=2)
    assert relaxation_penalty(layer).item() == 0
    randomise_relaxation(layer)
    a, v = layer.relaxation.coefficients, layer.relaxation.profiles
    perturbation = torch.einsum("oick,in->ockn", a, v)
    torch.testing.assert_close(relaxation_penalty(layer), perturbation.pow(2).sum() / 36)
    relaxation_penalty(layer).backward()
    assert a.grad.abs().sum() > 0
    assert relaxation_penalty(torch.nn.Linear(2, 2)).item() == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_cpu(dtype):
    layer = GMConv("C8xC8", 3, 4, t=1, rank=1)
    randomise_relaxation(layer, 0.1)
    x = layer.example_input(2)
    with torch.autocast("cpu", dtype=dtype):
        y = layer(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), layer(x), rtol=5e-2, atol=5e-2)
    y.float().sum().backward()
    assert layer.weight.grad is not None


def test_torch_compile_matches_eager():
    layer = GMConv("D4xC4", 2, 3, t=1, rank=1)
    randomise_relaxation(layer, 0.1)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = layer.example_input(2).requires_grad_()
    torch.testing.assert_close(compiled(x), layer(x))
    (grad_compiled,) = torch.autograd.grad(compiled(x).sum(), x)
    (grad_eager,) = torch.autograd.grad(layer(x).sum(), x)
    torch.testing.assert_close(grad_compiled, grad_eager)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    layer = GMConv("D4xC4", 2, 3, t=1)
    x = layer.example_input(2)
    expected = layer(x)
    layer = layer.cuda()
    torch.testing.assert_close(layer(x.cuda()).cpu(), expected, rtol=1e-4, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.float16):
        assert layer(x.cuda()).dtype == torch.float16


@pytest.mark.parametrize("make,message", [
    (lambda: GMConv("C8", 1, 1, t=4), "t=4 is too large"),
    (lambda: GMConv("C8", 1, 1, rank=-1), "rank must be an integer >= 0"),
    (lambda: GMConv("C8", 1, 1, rank=2, relaxation="multiplicative"), "rank 1"),
    (lambda: GMConv("C8", 1, 1, relaxation="mixed", rank=1), "relaxation must be"),
    (lambda: GMConv("C8", 1, 1, channel_mode="depthwise"), "channel_mode must be one of"),
    (lambda: GMConv("D4xD4", 1, 1, backend="conv"), "backend='conv' needs"),
    (lambda: GMConv("X8", 1, 1), "unknown group 'X8'"),
    (lambda: GMConv("C8", 0, 1), "in_channels must be a positive integer"),
    (lambda: GMPool("C4xC4", [0, 1]), "not a subgroup"),
    (lambda: GMPool("C5xC5"), "odd"),
    (lambda: GMPool("C4xC4", mode="median"), "pooling mode"),
    (lambda: GMPool("C4xC4", make_group("C6xC6").even_subgroup()), "not of C4xC4"),
])
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_input_shape():
    layer = GMConv("C8xC8", 3, 4, t=1)
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, 3, 64\)"):
        layer(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(batch, 3, 64\)"):
        layer(torch.randn(2, 3, 49))


def test_pointwise_conv_equals_conv1d():
    layer = PointwiseConv(3, 5)
    x = torch.randn(2, 3, 7)
    torch.testing.assert_close(layer(x), F.conv1d(x, layer.weight[:, :, None], layer.bias))
    group = symmetric_group(3)  # any permutation of the 6 positions commutes with it
    x = torch.randn(2, 3, group.order)
    assert_equivariant(layer, x, in_space=group, out_space=group)
