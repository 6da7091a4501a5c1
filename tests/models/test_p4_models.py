"""GM models on the image groups p4 / p4m (docs/design.md §3, §5): the experiments' configs and
exact parameter counts, invariance of the classifier to torch.rot90 / torch.flip / torch.roll of
the image, equivariance of the dynamics model to rotating a vector field, pooling, and a short
real run that learns."""

import copy

import hydra
import pytest
import torch

from gmcnn import native
from gmcnn.equivariance import equivariance_error, image_transform_element
from gmcnn.groups import make_group
from gmcnn.models import GMCNN, GMDynamics
from gmcnn.nn import GMLifting, GMPool
from gmcnn.spaces import PixelGrid, VectorField
from gmcnn.testing import assert_equivariant
from gmcnn.training.build import build_model, count_parameters
from gmcnn.training.config import ConfigError, validate
from tests.helpers import (
    FAST,
    assert_fast_path_matches_reference,
    compose_config,
    metrics_of,
    recorded_fast_paths,
    runner,
)

# exp -> (extra overrides, task, group, parameter count)
EXPERIMENTS = {
    "rot-mnist-generated-p4": ((), "classification", "p4(28)", 45_566),
    "rot-mnist-generated-p4m": ((), "classification", "p4m(28)", 47_768),
    "rot-mnist-p4": ((), "classification", "p4(28)", 45_566),
    "plume-rotation-p4": ((), "dynamics", "p4(64)", 30_844),
}
RELAXED_PLUME = (("model.rank=1",), "dynamics", "p4(64)", 110_236)


def num_params(model):
    return sum(p.numel() for p in model.parameters())


def perturb_relaxations(model):
    """Random symmetry-breaking coefficients (they start at zero: a relaxed model starts exact)."""
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "coefficients"):
                module.coefficients.normal_()


@pytest.mark.parametrize("exp,spec", [*((e, EXPERIMENTS[e]) for e in EXPERIMENTS),
                                      ("plume-rotation-p4", RELAXED_PLUME)])
def test_experiments_compose_build_and_count(exp, spec):
    overrides, task, group, expected = spec
    cfg = compose_config(f"exp={exp}", *overrides)
    assert (cfg.name, cfg.task) == (exp, task)
    model = hydra.utils.instantiate(cfg.model)
    assert model.group.name == group and num_params(model) == expected
    assert isinstance(model.blocks[0].conv if task == "classification" else model.stream.lift, GMLifting)
    if task == "classification":
        assert model(model.example_input(2)).shape == (2, 10)


@pytest.mark.parametrize("exp", ["rot-mnist-generated-p4", "rot-mnist-generated-p4m"])
def test_classification_recipe_is_the_papers(exp):
    cfg = compose_config(f"exp={exp}")
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (0.004, 0.0153)
    assert cfg.scheduler._target_ == "torch.optim.lr_scheduler.ReduceLROnPlateau"
    assert (cfg.trainer.batch_size, cfg.trainer.epochs, cfg.trainer.monitor) == (128, 30, "val_acc")
    assert cfg.data.name == "rot-mnist-generated"


def test_rot_mnist_p4_is_the_same_model_on_larochelle_data():
    cfg, generated = compose_config("exp=rot-mnist-p4"), compose_config("exp=rot-mnist-generated-p4")
    assert cfg.data.name == "rot-mnist" and cfg.model == generated.model


@pytest.mark.parametrize("exp", [exp for exp, spec in EXPERIMENTS.items() if spec[1] == "classification"])
def test_model_cnn_is_the_cnn_baseline_on_the_experiments_data_and_recipe(exp):
    """The experiments' architecture is a model option (configs/model/gmcnn_p4*.yaml): model=cnn
    replaces it, keeping the recipe (dropout 0.2, batch size, epochs)."""
    cfg, gm = compose_config(f"exp={exp}", "model=cnn"), compose_config(f"exp={exp}")
    assert (cfg.name, cfg.model._target_, cfg.model.dropout, cfg.model.blocks) == (exp, "gmcnn.models.CNN", 0.2, 3)
    assert (cfg.data, cfg.trainer, cfg.optimizer) == (gm.data, gm.trainer, gm.optimizer)
    validate(cfg)
    model = build_model(cfg)
    assert count_parameters(model) == 94_186  # as exp=rot-mnist-generated model=cnn
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_model_cnn_dynamics_is_the_cnn_baseline_on_the_rotating_plume():
    cfg = compose_config("exp=plume-rotation-p4", "model=cnn_dynamics")
    validate(cfg)
    assert count_parameters(build_model(cfg)) == 593_286  # as exp=plume-rotation model=cnn_dynamics
    with pytest.raises(ConfigError, match=r"CNN is a classification model.*a dynamics model of gmcnn.models: "
                                          r"CNNDynamics, ConvNet, E2CNN, GMDynamics, Lift, RGroup, RGroupTranslation, RPP, RSteer$"):
        validate(compose_config("exp=plume-rotation-p4", "model=cnn"))


