"""The dynamics baselines (gmcnn.models.baselines): the upstream parameter counts at the published
settings, the native C4-steerable basis, exactness at each relaxed model's exact point and its
breaking elsewhere (through gmcnn.equivariance), the penalties, refusals, and short real runs."""

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from gmcnn.equivariance import equivariance_error, image_transform_element
from gmcnn.models import E2CNN, RPP, ConvNet, Lift, RGroup, RGroupTranslation, RSteer
from gmcnn.models.baselines.steerable import quarter_turn, steerable_basis
from gmcnn.nn import relaxation_penalty
from gmcnn.spaces import VectorField
from gmcnn.testing import assert_equivariant
from gmcnn.training import targets
from gmcnn.training.build import build_model, count_parameters
from gmcnn.training.config import ConfigError, validate
from tests.helpers import ROOT, compose_config, runner
from tests.models.test_dynamics import SMALL_WINDOWS, write_translating_fields

# upstream counts (docs/baselines, measured on the upstream classes) minus the parameters of batch
# norms that upstream builds and never applies (RSteer: 4 x 2 x channels; RPP: the last layer's 8)
PUBLISHED = [  # (model option, overrides, upstream count, never-applied upstream parameters)
    ("convnet", [], 247_850, 0),
    ("convnet", ["model.channels=128"], 469_250, 0),
    ("e2cnn", [], 622_656, 0),
    ("rgroup", [], 535_720, 0),
    ("rsteer", [], 5_596_178, 736),
    ("rpp", [], 4_355_658, 8),
    ("rgroup_translation", [], 977_412, 0),
    ("lift", [], 11_136_130, 0),
]
SPACE = VectorField("p4(12)")
ROTATIONS = [image_transform_element(SPACE.group, rot90=j) for j in (1, 2, 3)]


def rotation_error(model, x):
    return equivariance_error(model, x, in_space=SPACE, out_space=SPACE, elements=ROTATIONS,
                              reduction="max")


def assert_rotation_equivariant(model, x):
    assert_equivariant(model, x, in_space=SPACE, out_space=SPACE, elements=ROTATIONS)


@pytest.mark.parametrize("option, overrides, upstream, unapplied", PUBLISHED)
def test_parameter_counts_equal_the_upstream_models(option, overrides, upstream, unapplied):
    model = build_model(compose_config("exp=plume-rotation", f"model={option}", *overrides))
    assert count_parameters(model) == upstream - unapplied


def test_jetflow_settings_and_width_override():
    jet = ["exp=jetflow"]
    assert count_parameters(build_model(compose_config(*jet, "model=rsteer", "model.channels=16"))) == 185_282 - 128
    assert count_parameters(build_model(compose_config(*jet, "model=rgroup_translation",
                                                       "model.banks=3"))) == 1_426_068
    # model.channels scales every model: ConvNet's count as a function of the width c
    c = 10
    convnet = build_model(compose_config("exp=plume-rotation", "model=convnet", f"model.channels={c}"))
    assert count_parameters(convnet) == (20 * c * 9 + 3 * c) + 3 * (c * c * 9 + 3 * c) + (c * 2 * 9 + 2)


@pytest.mark.parametrize("fields, size", [(("vector", "regular"), 12), (("regular", "regular"), 24),
                                          (("regular", "vector"), 12)])
def test_native_steerable_basis_has_e2cnn_sizes_and_exact_kernels(fields, size):
    basis = steerable_basis(*fields, 3).double()
    assert basis.shape[0] == size
    gram = basis.flatten(1) @ basis.flatten(1).T
    torch.testing.assert_close(gram, torch.eye(size, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(quarter_turn(basis, *fields), basis, atol=1e-6, rtol=0)
    # a random kernel is not steerable: the constraint is not vacuous
    kernel = torch.randn(basis.shape[1:], dtype=torch.float64)
    assert (quarter_turn(kernel, *fields) - kernel).abs().max() > 0.1


def test_e2cnn_is_exactly_equivariant_to_quarter_turns_of_the_field():
    model = E2CNN(channels=3, layers=3)
    with torch.no_grad():  # learned-looking batch-norm statistics and affine parameters
        for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)):
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2)
            norm.weight.normal_()
            norm.bias.normal_()
    x = torch.randn(2, 20, 12, 12)
    assert_rotation_equivariant(model.eval(), x)
    assert_rotation_equivariant(model.train(), x)  # batch statistics per field: still exact
    assert rotation_error(ConvNet(channels=4, layers=3).eval(), x) > 0.1  # the check can fail


def test_rsteer_is_exact_with_equal_taps_and_not_otherwise():
    model = RSteer(channels=3, layers=3).eval()
    x = torch.randn(2, 20, 12, 12)
    assert model.penalty().item() == 0  # initialised at the exact point
    assert_rotation_equivariant(model, x)
    with torch.no_grad():
        model.convs[1].weight[..., 0] += 1.0  # tap 0 differs by 1: 1 of the 8 differences
    assert model.penalty().item() == pytest.approx(1 / 8)
    assert rotation_error(model, x) > 1e-2


def test_rgroup_is_exact_with_equal_combination_weights_and_not_otherwise():
    model = RGroup(channels=3, layers=3).eval()
    x = torch.randn(2, 20, 12, 12)
    assert model.penalty().item() == 0
    assert_rotation_equivariant(model, x)
    with torch.no_grad():
        model.convs[1].combination[0, 0] += 1.0  # rotation 0 differs from the 3 others by 1
    assert model.penalty().item() == pytest.approx(3.0)
    assert rotation_error(model, x) > 1e-2


