"""docs/extending.md kept honest: a toy group, space, layer, block, model, dataset and experiment,
each added only through the steps the document lists, is usable where the document says (a layer
on the group, a field through make_space, a model selected by a config and checked against the
task, a dataset by data=NAME, an experiment by exp=NAME, end to end through one short run), and
passes the check the document names (gmcnn.testing), which fails where it should."""

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from hydra import compose, initialize_config_dir
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import gmcnn.models
from dataset import registry
from gmcnn.equivariance import act, equivariance_error
from gmcnn.groups import GROUP_FAMILIES, FiniteGroup, WallpaperGroup, is_wallpaper_spec, make_group
from gmcnn.models.grid import model_group
from gmcnn.nn import GMConv, GroupMatrixLayer
from gmcnn.nn.blocks import FastPathModule, runtime_allows_fast_path
from gmcnn.spaces import FIELDS, PixelGrid, make_space
from gmcnn.testing import assert_equivariant, assert_fast_path_matches_reference, assert_group_axioms
from gmcnn.training import ConfigError, run
from gmcnn.training.build import build_model
from gmcnn.training.config import validate
from gmcnn.training.data import load_data
from gmcnn.training.diagnostics import symmetry_breaking_maps
from gmcnn.training.resume import Plan
from gmcnn.training.targets import TRUSTED_ENV
from tests.helpers import ROOT, metrics_of

# --- a group ------------------------------------------------------------------------------------


class KleinFour(FiniteGroup):
    """Z2 x Z2 written as one group: a * b = a XOR b, every element its own inverse."""

    name = "V4"

    @property
    def order(self) -> int:
        return 4

    @property
    def inverse(self) -> np.ndarray:
        return np.arange(4)

    def multiply(self, a, b) -> np.ndarray:
        return np.bitwise_xor(a, b)

    def neighbourhood(self, t: int) -> np.ndarray:
        return np.array([0]) if t == 0 else np.arange(4)

    def max_radius(self) -> int:
        return 1


def test_a_group_passes_the_axioms_and_carries_a_gm_layer():
    group = KleinFour()
    assert_group_axioms(group)
    assert make_group(group) is group and group.layout == (4,)
    layer = GMConv(group, 3, 5, t=1)
    assert_equivariant(layer, layer.example_input(4), atol=1e-6)


def test_a_group_family_is_one_row_of_the_spec_table(monkeypatch):
    monkeypatch.setitem(GROUP_FAMILIES, r"V4", (KleinFour, "V4 (Klein four-group)"))
    assert isinstance(make_group("V4"), KleinFour)
    product = make_group(["V4", "C3"])
    assert product.order == 12 and product.layout == (4, 3) and product.name == "V4xC3"
    with pytest.raises(ValueError, match=r"unknown group 'Q8' .*allowed are .*V4 \(Klein four-group\)"):
        make_group("Q8")


def test_the_group_check_fails_on_a_non_group():
    class NotAGroup(KleinFour):
        def multiply(self, a, b):
            return np.bitwise_and(a, b)  # not invertible

    with pytest.raises(AssertionError, match="not a permutation"):
        assert_group_axioms(NotAGroup())


def test_a_new_wallpaper_kind_is_recognised_by_its_name_alone():
    """models/grid.py asks gmcnn.groups which specs act on the pixel grid (the GROUP_FAMILIES rows
    with a grid size, one per WALLPAPER_KINDS)."""
    assert is_wallpaper_spec("p4m(28)") and is_wallpaper_spec(" p4 ") and not is_wallpaper_spec("C4xC4")
    with pytest.raises(ValueError, match="p4m acts on square images"):
        model_group("p4m", (28, 30))


# --- a space ------------------------------------------------------------------------------------


class PseudoScalar(PixelGrid):
    """Scalars that change sign under a mirror: (g . f)(x) = det(L_h) f(g^-1 . x)."""

    def __init__(self, group):
        super().__init__(group)
        self.name = f"pseudo-scalar field on the pixel grid of {self.group.name}"

    def component_matrix(self, g: int) -> np.ndarray:
        return np.linalg.det(self.group.linear[self.group.split(g)[1]]).round().reshape(1, 1)


def test_a_space_registered_in_fields_is_acted_on_with_its_component_matrix(monkeypatch):
    monkeypatch.setitem(FIELDS, "pseudoscalar", PseudoScalar)
    space, scalar = make_space("p4m(6)", "pseudoscalar"), make_space("p4m(6)")
    x = torch.randn(2, 3, 36)
    mirror = space.group.element((0, 0), 4)
    assert torch.equal(act(space, mirror, x), -act(scalar, mirror, x))
    # the square of a pseudo-scalar is a scalar, and not a pseudo-scalar
    assert_equivariant(torch.square, x, in_space=space, out_space=scalar, atol=1e-6)
    assert equivariance_error(torch.square, x, in_space=space, out_space=space, reduction="max") > 1