def test_parameter_count_formula():
    """Lifting (C K_lift + C), then per layer C_in C |H| 9 + C, 1x1 shortcut, one PReLU, head."""
    model = GMCNN("p4", 1, 10, t=1, lifting_t=2, blocks=2, channels=[4, 6], channel_mode="full",
                  image_size=16, pool=True)
    assert num_params(model) == ((4 * 25 + 4) + (4 * 4 * 36 + 4) + (4 * 6 * 36 + 6)
                                 + (4 * 6 + 6) + 1 + (6 * 10 + 10))
    batch_norm = GMCNN("p4m", 1, 10, t=1, blocks=1, channels=3, image_size=8, norm="batch",
                       activation="relu", channel_mode="full")
    assert num_params(batch_norm) == (3 * 9 + 3) + (3 * 3 * 72 + 3) + 2 * (3 + 3) + (3 * 10 + 10)


def image_classifier(kind, **options):
    options = {"t": 1, "lifting_t": 2, "blocks": 2, "layers_per_block": 2, "channels": [3, 5],
               "image_size": 16, "pool": True, "channel_mode": "full", **options}
    return GMCNN(kind, 1, 4, **options).double().eval()


@pytest.mark.parametrize("kind,options", [
    ("p4", {}),
    ("p4", dict(norm="batch", activation="relu", readout="max_mean")),
    ("p4", dict(channel_mode="shared", pool=False, channels=4)),   # fast-path blocks after the lifting
    ("p4m", dict(norm="batch", activation="relu", readout="max_mean")),
])
def test_classifier_logits_invariant_to_image_rotations_flips_and_translations(kind, options):
    """torch ops on the image (not the group action): rot90, flips (p4m), circular shifts by
    multiples of 4 (the grid after two 2x2 poolings)."""
    model = image_classifier(kind, **options)
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
        moved = [torch.rot90(x, k, (-2, -1)) for k in (1, 2, 3)] + [torch.roll(x, (4, -8), (-2, -1))]
        if kind == "p4m":
            moved += [torch.flip(x, (-1,)), torch.flip(x, (-2,)), torch.rot90(torch.flip(x, (-1,)), 1, (-2, -1))]
        for image in moved:
            torch.testing.assert_close(model(image), logits, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["p4", "p4m"])
def test_float32_invariance_through_the_equivariance_tooling(kind):
    model = image_classifier(kind).float()
    group = model.group
    elements = [image_transform_element(group, 1), image_transform_element(group, 3, roll=(4, 12)),
                image_transform_element(group, 2, flip=kind == "p4m")]
    grid = PixelGrid(group)
    error = equivariance_error(model, model.example_input(4), grid, elements=elements, reduction="max")
    assert error < 1e-5
    # not to a one-pixel shift: the pooled layers see only translations of their coarser grid
    shifted = equivariance_error(model, model.example_input(4), grid, elements=[group.element((1, 0))])
    assert shifted > 1e-3


@pytest.mark.parametrize("kind", ["p4", "p4m"])
def test_pooled_model_declares_the_subgroup_it_is_invariant_to(kind):
    """in_space: the 16 x 16 grid under p4(4) / p4m(4) (after two 2x2 poolings), so the runner's
    diagnostic draws only elements the logits are invariant to; every one of them, float32."""
    model = image_classifier(kind).float()
    assert model.in_space.name == f"pixel grid of {kind}(16) under {kind}(4)"
    assert equivariance_error(model, model.example_input(2), reduction="max") < 1e-5
    assert image_classifier(kind, pool=False).in_space == PixelGrid(model.group)


def test_relaxed_classifier_is_measurably_not_invariant():
    model = image_classifier("p4", rank=1).float()
    x = model.example_input(4)
    assert equivariance_error(model, x, reduction="max") < 1e-5      # relaxations start at zero
    perturb_relaxations(model)
    assert equivariance_error(model, x) > 1e-3


