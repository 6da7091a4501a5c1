"""p4 / p4m: the groups, the pixel grid as a homogeneous space, lifting, group convolution and
projection, on images and vector fields."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gmcnn import functional as GF
from gmcnn.equivariance import act, equivariance_error, image_transform_element
from gmcnn.groups import CyclicGroup, DihedralGroup, SemidirectProduct, WallpaperGroup, make_group
from gmcnn.nn import GMConv, GMLifting, GMPool, GMProjection, GMUnpool
from gmcnn.nn.lifting import box_offsets, group_conv2d, lifting_conv2d
from gmcnn.spaces import PixelGrid, VectorField
from gmcnn.testing import assert_equivariant
from tests.groups.test_groups import assert_group_axioms

SMALL = [f"{kind}({n})" for kind in ("p4", "p4m") for n in (3, 4, 5)]
R = np.array([[0, -1], [1, 0]])
M = np.array([[1, 0], [0, -1]])


def affine_maps(group):
    """Brute force: element (t, h) as the pixel permutation x -> t + L_h x, from the matrices."""
    n, maps = group.n, []
    points = [(a, b) for a in range(n) for b in range(n)]
    rotations = [np.linalg.matrix_power(R, r) for r in range(4)]
    linear = rotations + [M @ L for L in rotations] if group.kind == "p4m" else rotations
    for L in linear:
        for t in points:
            image = [((L @ p)[0] + t[0]) % n * n + ((L @ p)[1] + t[1]) % n for p in map(np.array, points)]
            maps.append(tuple(image))
    return maps  # maps[h * n^2 + t]


@pytest.mark.parametrize("spec", SMALL)
def test_products_match_composition_of_affine_maps(spec):
    group = make_group(spec)
    assert isinstance(group, WallpaperGroup) and group.order == len(group.linear) * group.n ** 2
    maps = affine_maps(group)
    assert len(set(maps)) == group.order  # faithful: distinct elements move pixels differently
    index = {m: i for i, m in enumerate(maps)}
    brute = np.array([[index[tuple(np.asarray(g1)[list(g2)])] for g2 in maps] for g1 in maps])
    assert np.array_equal(group.table, brute)  # (g1 g2) . x = g1 . (g2 . x)
    assert_group_axioms(group)
    a = np.arange(group.order)
    assert (group.table[a[:, None, None], group.table[a[None, :, None], a[None, None, :]]]
            == group.table[group.table[a[:, None], a[None, :]][:, :, None], a[None, None, :]]).all()
    grid = PixelGrid(group)
    assert all(tuple(grid.move(g, np.arange(group.n ** 2))) == maps[g] for g in range(group.order))


@pytest.mark.parametrize("spec", SMALL)
def test_semidirect_structure(spec):
    group = make_group(spec)
    n2, points = group.n ** 2, len(group.linear)
    translations, point_group = np.arange(n2), group.combine(0, np.arange(points))
    # every element is uniquely a translation times a point-group element: (t, h) = (t, e)(0, h)
    products = group.multiply(translations[None, :], point_group[:, None])
    assert np.array_equal(products.reshape(-1), np.arange(group.order))
    # the translations form a normal subgroup: g T g^-1 = T
    g = np.arange(group.order)
    conjugated = group.multiply(group.multiply(g[:, None], translations[None, :]), group.inverse[g][:, None])
    assert conjugated.max() < n2
    # the rotation R of pixel (a, b) is (-b, a); the mirror (a, -b)
    grid = PixelGrid(group)
    a, b = 1, 2
    assert grid.move(group.element((0, 0), 1), a * group.n + b) == (-b % group.n) * group.n + a
    if group.kind == "p4m":
        assert grid.move(group.element((0, 0), 4), a * group.n + b) == a * group.n + (-b % group.n)
    assert group.translation_subgroup().index == points


def test_group_specs_and_sizes():
    assert make_group("p4(28)").order == 4 * 28 * 28 and make_group("p4m(28)").order == 8 * 784
    assert make_group(["p4(7)"]).name == "p4(7)"
    group = make_group("p4(64)")
    assert group.order == 16384
    neighbourhood = group.neighbourhood(1)
    assert neighbourhood.tolist() == [h * 4096 + (i % 64) * 64 + j % 64
                                      for h in range(4) for i in (-1, 0, 1) for j in (-1, 0, 1)]
    index = GF.conv_index(group, group.neighbourhood(2))
    assert index.shape == (100, 16384) and "table" not in group.__dict__
    assert group.even_subgroup().group == make_group("p4(32)")
    with pytest.raises(ValueError, match=r"write 'p4\(28\)'"):
        make_group("p4")
    assert make_group("p4m", grid_size=14) == make_group("p4m(14)")
    assert make_group("p4(14)", grid_size=14).order == 784
    with pytest.raises(ValueError, match=r"for 28 x 28 images, but the images are 32 x 32"):
        make_group("p4(28)", grid_size=32)
    with pytest.raises(ValueError, match="unknown group 'P4"):
        make_group("P4(28)")
    with pytest.raises(ValueError, match="positive integer"):
        make_group("p4m(0)")
    with pytest.raises(ValueError, match="odd n"):
        make_group("p4(7)").even_subgroup()


def test_general_semidirect_product():
    n = 5
    inversion = np.stack([np.arange(n), (-np.arange(n)) % n])   # C2 acting on C5 by x -> -x
    group = SemidirectProduct(CyclicGroup(n), CyclicGroup(2), inversion)
    assert_group_axioms(group)
    assert group.order == 10 and len(group.neighbourhood(1)) == 6
    assert not np.array_equal(group.table, group.table.T)       # non-abelian, like D5
    with pytest.raises(ValueError, match="not an automorphism"):
        SemidirectProduct(CyclicGroup(4), CyclicGroup(2), [[0, 1, 2, 3], [0, 2, 1, 3]])  # swaps 1, 2
    with pytest.raises(ValueError, match="not a homomorphism"):
        SemidirectProduct(CyclicGroup(n), CyclicGroup(3), np.stack([np.arange(n)] + [(-np.arange(n)) % n] * 2))
    with pytest.raises(ValueError, match="one permutation"):
        SemidirectProduct(CyclicGroup(n), DihedralGroup(2), inversion)


def test_action_on_images_is_rot90_roll_and_flip():
    group = make_group("p4m(6)")
    grid = PixelGrid(group)
    x = torch.randn(2, 3, 6, 6)
    rotated = act(grid, group.element((0, 0), 1), x)
    assert torch.equal(rotated, torch.roll(torch.rot90(x, 1, (-2, -1)), 1, -2))
    assert torch.equal(rotated[0, 0, 0, 1], x[0, 0, 1, 0])  # (R . x)(p) = x(R^-1 p), R^-1 (0, 1) = (1, 0)
    assert torch.equal(act(grid, group.element((0, 0), 4), x), torch.roll(torch.flip(x, (-1,)), 1, -1))
    assert torch.equal(act(grid, group.element((2, 3)), x), torch.roll(x, (2, 3), (-2, -1)))
    g = image_transform_element(group, rot90=3, flip=True, roll=(1, 4))
    expected = torch.roll(torch.rot90(torch.flip(x, (-1,)), 3, (-2, -1)), (1, 4), (-2, -1))
    assert torch.equal(act(grid, g, x), expected)
    h = group.element((5, 1), 6)
    assert torch.equal(act(grid, int(group.multiply(g, h)), x), act(grid, g, act(grid, h, x)))
    with pytest.raises(ValueError, match="no mirrors"):
        image_transform_element(make_group("p4(6)"), flip=True)


def test_action_on_vector_fields_rotates_the_components():
    group = make_group("p4m(5)")
    field = VectorField(group)
    v = torch.randn(3, 2, 5, 5)  # [(v_x, v_y), y, x]
    rot = image_transform_element(group, rot90=1)
    moved = act(field, rot, v)
    grid = torch.rot90(v, 1, (-2, -1))
    # (v_x, v_y) along (col, row) turns into (v_y, -v_x)
    assert torch.equal(moved, torch.stack([grid[:, 1], -grid[:, 0]], 1))
    flip = image_transform_element(group, flip=True)
    assert torch.equal(act(field, flip, v), torch.stack([-v[:, 0], v[:, 1]], 1).flip(-1))
    with pytest.raises(ValueError, match="even number of channels"):
        act(field, rot, torch.randn(3, 3, 25))


def lifting_naive(layer, x):
    """y_o(g) = b_o + sum_{c,k} w[o,c,k] x_c(g . d_k), frames L_h^-1 on vector pairs, by loops."""
    group, grid = layer.group, PixelGrid(layer.group)
    offsets = box_offsets(layer.t)
    n, batch = group.n, x.shape[0]
    if layer.field == "vector":
        fields = x.unflatten(1, (-1, 2))
        if layer.channel_mode == "shared":
            fields = fields.sum(1, keepdim=True)
    else:
        fields = x.sum(1, keepdim=True) if layer.channel_mode == "shared" else x
        fields = fields[:, :, None]
    y = layer.bias[None, :, None].repeat(batch, 1, group.order)
    weight = layer.weight.reshape(layer.out_channels, fields.shape[1], fields.shape[2], -1)
    for g in range(group.order):
        h = group.split(g)[1]
        frame = torch.as_tensor(VectorField(group).component_matrices[group.acting.inverse[h]], dtype=x.dtype)
        for k, (i, j) in enumerate(offsets):
            source = grid.move(g, (i % n) * n + j % n)
            values = fields[:, :, :, source]                     # (B, F, components)
            if layer.field == "vector":
                values = values @ frame.T
            y[:, :, g] += torch.einsum("ofj,bfj->bo", weight[:, :, :, k], values)
    return y


@pytest.mark.parametrize("spec", ["p4(4)", "p4m(3)"])
@pytest.mark.parametrize("field,channel_mode", [("scalar", "shared"), ("scalar", "full"),
                                                ("vector", "shared"), ("vector", "full")])
@pytest.mark.parametrize("backend", ["gather", "conv"])
def test_lifting_equals_naive_loops_and_is_equivariant(spec, field, channel_mode, backend):
    layer = GMLifting(spec, 4, 3, t=1, field=field, channel_mode=channel_mode, backend=backend).double()
    x = layer.example_input(2)
    y = layer(x)
    assert y.shape == (2, 3, layer.group.order)
    torch.testing.assert_close(y, lifting_naive(layer, x))
    assert_equivariant(layer, x, atol=1e-12)
    assert layer.out_space == layer.group and isinstance(layer.in_space, PixelGrid)


def test_vector_lifting_needs_the_component_rotation():
    """Treating the field as 2 scalar channels breaks equivariance under the field action."""
    scalar = GMLifting("p4(5)", 2, 3, t=1, channel_mode="full", backend="gather")
    v = scalar.example_input(3)
    space = VectorField(scalar.group)
    assert equivariance_error(scalar, v, in_space=space, out_space=scalar.group) > 0.1
    vector = GMLifting("p4(5)", 2, 3, t=1, field="vector", channel_mode="full")
    vector.load_state_dict(scalar.state_dict())
    assert equivariance_error(vector, v, reduction="max") < 1e-5


@pytest.mark.parametrize("spec", ["p4(6)", "p4m(5)"])
@pytest.mark.parametrize("channel_mode", ["shared", "full"])
def test_dense_conv2d_formulations_agree(spec, channel_mode):
    lift = GMLifting(spec, 3, 4, t=2, channel_mode=channel_mode, backend="gather").double()
    x = lift.example_input(2)
    torch.testing.assert_close(lifting_conv2d(x, lift.weight, lift.group, 2, lift.bias), lift(x))
    conv = GMConv(spec, 4, 2, t=1, channel_mode=channel_mode).double()
    f = conv.example_input(2)
    torch.testing.assert_close(group_conv2d(f, conv.weight, conv.group, 1, conv.bias), conv(f))
    assert_equivariant(conv, f, atol=1e-12)
    assert conv.backend == "gather" if channel_mode == "shared" else conv.backend == "conv"
    conv.backend = "gather" if conv.backend == "conv" else "conv"
    torch.testing.assert_close(conv(f), group_conv2d(f, conv.weight, conv.group, 1, conv.bias))
    if channel_mode == "full":
        assert GMLifting(spec, 3, 4, t=2, channel_mode="full").backend == "conv"


def test_lifting_on_images_commutes_with_rot90_flip_and_roll():
    group = make_group("p4m(8)")
    layer = GMLifting(group, 1, 4, t=2)
    images = torch.randn(3, 1, 8, 8)
    lifted = layer(images.flatten(2))
    for g in [image_transform_element(group, rot90=1), image_transform_element(group, flip=True),
              image_transform_element(group, rot90=2, roll=(3, 1))]:
        torch.testing.assert_close(layer(act(layer.in_space, g, images).flatten(2)),
                                   act(group, g, lifted), rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["max", "mean"])
def test_projection_is_pooling_over_the_translation_cosets(mode):
    group = make_group("p4m(4)")
    projection = GMProjection(group, mode)
    x = projection.example_input(3)
    pool = GMPool(group, group.translation_subgroup(), mode=mode)
    torch.testing.assert_close(projection(x), pool(x))
    assert_equivariant(projection, x, atol=1e-6)  # on the grid, under all of p4m


def test_vector_projection_and_field_chain_rotate_with_the_field():
    group = make_group("p4(6)")
    chain = torch.nn.Sequential(GMLifting(group, 4, 6, t=1, field="vector", channel_mode="full"),
                                torch.nn.Tanh(), GMConv(group, 6, 4, t=1, channel_mode="full"),
                                GMProjection(group, "mean", field="vector"))
    v = torch.randn(2, 2, 2, 6, 6)  # [batch, t, (v_x, v_y), y, x]
    out = chain(v.flatten(1, 2).flatten(2)).reshape(2, 2, 2, 6, 6)
    rotated = torch.rot90(v, 1, (-2, -1))
    rotated = torch.stack([rotated[:, :, 1], -rotated[:, :, 0]], 2)      # (v_x, v_y) -> (v_y, -v_x)
    out_of_rotated = chain(rotated.flatten(1, 2).flatten(2)).reshape(2, 2, 2, 6, 6)
    expected = torch.rot90(out, 1, (-2, -1))
    expected = torch.stack([expected[:, :, 1], -expected[:, :, 0]], 2)
    torch.testing.assert_close(out_of_rotated, expected, rtol=0, atol=1e-5)
    assert_equivariant(chain, v.flatten(1, 2).flatten(2), in_space=VectorField(group),
                       out_space=VectorField(group), atol=1e-5)


def test_pooling_is_max_pool2d_and_keeps_rot90_about_the_centre():
    group = make_group("p4(12)")
    pool = GMPool(group, "even")
    x = pool.example_input(2)
    torch.testing.assert_close(pool(x), F.max_pool2d(x.reshape(2, 12, 12, 12), 2).reshape(2, 3, -1))
    assert_equivariant(pool, x, atol=1e-6)
    unpool = GMUnpool(group, 3, 2)
    assert_equivariant(unpool, unpool.example_input(2), atol=1e-5)
    # two poolings: the network stays invariant to torch.rot90 of the 12 x 12 image
    second = GMPool(pool.out_space, "even")
    model = torch.nn.Sequential(GMLifting(group, 1, 3, t=1), pool, GMConv(pool.out_space, 3, 3, t=1),
                                second, GMConv(second.out_space, 3, 2, t=1))
    images = torch.randn(4, 1, 12, 12)
    logits = model(images.flatten(2)).amax(-1)
    for k in (1, 2, 3):
        torch.testing.assert_close(model(torch.rot90(images, k, (-2, -1)).flatten(2)).amax(-1), logits,
                                   rtol=0, atol=1e-5)
    assert equivariance_error(lambda v: model(v.flatten(2)).amax(-1), images, in_space=PixelGrid(group),
                              out_space=None, elements=[image_transform_element(group, 1)]) < 1e-6


def test_relaxed_lifting_is_exact_at_init_then_measurably_not():
    layer = GMLifting("p4(5)", 2, 3, t=1, rank=2, channel_mode="full", backend="gather").double()
    x = layer.example_input(3)
    assert equivariance_error(layer, x, reduction="max") < 1e-12
    with torch.no_grad():
        for p in layer.relaxation.parameters():
            p.copy_(torch.randn_like(p))
    assert equivariance_error(layer, x) > 1e-2
    conv = GMConv("p4(5)", 2, 2, t=1, rank=1)
    assert conv.check_equivariance(elements=[1, 30, 77]) < 1e-5
    with torch.no_grad():
        conv.relaxation.coefficients.normal_()
    assert conv.check_equivariance(elements=[1, 30, 77]) > 1e-2
    # y_o(g) = b_o + sum_{c,k} (w[o,c,k] + sum_i a[o,i,c,k] v_i(g)) x_c(g . d_k)
    coefficients = layer.position_coefficients()                          # (O, C, K, |G|)
    exact = GMLifting("p4(5)", 2, 3 * 9 * 2, t=1, channel_mode="full", backend="gather", bias=False).double()
    with torch.no_grad():
        exact.weight.copy_(torch.eye(18, dtype=torch.double).reshape(18, 2, 9).repeat(3, 1, 1))
    taps = exact(x).unflatten(1, (3, 2, 9))                                # x_c(g . d_k)
    expected = torch.einsum("ockg,bockg->bog", coefficients, taps) + layer.bias[:, None]
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("field,rank", [("scalar", 0), ("vector", 0), ("scalar", 1)])
def test_lifting_gradcheck(field, rank):
    layer = GMLifting("p4(3)" if field == "vector" else "p4m(3)", 2, 2, t=1, field=field, channel_mode="full", rank=rank,
                      backend="gather").double()
    x = layer.example_input(2).requires_grad_()
    assert torch.autograd.gradcheck(layer, (x,))


def test_parameter_counts():
    def count(m):
        return sum(p.numel() for p in m.parameters())
    assert count(GMLifting("p4(28)", 3, 8, t=2)) == 8 * 25 + 8
    assert count(GMLifting("p4(28)", 3, 8, t=2, channel_mode="full")) == 8 * 3 * 25 + 8
    assert count(GMLifting("p4(28)", 6, 8, t=1, field="vector")) == 8 * 2 * 9 + 8
    assert count(GMLifting("p4(28)", 3, 8, t=1, rank=2)) == 8 * 9 + 8 + 8 * 2 * 9 + 2 * 3136
    assert count(GMConv("p4m(28)", 8, 8, t=1)) == 8 * 72 + 8
    assert count(GMConv("p4(28)", 8, 16, t=1, channel_mode="full")) == 16 * 8 * 36 + 16
    assert count(GMProjection("p4(28)")) == 0


@pytest.mark.parametrize("make,message", [
    (lambda: GMLifting("C8xC8", 1, 1), "needs a wallpaper group"),
    (lambda: GMLifting("p4(8)", 3, 1, field="vector"), "even number of input channels"),
    (lambda: GMLifting("p4(8)", 1, 1, field="tensor"), "field must be one of"),
    (lambda: GMLifting("p4(8)", 1, 1, t=4), "t=4 is too large"),
    (lambda: GMProjection("p4(8)", "max", field="vector"), "mode='mean'"),
    (lambda: GMProjection("p4(8)", "median"), "projection mode"),
    (lambda: PixelGrid("D4xD4"), "homogeneous space of p4"),
])
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_input_shapes():
    layer = GMLifting("p4(6)", 2, 3)
    with pytest.raises(ValueError, match=r"\(batch, 2, 36\) for a function on pixel grid of p4\(6\)"):
        layer(torch.randn(2, 2, 144))
    with pytest.raises(ValueError, match="even number of channels"):
        GMProjection("p4(6)", "mean", field="vector")(torch.randn(2, 3, 144))


def test_benchmark_smoke(capsys):
    from benchmarks import bench_p4
    assert bench_p4.main(["--quick"]) == 0
    table = capsys.readouterr().out
    assert table.count("| p4(8), 8 x 8 |") == 6 and "conv2d" in table


def zero_embedded(f, n, m):
    """(..., |H| n^2) functions on p4(n) -> (..., |H| m^2) on p4(m), the n x n patch at the
    top left, zeros elsewhere."""
    image = f.unflatten(-1, (-1, n, n))
    return F.pad(image, (0, m - n, 0, m - n)).flatten(-3)


def cropped(f, n, m):
    return f.unflatten(-1, (-1, m, m))[..., :n, :n].flatten(-3)


@pytest.mark.parametrize("spec,n", [("p4", 6), ("p4m", 5)])
@pytest.mark.parametrize("channel_mode", ["shared", "full"])
def test_zero_boundary_is_the_torus_layer_on_a_zero_embedded_patch(spec, n, channel_mode):
    """A zero-boundary layer on the n x n patch = the circular (gather backend) layer on the
    (n + 2t) torus of the patch with zeros around, cropped: only zeros wrap round."""
    t_lift, t = 2, 1
    lift = GMLifting(f"{spec}({n})", 2, 3, t=t_lift, channel_mode=channel_mode, boundary="zero").double()
    torus_lift = GMLifting(f"{spec}({n + 2 * t_lift})", 2, 3, t=t_lift, channel_mode=channel_mode,
                           backend="gather").double()
    torus_lift.load_state_dict(lift.state_dict())
    x = lift.example_input(2)
    assert lift.backend == "conv"
    torch.testing.assert_close(lift(x), cropped(torus_lift(zero_embedded(x, n, n + 2 * t_lift)), n, n + 2 * t_lift))
    conv = GMConv(f"{spec}({n})", 3, 2, t=t, channel_mode=channel_mode, boundary="zero").double()
    torus = GMConv(f"{spec}({n + 2 * t})", 3, 2, t=t, channel_mode=channel_mode, backend="gather").double()
    torus.load_state_dict(conv.state_dict())
    f = conv.example_input(2)
    torch.testing.assert_close(conv(f), cropped(torus(zero_embedded(f, n, n + 2 * t)), n, n + 2 * t))


@pytest.mark.parametrize("spec", ["p4(6)", "p4m(7)"])
def test_zero_boundary_layers_keep_the_point_group_about_the_centre_only(spec):
    """The declared spaces are the point group about the image centre (torch.rot90 / torch.flip),
    exact; a translation of the patch is not a symmetry any more."""
    group = make_group(spec)
    centre = group.centre_point_group()
    rotations = [image_transform_element(group, r) for r in range(4)]
    flips = [image_transform_element(group, r, flip=True) for r in range(4)] if group.kind == "p4m" else []
    assert sorted(centre.embedding.tolist()) == sorted(rotations + flips)
    lift = GMLifting(spec, 1, 3, t=2, channel_mode="full", boundary="zero").double()
    conv = GMConv(spec, 3, 3, t=1, channel_mode="full", boundary="zero").double()
    assert lift.in_space.name == f"pixel grid of {spec} under {centre.group.name}"
    assert conv.in_space is conv.out_space and conv.in_space.group == centre.group
    x = lift.example_input(2)
    assert_equivariant(lift, x, atol=1e-12)
    assert_equivariant(conv, conv.example_input(2), atol=1e-12)
    shift = [group.element((1, 0))]
    assert equivariance_error(lift, x, PixelGrid(group), group, elements=shift) > 1e-2
    torus = GMLifting(spec, 1, 3, t=2, channel_mode="full").double()
    assert equivariance_error(torus, x, PixelGrid(group), group, elements=shift) < 1e-12


@pytest.mark.parametrize("spec", ["p4(6)", "p4m(5)"])
@pytest.mark.parametrize("relaxation", ["additive", "multiplicative"])
def test_relaxed_zero_boundary_layers_are_profiled_sums_of_exact_ones(spec, relaxation):
    """A rank-r relaxed zero-boundary layer = sum_i P_i(u) (exact zero-boundary layer with the
    weight set W_i)(u) + b, the relaxation's own decomposition; with the relaxation away from its
    exact point it is no longer invariant to rot90 about the centre, and at it, it is."""
    rank = 2 if relaxation == "additive" else 1
    for exact, relaxed in (
            (GMLifting(spec, 2, 3, t=2, channel_mode="full", boundary="zero"),
             GMLifting(spec, 2, 3, t=2, channel_mode="full", boundary="zero", rank=rank, relaxation=relaxation)),
            (GMConv(spec, 3, 2, t=1, channel_mode="full", boundary="zero"),
             GMConv(spec, 3, 2, t=1, channel_mode="full", boundary="zero", rank=rank, relaxation=relaxation))):
        exact, relaxed = exact.double(), relaxed.double()
        x = relaxed.example_input(2)
        assert_equivariant(relaxed, x, atol=1e-12)          # the exact point (a = 0, e constant)
        with torch.no_grad():
            for parameter in relaxed.relaxation.parameters():
                parameter.normal_()
        weights, profiles = relaxed.relaxation.profiled_weights(relaxed.weight)
        expected = relaxed.bias[:, None].clone()
        for i in range(profiles.shape[0]):
            exact.load_state_dict({"weight": weights[:, i], "bias": torch.zeros_like(relaxed.bias)})
            expected = expected + profiles[i] * exact(x)
        torch.testing.assert_close(relaxed(x), expected, rtol=0, atol=1e-10)
        with pytest.raises(AssertionError):
            assert_equivariant(relaxed, x, atol=1e-3)


@pytest.mark.parametrize("make,message", [
    (lambda: GMConv("C8xC8", 1, 1, boundary="zero"), "needs a wallpaper group"),
    (lambda: GMConv("p4(8)", 1, 1, boundary="zero", backend="gather"), "runs the conv backend"),
    (lambda: GMConv("p4(8)", 1, 1, boundary="reflect"), "boundary must be one of"),
    (lambda: GMLifting("p4(8)", 2, 1, field="vector", boundary="zero"), "scalar fields"),
    (lambda: GMLifting("p4(8)", 1, 1, boundary="reflect"), "boundary must be one of"),
])
def test_bad_boundaries(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("t", [1, 2])
def test_circular_pad2d_and_its_backward_are_f_pad(t):
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    fast = GF.circular_pad2d(x, t)
    torch.testing.assert_close(fast, F.pad(x, (t,) * 4, mode="circular"), rtol=0, atol=0)
    torch.autograd.gradcheck(lambda v: GF.circular_pad2d(v, t), (x,))


def test_max_pool2x2_is_max_pool2d_values_and_gradient():
    """Values, the gradient (gradcheck, no ties) and the tie rule (first entry in row-major order)
    of F.max_pool2d; without a gradient the same values."""
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(GF.max_pool2x2(x), F.max_pool2d(x, 2), rtol=0, atol=0)
    torch.autograd.gradcheck(GF.max_pool2x2, (x,))
    with torch.no_grad():
        torch.testing.assert_close(GF.max_pool2x2(x), F.max_pool2d(x, 2), rtol=0, atol=0)
    ties = torch.tensor([[[[1.0, 1.0, 0.0, 2.0], [1.0, 0.0, 2.0, 2.0]]]], dtype=torch.float64,
                        requires_grad=True)
    reference = ties.detach().clone().requires_grad_(True)
    grad = torch.tensor([[[[3.0, 5.0]]]], dtype=torch.float64)
    GF.max_pool2x2(ties).backward(grad)
    F.max_pool2d(reference, 2).backward(grad)
    torch.testing.assert_close(ties.grad, reference.grad, rtol=0, atol=0)


@pytest.mark.parametrize("width", [8, 254, 256])
def test_max_pool2x2_index_is_max_pool2d_index(width):
    """The argmax in F.max_pool2d's index format, on both sides of the one-byte offset's limit."""
    x = torch.randn(2, 3, 4, width).round(decimals=1)                  # some ties
    values, index = GF._max_pool2x2_with_index(x)
    expected_values, expected_index = F.max_pool2d(x, 2, return_indices=True)
    torch.testing.assert_close(values, expected_values, rtol=0, atol=0)
    assert index.dtype == torch.int64 and torch.equal(index, expected_index)


@pytest.mark.parametrize("weight", [(1.3, -0.7, 0.0), None])
def test_batch_norm_max_pool2x2_is_max_pool2d_of_batch_norm(weight):
    """Values, batch statistics and every gradient of F.max_pool2d(batch_norm(h)) (batch
    statistics per channel over the (B, C, P, H, W) view), with a negative and a zero scale (a
    window's minimum, a tie of the whole window) and without affine parameters; gradcheck."""
    torch.manual_seed(0)
    batch, channels, points, n = 3, 3, 4, 6
    h = torch.randn(batch, channels * points, n, n, dtype=torch.float64, requires_grad=True)
    w = None if weight is None else torch.tensor(weight, dtype=torch.float64, requires_grad=True)
    b = None if weight is None else torch.randn(channels, dtype=torch.float64, requires_grad=True)
    pooled, mean, var = GF.batch_norm_max_pool2x2(h, w, b, channels, 1e-5)
    grouped = h.view(batch, channels, -1)
    reference = F.max_pool2d(F.batch_norm(grouped, None, None, w, b, True, 0.0, 1e-5).view_as(h), 2)
    torch.testing.assert_close(pooled, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mean, grouped.mean((0, 2)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, grouped.var((0, 2), correction=0), rtol=1e-12, atol=1e-12)
    inputs = [t for t in (h, w, b) if t is not None]
    grad = torch.randn_like(reference)
    want = torch.autograd.grad(reference, inputs, grad)
    for got, expected in zip(torch.autograd.grad(pooled, inputs, grad, retain_graph=True), want):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    conv_output = h * 1                                  # consume: the gradient written over it
    pooled = GF.batch_norm_max_pool2x2(conv_output, w, b, channels, 1e-5, consume=True)[0]
    got = torch.autograd.grad(pooled, [conv_output, *inputs[1:]], grad, retain_graph=True)
    assert got[0].data_ptr() == conv_output.data_ptr()
    for got_one, expected in zip(got, want):
        torch.testing.assert_close(got_one, expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):   # no second backward
        torch.autograd.grad(pooled, [conv_output], grad)
    if weight is not None:      # away from the zero scale, where the whole window ties
        nonzero = torch.tensor((1.3, -0.7, 0.4), dtype=torch.float64, requires_grad=True)
        torch.autograd.gradcheck(lambda *a: GF.batch_norm_max_pool2x2(*a, channels, 1e-5)[0], (h, nonzero, b))