def test_rpp_is_exact_with_a_zero_free_path_and_not_otherwise():
    model = RPP(channels=3, layers=3).eval()
    x = torch.randn(2, 20, 12, 12)
    free = sum(p.numel() for p in model.free.parameters())
    with torch.no_grad():
        for p in model.free.parameters():
            p.fill_(1.0)
    assert model.penalty().item() == pytest.approx(free)
    assert rotation_error(model, x) > 1e-2
    with torch.no_grad():
        for p in model.free.parameters():
            p.zero_()
    assert model.penalty().item() == 0
    assert_rotation_equivariant(model, x)


def test_rgroup_translation_is_one_convolution_at_constant_combination_weights():
    model = RGroupTranslation([8, 8], channels=4, layers=2, banks=2).eval()
    x = torch.randn(2, 20, 8, 8)
    first = model.convs[0]
    with torch.no_grad():
        first.combination.copy_(torch.tensor([0.3, 0.7]).expand(8, 8, 2))
    w, b = first.convs.weight.unflatten(0, (2, -1)), first.convs.bias.unflatten(0, (2, -1))
    mixed = torch.nn.functional.conv2d(x, 0.3 * w[0] + 0.7 * w[1], 0.3 * b[0] + 0.7 * b[1], padding=1)
    torch.testing.assert_close(first(x), mixed)
    assert model.penalty().item() == 0
    with torch.no_grad():
        first.combination[0, 0, 0] += 1.0
    assert not torch.allclose(first(x), mixed)
    # mean over the 7 x 8 x 2 x 2 row differences and the 8 x 7 x 2 x 2 column differences
    assert model.penalty().item() == pytest.approx(2 / 224)


def test_penalties_reach_the_runner_through_relaxation_penalty():
    for model in (RSteer(channels=2, layers=2), RGroup(channels=2, layers=2), RPP(channels=2, layers=2),
                  RGroupTranslation([8, 8], channels=2, layers=2)):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        assert model.penalty().item() > 0
        assert relaxation_penalty(model).item() == model.penalty().item()
    assert relaxation_penalty(Lift([8, 8], channels=2)).item() == 0


def test_models_that_do_not_fit_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^model: RSteer is a rotation model .* field_channels=2, got 3"):
        build_model(compose_config("exp=plume-rotation", "model=rsteer", "model.field_channels=3"))
    with pytest.raises(ConfigError, match="E2CNN.* is a dynamics model, but task=classification"):
        validate(compose_config("exp=rot-mnist", "model=e2cnn"))
    with pytest.raises(ValueError, match=r"Lift is built for inputs of shape \(batch, 20, 8, 8\); "
                                         r"got \(1, 20, 6, 6\)"):
        Lift([8, 8], channels=2)(torch.randn(1, 20, 6, 6))


@pytest.mark.slow
@pytest.mark.parametrize("option", ["convnet", "e2cnn", "rgroup", "rgroup_translation", "rsteer",
                                    "rpp", "lift"])
def test_each_baseline_trains_and_its_validation_rmse_falls(tmp_path, option):
    data = tmp_path / "data"
    write_translating_fields(data, [(8, 5), (16, 10)])
    run_dir = tmp_path / "run"
    result = runner("exp=plume-translation", f"model={option}", "model.channels=4", "logger=none",
                    f"data.root={data}", "data.options.train_tasks=[[8,5]]",
                    "data.options.test_tasks=[[16,10]]", f"data.options.windows={SMALL_WINDOWS}",
                    "trainer.epochs=3", "trainer.batch_size=2", "optimizer.lr=0.003",
                    f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    val_rmse = [float(r.split(",")[header.index("val_rmse")]) for r in rows[1:]]
    assert len(val_rmse) == 3 and all(math.isfinite(v) for v in val_rmse)
    assert val_rmse[-1] < val_rmse[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_params"] == count_parameters(build_model(compose_config(
        "exp=plume-translation", f"model={option}", "model.channels=4")))


def test_help_describes_every_dynamics_model_in_one_line():
    template = OmegaConf.to_container(OmegaConf.load(ROOT / "configs/hydra/help/gmcnn.yaml"))["template"]
    dynamics = [path.stem for path in sorted((ROOT / "configs/model").glob("*.yaml"))
                if getattr(targets.models().get(OmegaConf.load(path).get("_target_")), "task", None) == "dynamics"]
    assert {"convnet", "e2cnn", "rgroup", "rgroup_translation", "rsteer", "rpp", "lift"} <= set(dynamics)
    for option in dynamics:
        assert any(line.split()[:1] == [option] and len(line.split()) > 3 for line in template.splitlines()), option


@pytest.mark.parametrize("option, override, message", [
    ("rsteer", "model.kernel_size=4", "RSteer: kernel_size must be odd, got 4"),
    ("lift", "model.channels=0", "Lift: channels must be an integer >= 1, got 0"),
    ("rgroup", "model.layers=1", "RGroup: layers must be an integer >= 2, got 1"),
])
def test_bad_sizes_are_refused_in_one_line(option, override, message):
    with pytest.raises(ConfigError, match=f"^model: {message}$"):
        build_model(compose_config("exp=plume-rotation", f"model={option}", override))


def test_rotation_models_run_on_jetflows_grid_as_upstream_did():
    """Convolutional, so any grid: the upstream reported E2CNN and RSteer on JetFlow's 62 x 23."""
    for option in ("e2cnn", "rsteer", "rgroup", "rpp"):
        model = build_model(compose_config("exp=jetflow", f"model={option}", "model.channels=2")).eval()
        assert model(torch.randn(1, 20, 62, 23)).shape == (1, 2, 62, 23)