def test_pooling_options():
    model = GMCNN("p4", 1, 4, t=1, blocks=3, channels=2, image_size=16, pool=[1])
    pools = [m for m in model.modules() if isinstance(m, GMPool)]
    assert [p.out_space.name for p in pools] == ["p4(8)"]          # after residual block 1 only
    assert model.head.in_features == 2
    per_axis = GMCNN(["C8", "C8"], 1, 4, t=1, channels=3, pool=True).eval()
    assert [m.out_space.name for m in per_axis.modules() if isinstance(m, GMPool)] == ["C4xC4"]
    assert per_axis.in_space.name == "C4xC4 < C8xC8"
    assert equivariance_error(per_axis, per_axis.example_input(2), reduction="max") < 1e-5
    x = per_axis.example_input(2)
    with torch.no_grad():
        torch.testing.assert_close(per_axis(torch.roll(x, (2, 6), (-2, -1))), per_axis(x))


@pytest.mark.parametrize("kwargs,message", [
    (dict(pool=[2]), r"pool lists the blocks to pool after, 0 \.\. 1"),
    (dict(channels=[3, 4, 5]), "channels lists one width per block: 2 blocks, got 3"),
    (dict(norm="group"), "norm must be one of"),
    (dict(group=["C16", "C16"], readout="max_mean"), "readout='max_mean' needs a wallpaper group"),
    (dict(image_size=[16, 12]), "acts on square images"),
    (dict(image_size=None), r"p4 needs the size of the pixel grid"),
])
def test_bad_options_are_one_line_errors(kwargs, message):
    options = {"group": "p4", "t": 1, "channels": 3, "image_size": 16, **kwargs}
    with pytest.raises(ValueError, match=message):
        GMCNN(in_channels=1, num_classes=4, **options)


def rotate_field(v, k=1):
    """torch.rot90 of a stack of vector fields (B, 2F, n, n), the vectors (v_x, v_y) rotated too."""
    space = VectorField(f"p4({v.shape[-1]})")
    matrix = torch.as_tensor(space.component_matrix(image_transform_element(space.group, k)), dtype=v.dtype)
    turned = torch.rot90(v, k, (-2, -1)).unflatten(1, (-1, 2))
    return torch.einsum("ij,bfjhw->bfihw", matrix, turned).flatten(1, 2)


def test_rotating_a_field_by_a_quarter_turn_rotates_its_vectors():
    """A field pointing along +x (columns), turned by torch.rot90 (rows towards columns)."""
    v = torch.zeros(1, 2, 4, 4)
    v[:, 0] = 1.0
    turned = rotate_field(v)
    assert torch.equal(turned[:, 0], torch.zeros(1, 4, 4)) and turned[:, 1].abs().eq(1).all()


def vector_dynamics(**options):
    return GMDynamics("p4", input_frames=2, field_channels=2, channels=5, blocks=2, t=1,
                      image_size=8, field="vector", **options).double().eval()


@pytest.mark.parametrize("fused", [True, False])
def test_dynamics_exactly_equivariant_to_rotating_the_input_field(fused):
    """On its fast path (the lifting folded into the stream kernel) and on the reference."""
    model = vector_dynamics(rank=0)
    model.fused = fused
    assert num_params(model) == (5 * 4 * 9 + 5) + 2 * (5 * 36 + 5 + 1) + (5 * 2 + 2)
    x = model.example_input(2).double()
    with torch.no_grad(), recorded_fast_paths(model) as taken:
        prediction = model(x)
        for k in (1, 2, 3):
            torch.testing.assert_close(model(rotate_field(x, k)), rotate_field(prediction, k),
                                       rtol=0, atol=1e-10)
        torch.testing.assert_close(model(torch.roll(x, (3, 1), (-2, -1))),
                                   torch.roll(prediction, (3, 1), (-2, -1)), rtol=0, atol=1e-10)
    assert set(taken) == ({"lifting_stream"} if fused else {None})
    assert_equivariant(model.float(), x.float(), atol=1e-5)


def test_relaxed_dynamics_only_approximately_equivariant():
    model = vector_dynamics(rank=1)
    x = model.example_input(2).double()
    elements = [image_transform_element(model.group, 1)]
    assert equivariance_error(model, x, elements=elements) < 1e-10
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "coefficients"):
                module.coefficients.normal_(std=1e-3)  # a small perturbation: a small error
    error = equivariance_error(model, x, elements=elements)
    assert 1e-4 < error < 0.1


