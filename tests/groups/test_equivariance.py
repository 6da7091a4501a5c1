"""The equivariance measurement itself: it must detect broken symmetry and act correctly."""

import pytest
import torch

from gmcnn.equivariance import act, equivariance_error
from gmcnn.groups import make_group
from gmcnn.testing import assert_equivariant


def test_act_is_left_translation():
    group = make_group("C4xC5")
    x = torch.randn(2, 20)
    g = 7  # (1, 2)
    moved = act(group, g, x)
    for u in range(20):
        assert moved[0, u] == x[0, group.multiply(group.inverse[g], u)]
    images = x.reshape(2, 4, 5)
    assert torch.equal(act(group, g, images), torch.roll(images, (1, 2), dims=(1, 2)))
    # an action: (g h) . x = g . (h . x)
    h = 13
    assert torch.equal(act(group, int(group.multiply(g, h)), x), act(group, g, act(group, h, x)))


def test_detects_position_dependent_maps():
    group = make_group("D4")
    mask = torch.linspace(0.5, 1.5, group.order)
    x = torch.randn(3, 2, group.order)
    assert equivariance_error(lambda v: v * mask, x, in_space=group, out_space=group) > 0.05
    with pytest.raises(AssertionError, match="exceeds"):
        assert_equivariant(lambda v: v * mask, x, in_space=group, out_space=group)
    assert equivariance_error(lambda v: v * 2, x, in_space=group, out_space=group) == 0


def test_invariant_outputs():
    group = make_group("C6")
    x = torch.randn(3, 1, 6)
    assert equivariance_error(lambda v: v.amax(-1), x, in_space=group, out_space=None) == 0
    assert equivariance_error(lambda v: v[..., 0], x, in_space=group, out_space=None) > 0.1


def test_needs_a_space():
    with pytest.raises(ValueError, match="in_space is required"):
        equivariance_error(lambda v: v, torch.randn(1, 4))
