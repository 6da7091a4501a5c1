"""The compiled 2 x 2 pooling kernels (gmcnn/native.py) against F.max_pool2d and against the torch
composition they replace, and the fallback to that composition where they cannot be built."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from gmcnn import functional as GF
from gmcnn import native

requires_native = pytest.mark.skipif(native.library() is None, reason="no C compiler")


def test_the_kernels_are_built_where_there_is_a_compiler():
    """A machine with a C compiler builds them: a silent fallback would leave the other tests
    of this module skipped and the fast path slow."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    assert native.library() is not None


@requires_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("width", [2, 8, 254, 256])
def test_max_pool2x2_is_max_pool2d_values_and_index(dtype, width):
    """F.max_pool2d's values and argmax, ties to the first entry in row-major order (the rounded
    values and a zero block tie often), on both sides of a byte's range of offsets."""
    x = torch.randn(3, 5, 6, width, dtype=dtype).round(decimals=1)
    x[:, :2, :4] = 0.0
    values, code = native.max_pool2x2(x)
    expected_values, expected_index = F.max_pool2d(x, 2, return_indices=True)
    assert code.dtype == torch.uint8
    torch.testing.assert_close(values, expected_values, rtol=0, atol=0)
    assert torch.equal(GF._index_from_code(code, width), expected_index)
    grad = torch.randn_like(values)
    expected = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [2, 2], [2, 2], [0, 0], [1, 1],
                                                               False, expected_index)
    torch.testing.assert_close(native.max_unpool2x2(grad, code), expected, rtol=0, atol=0)


@requires_native
def test_a_window_with_a_nan_pools_to_nan():
    x = torch.randn(1, 2, 4, 4)
    x[0, 0, 1, 1] = float("nan")
    values, _ = native.max_pool2x2(x)
    assert values[0, 0, 0, 0].isnan() and not values[0, 0, 1:].isnan().any() and not values[0, 1].isnan().any()