def test_scalar_field_dynamics_on_p4():
    model = GMDynamics("p4", input_frames=3, field_channels=1, channels=4, blocks=1, t=1,
                       image_size=8, rank=0).double().eval()
    x = model.example_input(2).double()
    with torch.no_grad():
        torch.testing.assert_close(model(torch.rot90(x, 1, (-2, -1))),
                                   torch.rot90(model(x), 1, (-2, -1)), rtol=0, atol=1e-10)


@pytest.mark.slow
def test_p4_model_learns_on_a_small_subset(tmp_path):
    """The real runner, exp=rot-mnist-generated-p4 on 500 training images for 8 epochs (~30 s): well
    above the 0.1 of chance on the 300 test images."""
    overrides = [o for o in FAST if not o.startswith("data.options.train_size")]
    result = runner("exp=rot-mnist-generated-p4", *overrides, "data.options.train_size=500",
                    "trainer.epochs=8", "trainer.batch_size=32", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = metrics_of(tmp_path)
    assert metrics["num_params"] == 45_566
    assert metrics["test_acc"] > 0.3


def test_training_benchmark_reference_row():
    """bench_training --reference: the other experiment's model timed in the same alternation."""
    import argparse

    from benchmarks import bench_training

    args = argparse.Namespace(reference="rot-mnist-generated", variants="ours", batch=4, naive_batch=None,
                              overrides=["model.channels=4"], compile=False, warmup=0, steps=1, rounds=1,
                              contended=None, profile=False)
    rows, targets = bench_training.benchmark("rot-mnist-generated-p4", args, torch.device("cpu"),
                                             "float32", "alone")
    assert [row[1] for row in rows] == ["ours", "rot-mnist-generated (reference)"]
    assert any("ours / rot-mnist-generated = " in line for line in targets)


@pytest.mark.parametrize("kind", ["p4", "p4m"])
def test_zero_boundary_classifier_is_invariant_to_rot90_and_flips_about_the_centre(kind):
    """boundary="zero": logits exactly invariant (float32, 1e-5, through the equivariance tooling)
    to every element of its declared space, the point group about the image centre (torch.rot90,
    torch.flip); a translation by the coarsest grid's step, a symmetry of the circular model, is
    not one of the patch model."""
    model = image_classifier(kind, norm="batch", activation="relu", readout="max_mean",
                             boundary="zero").float()
    assert model.in_space.name == f"pixel grid of {kind}(16) under {'C4' if kind == 'p4' else 'D4'}"
    x = model.example_input(4)
    assert_equivariant(model, x, atol=1e-5)
    with torch.no_grad():
        logits = model(x)
        torch.testing.assert_close(model(torch.rot90(x, 1, (-2, -1))), logits, rtol=0, atol=1e-5)
        if kind == "p4m":
            torch.testing.assert_close(model(torch.flip(x, (-2,))), logits, rtol=0, atol=1e-5)
        assert (model(torch.roll(x, (4, 0), (-2, -1))) - logits).abs().max() > 1e-3
    torus = image_classifier(kind, norm="batch", activation="relu", readout="max_mean").float()
    torus.load_state_dict(model.state_dict())
    assert (torus(x) - logits).abs().max() > 1e-3                   # the border differs


def test_experiments_boundary_option():
    """The p4 / p4m experiments default to the zero boundary (chosen by accuracy, docs/design.md
    §5); the circular one builds the same parameters, and the zero one relaxed too; per-axis
    groups refuse the zero boundary in one line."""
    for exp in ("rot-mnist-generated-p4", "rot-mnist-generated-p4m"):
        assert build_model(compose_config(f"exp={exp}")).boundary == "zero"
        model = build_model(compose_config(f"exp={exp}", "model.boundary=circular"))
        assert model.boundary == "circular" and num_params(model) == EXPERIMENTS[exp][3]
    relaxed = build_model(compose_config("exp=rot-mnist-generated-p4", "model.rank=1"))
    assert relaxed.boundary == "zero" and num_params(relaxed) == 95_414      # as on the torus
    with pytest.raises(ValueError, match="boundary='zero' needs a wallpaper group"):
        GMCNN(["C8", "C8"], 1, 4, t=1, channels=3, boundary="zero")


@pytest.mark.parametrize("boundary", ["zero", "circular"])
def test_hand_written_gcnn_peer_matches_the_p4_experiment(boundary):
    """benchmarks/gcnn_p4.py: the plain-PyTorch p4 G-CNN of the p4 experiment's architecture has
    its 45,566 parameters and rot90-invariant logits (float64, trained batch-norm statistics), on
    both boundaries; a circular shift by the coarsest grid's step is a symmetry on the torus only."""
    from benchmarks import gcnn_p4

    cfg = compose_config("exp=rot-mnist-generated-p4", f"model.boundary={boundary}")
    torch.manual_seed(0)
    peer = gcnn_p4.from_config(cfg.model, 1, 10).double()
    assert num_params(peer) == EXPERIMENTS["rot-mnist-generated-p4"][3] and peer.boundary == boundary
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    peer(x)                                              # one training-mode pass: running statistics
    peer.eval()
    with torch.no_grad():
        logits = peer(x)
        for k in (1, 2, 3):
            torch.testing.assert_close(peer(torch.rot90(x, k, (-2, -1))), logits, rtol=0, atol=1e-10)
        shifted = (peer(torch.roll(x, (4, 0), (-2, -1))) - logits).abs().max()
    assert (shifted < 1e-10) == (boundary == "circular")


def test_training_benchmark_gcnn_peer_row():
    """bench_training: the hand-written G-CNN timed beside ours on the p4 experiment, with its
    ratio target; not offered for a model it does not mirror (p4m)."""
    import argparse

    from benchmarks import bench_training

    args = argparse.Namespace(reference=None, variants="ours,gcnn", batch=4, naive_batch=None,
                              overrides=["model.boundary=zero"], compile=False, warmup=0, steps=1,
                              rounds=1, contended=None, profile=False)
    rows, targets = bench_training.benchmark("rot-mnist-generated-p4", args, torch.device("cpu"),
                                             "float32", "alone")
    assert [row[1] for row in rows] == ["ours", "hand-written G-CNN (zero)"]
    assert any("ours / hand-written G-CNN (zero) = " in line for line in targets)
    assert not bench_training.has_gcnn_peer(compose_config("exp=rot-mnist-generated-p4m"))


def randomise_batch_norms(model):
    """Running statistics and affine parameters away from their initial values (so that folding
    them into the kernels in eval mode is tested with numbers that matter)."""
    with torch.no_grad():
        for norm in model.modules():
            if isinstance(norm, torch.nn.BatchNorm1d):
                norm.running_mean.normal_()
                norm.running_var.uniform_(0.5, 2.0)
                norm.weight.normal_()
                norm.bias.normal_()


@pytest.fixture(params=["compiled", "torch"])
def cpu_kernels(request, monkeypatch):
    """Both CPU implementations of the image-grid path's pooling and batch norms: the compiled
    kernels (gmcnn/native.py; skipped without a C compiler) and torch operations."""
    if request.param == "torch":
        monkeypatch.setenv("GMCNN_NATIVE", "0")
    elif native.library() is None:
        pytest.skip("no C compiler: the compiled kernels are not built")
    return request.param


@pytest.mark.parametrize("kind,boundary", [("p4", "zero"), ("p4", "circular"), ("p4m", "zero"),
                                           ("p4m", "circular")])
def test_image_grid_fast_path_matches_the_reference(kind, boundary, cpu_kernels):
    """ImageGridStages' "image_grid" path (vendor conv2d on the image layout, max_pool2d, in-place
    ReLU, batch norm folded in eval) and the compiled readout = the composed modules: values and
    every gradient in float64, in eval mode (the whole model) and in train mode (the stages, batch
    statistics; the readout)."""
    torch.manual_seed(0)
    model = image_classifier(kind, norm="batch", activation="relu", readout="max_mean", boundary=boundary)
    randomise_batch_norms(model)
    x = torch.randn(3, 1, 16, 16)
    readout = {"point_max_mean"} if cpu_kernels == "compiled" else set()      # the compiled readout
    assert assert_fast_path_matches_reference(model, [x]) == {"image_grid", *readout}
    assert assert_fast_path_matches_reference(model.blocks, [x.flatten(2)], training=True) == {"image_grid"}
    if readout:
        pooled = torch.randn(3, 5, model.tail.points * 9).round(decimals=1)          # with ties
        assert assert_fast_path_matches_reference(model.tail, [pooled], training=True) == readout
    with torch.no_grad():                               # without gradients: the strided-maximum pooling
        fast = model(x.double())
        model.fused = False
        torch.testing.assert_close(fast, model(x.double()), rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, 1, 256\)"):
        model.blocks(torch.randn(2, 2, 256, dtype=torch.float64))   # the reference's one-line error


@pytest.mark.parametrize("momentum", [0.1, None])
def test_image_grid_train_mode_batch_norm_statistics_and_hooks(momentum, cpu_kernels):
    """In train mode the pooled lifting's batch norm (normalised and pooled in one kernel) updates
    its running statistics as the module does (momentum or the cumulative average); with a
    forward hook on it (precise_bn) the module itself runs, so the hook sees its input."""
    torch.manual_seed(0)
    model = image_classifier("p4", norm="batch", activation="relu", readout="max_mean", boundary="zero")
    for norm in model.modules():
        if isinstance(norm, torch.nn.BatchNorm1d):
            norm.momentum = momentum
    randomise_batch_norms(model)
    reference = copy.deepcopy(model)
    reference.fused = False
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    for _ in range(2):
        model.blocks.train()(x.flatten(2))
        reference.blocks.train()(x.flatten(2))
    for (name, fast), want in zip(model.named_buffers(), reference.buffers()):
        torch.testing.assert_close(fast, want, rtol=1e-12, atol=1e-12, msg=name)
    lifting_norm, seen = model.blocks[0].norm, []
    handle = lifting_norm.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    model.blocks(x.flatten(2))
    handle.remove()
    assert seen == [(3, lifting_norm.num_features, 4 * 16 * 16)]


def test_image_grid_fast_path_structural_check():
    """Stages the path does not compute take the reference: a LayerNorm, the gather backend,
    a relaxation; float32 under CPU autocast (bfloat16) takes it and agrees with the reference."""
    x = torch.randn(2, 1, 16, 16)
    for options in (dict(), dict(channel_mode="shared"), dict(norm="batch", rank=1)):
        model = image_classifier("p4", **options).float()
        with recorded_fast_paths(model.blocks) as taken:
            model.blocks(x.flatten(2))
        assert taken[0] is None and "image_grid" not in taken, options
    model = image_classifier("p4", norm="batch", activation="relu", readout="max_mean", boundary="zero").float()
    randomise_batch_norms(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with recorded_fast_paths(model.blocks) as taken:
            fast = model(x)
        model.fused = False
        reference = model(x)
    assert taken == ["image_grid"] and fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), reference.float(), rtol=0.05, atol=0.05 * reference.abs().max().item())