# --- a layer ------------------------------------------------------------------------------------


class NaiveGMConv(GroupMatrixLayer):
    """y_o(u) = b_o + sum_{c,k} w[o, c, k] x_c(u e_k^-1), by the group's own multiply (full mode)."""

    def __init__(self, group, in_channels: int, out_channels: int, t: int = 1, rank: int = 0):
        group = make_group(group)
        self.support = group.neighbourhood(t)
        super().__init__(group, in_channels, out_channels, len(self.support), "full", rank=rank)

    def group_matrix_product(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        u = np.arange(self.group.order)
        taps = torch.stack([x[..., self.group.multiply(u, self.group.inverse[e])] for e in self.support], -2)
        y = torch.einsum("ock,bckn->bon", weight, taps)
        return y if bias is None else y + bias[:, None]


def test_a_layer_passes_the_equivariance_check_and_its_relaxation_breaks_it():
    layer = NaiveGMConv("D3xC4", 2, 3, t=1)
    reference = GMConv("D3xC4", 2, 3, t=1, channel_mode="full", backend="gather")
    reference.load_state_dict(layer.state_dict())
    x = layer.example_input(3)
    torch.testing.assert_close(layer(x), reference(x))
    assert_equivariant(layer, x, atol=1e-5)
    relaxed = NaiveGMConv("D3xC4", 2, 3, t=1, rank=1)
    with torch.no_grad():
        relaxed.relaxation.coefficients.normal_()
    with pytest.raises(AssertionError, match="equivariance error"):
        assert_equivariant(relaxed, x, atol=1e-5)
    maps = symmetry_breaking_maps(nn.Sequential(relaxed))
    assert maps["0"].shape == (6, 4) and maps["0"].min() > 0  # the product's image: D3 rows, C4 columns


def test_the_diagnostics_draw_every_group_layout():
    """A wallpaper group's function is (|H|, n, n): |H| images side by side; others a row."""
    for group, shape in ((WallpaperGroup("p4", 4), (4, 16)), (KleinFour(), (1, 4))):
        layer = GMConv(group, 1, 2, t=1, rank=1)
        with torch.no_grad():
            layer.relaxation.coefficients.normal_()
        assert symmetry_breaking_maps(nn.Sequential(layer))["0"].shape == shape


# --- a block with a fast path ---------------------------------------------------------------------


class LinearReLU(FastPathModule):
    """relu(linear(x)); fast path "addmm_clamp": one addmm, then clamp_min(0)."""

    def __init__(self, features: int, shift: float = 0.0):
        super().__init__()
        self.linear, self.activation, self.shift = nn.Linear(features, features), nn.ReLU(), shift

    def fast_path(self, x: Tensor) -> str | None:
        if self.fused and x.dim() == 2 and runtime_allows_fast_path(x, list(self.parameters())):
            return "addmm_clamp"
        return None

    def forward(self, x: Tensor) -> Tensor:
        if self.fast_path(x) == "addmm_clamp":
            return torch.addmm(self.linear.bias, x, self.linear.weight.t()).clamp_min(self.shift)
        return self.activation(self.linear(x))


def test_a_block_fast_path_matches_its_reference_and_a_wrong_one_is_caught():
    block = nn.Sequential(LinearReLU(6), LinearReLU(6))
    assert assert_fast_path_matches_reference(block, [torch.randn(5, 6)]) == {"addmm_clamp"}
    with pytest.raises(AssertionError):
        assert_fast_path_matches_reference(LinearReLU(6, shift=0.1), [torch.randn(5, 6)])
    with pytest.raises(AssertionError, match="vacuous"):  # 3-d input: no fast path taken
        assert_fast_path_matches_reference(LinearReLU(6), [torch.randn(2, 5, 6)])


# --- a model, a dataset and an experiment -----------------------------------------------------------


class ToyClassifier(nn.Module):
    """Mean over positions, a hidden layer, dropout (the classification experiments set
    model.dropout), a linear head."""

    task = "classification"

    def __init__(self, in_channels: int, num_classes: int, width: int = 4, dropout: float = 0.0):
        super().__init__()
        self.hidden = nn.Linear(in_channels, width)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_classes))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(F.relu(self.hidden(images.mean((-2, -1)))))


