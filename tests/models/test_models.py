"""Models: the paper's parameter counts, invariance of the classifier, the CNN baseline."""

import pytest
import torch

from gmcnn.equivariance import equivariance_error
from gmcnn.models import CNN, GMCNN
from gmcnn.testing import assert_equivariant

# docs/design.md §3.1: experiment -> (group per axis, t, input channels, classes, parameter count)
PAPER_CONFIGS = {
    "cifar10": (["C32", "C32"], 3, 3, 10, 13_691),
    "rot-mnist": (["D14", "D14"], 3, 1, 10, 48_731),
    "mnist-bg-rot": (["D14", "D14"], 2, 1, 10, 25_691),
    "mnist-noise": (["C28", "C28"], 3, 1, 10, 13_451),
    "rectangles": (["C28", "C28"], 3, 1, 2, 12_483),
    "norb": (["C32", "C32"], 3, 1, 6, 12_967),
    "smallnorb": (["C24", "C24"], 3, 1, 5, 12_846),
}


def num_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_parameter_counts(name):
    group, t, in_channels, classes, expected = PAPER_CONFIGS[name]
    model = GMCNN(group, in_channels, classes, t=t, blocks=2, channels=120, dropout=0.1)
    assert num_params(model) == expected
    logits = model(torch.randn(2, in_channels, *model.image_shape))
    assert logits.shape == (2, classes)


def test_parameter_count_formula_other_widths():
    model = GMCNN(["D14", "D14"], 1, 10, t=2, channels=32)
    assert num_params(model) == 2 * (32 * 100 + 32) + (1 * 32 + 32) + 1 + (32 * 10 + 10)


def test_classifier_is_invariant_to_every_element_of_a_small_group():
    model = GMCNN(["D4", "C6"], 2, 3, t=1, blocks=2, layers_per_block=2, channels=8).eval()
    assert_equivariant(model, model.example_input(3), atol=1e-5)


@pytest.mark.parametrize("name", ["cifar10", "rot-mnist"])
def test_paper_classifiers_are_invariant(name):
    group, t, in_channels, classes, _ = PAPER_CONFIGS[name]
    model = GMCNN(group, in_channels, classes, t=t, dropout=0.1).eval()
    order = model.group.order
    elements = [1, order // 2 + 3, order - 1] + torch.randint(0, order, (5,)).tolist()
    assert_equivariant(model, model.example_input(2), atol=1e-5, elements=elements)


def test_relaxed_classifier_is_measurably_not_invariant():
    model = GMCNN(["C8", "C8"], 1, 4, t=1, channels=8, rank=1).eval()
    x = model.example_input(4)
    assert equivariance_error(model, x, reduction="max") < 1e-5
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "coefficients"):
                module.coefficients.normal_()
    assert equivariance_error(model, x) > 1e-3


def test_full_channel_mode_model():
    model = GMCNN(["C8", "C8"], 3, 4, t=1, channels=6, channel_mode="full").eval()
    assert num_params(model) == (6 * 3 * 9 + 6) + (6 * 6 * 9 + 6) + (3 * 6 + 6) + 1 + (6 * 4 + 4)
    assert_equivariant(model, model.example_input(2), atol=1e-5)


def test_image_size_must_match_group():
    model = GMCNN(["C32", "C32"], 3, 10)
    with pytest.raises(ValueError, match=r"expects images of shape \(batch, 3, 32, 32\)"):
        model(torch.randn(2, 3, 28, 28))


@pytest.mark.parametrize("kwargs,message", [
    (dict(blocks=0), "blocks must be an integer >= 1"),
    (dict(dropout=1.5), "dropout must be in"),
    (dict(t=20), "t=20 is too large"),
    (dict(rank=-1), "rank must be"),
])
def test_bad_model_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GMCNN(["C32", "C32"], 3, 10, **kwargs)


def test_cnn_baseline_width_controls_size():
    small, large = CNN(3, 10, width=8), CNN(3, 10, width=32)
    assert num_params(small) < num_params(large)
    assert num_params(small) == (3 * 8 * 9 + 16) + (8 * 16 * 9 + 32) + (16 * 32 * 9 + 64) + (32 * 10 + 10)
    assert large(torch.randn(2, 3, 32, 32)).shape == (2, 10)