def test_pooling_windows_of_images():
    """GMPool knows when its cosets are the 2 x 2 windows of every point-group image."""
    group = make_group("p4(8)")
    assert GMPool(group, "even").image_windows and GMPool("p4m(6)", "even").image_windows
    assert not GMPool(group, group.translation_subgroup()).image_windows
    assert not GMPool(["C8", "C8"], "even").image_windows


def test_p4_model_benchmark_smoke(capsys):
    """benchmarks/bench_p4_model.py: every (boundary, phase, variant) row and both target lines."""
    from benchmarks import bench_p4_model

    assert bench_p4_model.main(["--quick", "--boundaries", "zero"]) == 0
    out = capsys.readouterr().out
    for phase in ("training", "inference"):
        for variant in ("ours", "reference", "gcnn"):
            assert f"| zero | {phase} | {variant} |" in out
        assert f"zero {phase}: ours / hand-written G-CNN = " in out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_image_grid_fast_path_under_cuda_autocast(dtype):
    """On CUDA under autocast the image-grid path runs (vendor ops in reduced precision) and agrees
    with the reference under the same autocast; a training step's gradients are finite."""
    model = image_classifier("p4", norm="batch", activation="relu", readout="max_mean",
                             boundary="zero").float().cuda()
    randomise_batch_norms(model)
    x = torch.randn(8, 1, 16, 16, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        with recorded_fast_paths(model.blocks) as taken:
            fast = model(x)
        model.fused = False
        reference = model(x)
    model.fused = True
    assert taken == ["image_grid"]
    torch.testing.assert_close(fast.float(), reference.float(), rtol=0.05, atol=0.05 * reference.abs().max().item())
    model.train()
    with torch.autocast("cuda", dtype=dtype):
        loss = model(x).float().logsumexp(1).mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