class ToyDynamics(nn.Module):
    task = "dynamics"

    def __init__(self, input_frames: int, field_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(input_frames * field_channels, field_channels, 1)

    def forward(self, window: Tensor) -> Tensor:
        return self.conv(window)


@pytest.fixture
def exported(monkeypatch):
    """Step 1 of a model: export the class from gmcnn/models/__init__.py (names and __all__)."""
    for cls in (ToyClassifier, ToyDynamics):
        monkeypatch.setattr(gmcnn.models, cls.__name__, cls, raising=False)
    monkeypatch.setattr(gmcnn.models, "__all__", [*gmcnn.models.__all__, "ToyClassifier", "ToyDynamics"])


def toy_builder(root, size: int = 24, side: int = 8) -> registry.Splits:
    """Two classes of side x side images: a bright or a dark square."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(size) % 2
    images = (labels[:, None, None, None] * 2 - 1) + 0.1 * torch.randn(size, 1, side, side, generator=generator)
    split = TensorDataset(images.float(), labels)
    return registry.Splits(train=split, valid=split, test=split, num_classes=2, in_channels=1,
                           image_shape=(side, side))


@pytest.fixture
def registered(monkeypatch):
    """A dataset: its builder registered under a name (dataset/<module>.py, imported by
    dataset/__init__.py); here on a copy of the registry."""
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))
    registry.register("toy-squares")(toy_builder)


@pytest.fixture
def configs(tmp_path):
    """The project's configs with the documented files added: configs/model/toy.yaml,
    configs/data/toy-squares.yaml and configs/exp/toy.yaml."""
    root = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", root)
    files = {
        "model/toy.yaml": {"_target_": "gmcnn.models.ToyClassifier", "in_channels": "${data.in_channels}",
                           "num_classes": "${data.num_classes}", "width": 4},
        "data/toy-squares.yaml": {"name": "toy-squares", "root": "${paths.data_dir}/toy-squares", "in_channels": 1,
                                  "num_classes": 2, "image_size": [8, 8], "options": {"size": 24, "side": 8}},
    }
    for name, content in files.items():
        (root / name).write_text(yaml.safe_dump(content))
    (root / "exp/toy.yaml").write_text("# @package _global_\ndefaults:\n  - override /data: toy-squares\n"
                                       "  - override /model: toy\n\nname: toy\ntrainer:\n  epochs: 2\n"
                                       "  batch_size: 8\n  amp: false\n")
    return root


def compose_in(config_dir, *overrides):
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(config_name="config", overrides=["logger=none", *overrides])


def test_a_model_exported_and_configured_is_selectable_and_task_checked(exported, configs):
    cfg = compose_in(configs, "model=toy")
    validate(cfg)
    assert isinstance(build_model(cfg), ToyClassifier)
    with pytest.raises(ConfigError, match=r"^model gmcnn.models.ToyClassifier is a classification model, but "
                                          r"task=dynamics .*: CNNDynamics, .*ToyDynamics$"):
        validate(compose_in(configs, "exp=jetflow", "model=toy"))
    with pytest.raises(ConfigError, match="unknown key model.depth for gmcnn.models.ToyClassifier; allowed"):
        build_model(compose_in(configs, "model=toy", "+model.depth=3"))


def test_a_model_not_exported_is_refused_unless_trusted(configs, monkeypatch):
    with pytest.raises(ConfigError, match=r"model._target_='gmcnn.models.ToyClassifier' is refused"):
        validate(compose_in(configs, "model=toy"))
    monkeypatch.setenv(TRUSTED_ENV, f"{__name__}.ToyClassifier")
    cfg = compose_in(configs, "model=toy", f"model._target_={__name__}.ToyClassifier")
    validate(cfg)
    assert isinstance(build_model(cfg), ToyClassifier)


def test_a_registered_dataset_builds_by_name_and_from_its_config(registered, configs, tmp_path):
    assert "toy-squares" in registry.available()
    assert len(registry.build_dataset("toy-squares", tmp_path, size=10).train) == 10
    splits = load_data(compose_in(configs, "data=toy-squares"))
    assert splits.image_shape == (8, 8) and len(splits.test_sets["test"]) == 24
    with pytest.raises(ConfigError, match=r"data toy-squares has images of \(6, 6\), but data.image_size says"):
        load_data(compose_in(configs, "data=toy-squares", "data.options.side=6"))
    with pytest.raises(ConfigError, match="dataset 'toy-squares': .*unexpected keyword argument 'colour'"):
        load_data(compose_in(configs, "data=toy-squares", "+data.options.colour=red"))


@pytest.mark.slow
def test_an_experiment_runs_end_to_end(exported, registered, configs, tmp_path):
    cfg = compose_in(configs, "exp=toy", f"paths.output_dir={tmp_path}/out")
    validate(cfg)
    assert (cfg.name, cfg.data.name, cfg.model._target_) == ("toy", "toy-squares", "gmcnn.models.ToyClassifier")
    run(Plan(cfg, tmp_path / "run"))
    metrics = metrics_of(tmp_path / "run")
    assert (metrics["name"], metrics["status"], metrics["epochs_completed"]) == ("toy", "finished", 2)
    assert metrics["num_params"] == (1 * 4 + 4) + (4 * 2 + 2) and 0 <= metrics["test_acc"] <= 1