@requires_native
def test_batch_norm_unpool_is_the_torch_composition():
    """shift + slope h plus gain times the gradient at each window's argmax, per channel of the
    (B, channels, P, H, W) view, written over h, which autograd then sees as modified."""
    batch, channels, points, n = 4, 3, 4, 6
    h = torch.randn(batch, channels * points, n, n, dtype=torch.float64)
    grad = torch.randn(batch, channels * points, n // 2, n // 2, dtype=torch.float64)
    shift, slope = torch.randn(channels, dtype=torch.float64), torch.randn(channels, dtype=torch.float64)
    _, code = native.max_pool2x2(h)
    _, index = F.max_pool2d(h, 2, return_indices=True)
    gain = torch.randn(channels, dtype=torch.float64)
    gained = (grad.view(batch, channels, -1) * gain[:, None]).view_as(grad)
    expected = torch.addcmul(shift[:, None], h.view(batch, channels, -1), slope[:, None]).view_as(h)
    expected = expected.flatten(-2).scatter_add(-1, index.flatten(-2), gained.flatten(-2)).view_as(h)
    version = h._version
    out = native.batch_norm_unpool2x2_(h, grad, code, shift, slope, gain, channels)
    assert out.data_ptr() == h.data_ptr() and h._version > version
    torch.testing.assert_close(out, expected, rtol=1e-15, atol=1e-15)


@requires_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pooling_functions_take_the_kernels_and_match_the_torch_path(dtype, monkeypatch):
    """max_pool2x2 and batch_norm_max_pool2x2 call the kernels on contiguous CPU inputs and give
    the values and gradients of their torch composition (GMCNN_NATIVE=0)."""
    calls = []
    pool = native.max_pool2x2
    monkeypatch.setattr(native, "max_pool2x2", lambda x: calls.append(x.shape) or pool(x))
    h = torch.randn(4, 12, 8, 8, dtype=dtype).round(decimals=1).requires_grad_(True)
    weight = torch.tensor([1.3, 0.5, 2.0], dtype=dtype, requires_grad=True)
    bias = torch.randn(3, dtype=dtype, requires_grad=True)

    def run():
        pooled = GF.max_pool2x2(h)
        normalised = GF.batch_norm_max_pool2x2(h, weight, bias, 3, 1e-5)[0]
        grads = torch.autograd.grad((pooled * pooled).sum() + (normalised ** 3).sum(), [h, weight, bias])
        return pooled, normalised, *grads

    fast = run()
    assert len(calls) == 2
    monkeypatch.setenv("GMCNN_NATIVE", "0")
    composed = run()
    assert len(calls) == 2
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    for got, expected in zip(fast, composed):
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


def test_without_a_compiler_the_torch_path_runs(monkeypatch, caplog):
    """A compiler that fails: one warning, no library, and pooling still F.max_pool2d's."""
    monkeypatch.setattr(native, "_library", [])
    monkeypatch.setenv("CC", "false")
    with caplog.at_level("WARNING", logger="gmcnn.native"):
        assert native.library() is None
    assert "could not compile native.c with false" in caplog.text
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert not native.applies(x)
    torch.testing.assert_close(GF.max_pool2x2(x), F.max_pool2d(x, 2), rtol=0, atol=0)


@requires_native
def test_inputs_the_kernels_do_not_take():
    """Odd sizes, non-contiguous and integer tensors go to the torch path."""
    assert native.applies(torch.randn(2, 3, 4, 6))
    assert not native.applies(torch.randn(2, 3, 5, 6))
    assert not native.applies(torch.randn(2, 3, 6, 4).transpose(-1, -2))
    assert not native.applies(torch.zeros(2, 3, 4, 4, dtype=torch.int64))
    assert not native.applies(torch.randn(2, 3, 4, 4, dtype=torch.float16))
    assert not native.applies(torch.randn(0, 3, 4, 4))


@requires_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("inner", [1, 15, 3136])
def test_channel_mean_var_is_the_exact_statistics(dtype, inner):
    """The mean and biased variance per channel over (batch, inner), far from zero (where a one-pass
    sum of squares would cancel), against float64 (the inner lengths around the 16 partial sums)."""
    rows = (torch.randn(5, 3, inner, dtype=torch.float64) * 0.01 + 100).to(dtype)
    mean, var = native.channel_mean_var(rows)
    exact = rows.double()
    assert mean.dtype == var.dtype == dtype
    tolerance = 1e-13 if dtype == torch.float64 else 1e-7
    torch.testing.assert_close(mean.double(), exact.mean((0, 2)), rtol=tolerance, atol=0)
    torch.testing.assert_close(var.double(), exact.var((0, 2), correction=0), rtol=1e-5 if dtype == torch.float32 else 1e-11, atol=0)
    torch.testing.assert_close(GF.channel_mean_var(rows)[1], var, rtol=0, atol=0)


@requires_native
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_relu_is_relu_of_batch_norm(affine):
    """Values, batch statistics and every gradient of relu(F.batch_norm(x)) with batch statistics
    (a negative scale too), in float64; gradcheck; consume writes x's gradient over x once."""
    x = torch.randn(6, 3, 10, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.3, -0.7, 0.4], dtype=torch.float64, requires_grad=True) if affine else None
    b = torch.randn(3, dtype=torch.float64, requires_grad=True) if affine else None
    out, mean, var = GF.batch_norm_relu(x, w, b, 1e-5)
    reference = torch.relu(F.batch_norm(x, None, None, w, b, True, 0.0, 1e-5))
    torch.testing.assert_close(out, reference, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(mean, x.mean((0, 2)), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(var, x.var((0, 2), correction=0), rtol=1e-13, atol=1e-13)
    inputs = [t for t in (x, w, b) if t is not None]
    grad = torch.randn_like(reference)
    want = torch.autograd.grad(reference, inputs, grad)
    for got, expected in zip(torch.autograd.grad(out, inputs, grad), want):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    torch.autograd.gradcheck(lambda v, *affine: GF.batch_norm_relu(v, *(affine or (None, None)), 1e-5)[0],
                             tuple(inputs))
    conv_output = x * 1
    out = GF.batch_norm_relu(conv_output, w, b, 1e-5, consume=True)[0]
    got = torch.autograd.grad(out, [conv_output, *inputs[1:]], grad, retain_graph=True)
    assert got[0].data_ptr() == conv_output.data_ptr()
    for got_one, expected in zip(got, want):
        torch.testing.assert_close(got_one, expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(out, [conv_output], grad)


@requires_native
def test_batch_norm_relu_keeps_a_nan():
    x = torch.randn(2, 2, 5)
    x[0, 0, 0] = float("nan")
    out = GF.batch_norm_relu(x, None, None, 1e-5)[0]
    assert out[:, 0].isnan().all() and not out[:, 1].isnan().any()     # the channel's statistics are NaN


@pytest.mark.parametrize("kernels", ["compiled", "torch"])
@pytest.mark.parametrize("weight", [(1.3, 0.5, 2.0), (1.3, -0.7, 0.4), (1.3, -0.7, 0.0)])
def test_batch_norm_max_pool2x2_with_relu_is_relu_after_it(kernels, weight, monkeypatch):
    """relu=True: values and every gradient of relu(max_pool2d(batch_norm(h))) in float64, with
    positive scales (the compiled kernels' own masked sums), a negative and a zero one."""
    if kernels == "torch":
        monkeypatch.setenv("GMCNN_NATIVE", "0")
    elif native.library() is None:
        pytest.skip("no C compiler")
    batch, channels, points, n = 3, 3, 4, 6
    h = torch.randn(batch, channels * points, n, n, dtype=torch.float64, requires_grad=True)
    w = torch.tensor(weight, dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64, requires_grad=True)
    pooled = GF.batch_norm_max_pool2x2(h, w, b, channels, 1e-5, relu=True)[0]
    normalised = F.batch_norm(h.view(batch, channels, -1), None, None, w, b, True, 0.0, 1e-5)
    reference = torch.relu(F.max_pool2d(normalised.view_as(h), 2))
    torch.testing.assert_close(pooled, reference, rtol=1e-12, atol=1e-12)
    assert (pooled == 0).any() and (pooled > 0).any()
    grad = torch.randn_like(reference)
    for got, expected in zip(torch.autograd.grad(pooled, [h, w, b], grad),
                             torch.autograd.grad(reference, [h, w, b], grad)):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@requires_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_point_max_mean_is_amax_then_mean(dtype):
    """The readout's values and amax's gradient (tied maxima share a column's gradient equally)."""
    x = torch.randn(4, 3, 4 * 7, dtype=dtype).round(decimals=1)
    x[0, 0] = 0.0                                                      # a row of ties
    x.requires_grad_(True)
    reference = x.unflatten(-1, (4, -1)).amax(-2).mean(-1)
    out = GF.point_max_mean(x, 4)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(out, reference, rtol=tolerance, atol=tolerance)
    grad = torch.randn_like(out)
    got, = torch.autograd.grad(out, x, grad)
    want, = torch.autograd.grad(reference, x, grad)
    torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)
    assert torch.equal(got[0, 0], torch.full((28,), float(grad[0, 0]) / 7 / 4, dtype=dtype))
