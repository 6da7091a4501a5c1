"""Finite groups: axioms, the original code's conventions, neighbourhoods, subgroups."""

import numpy as np
import pytest

from gmcnn.groups import (
    CyclicGroup,
    DihedralGroup,
    PermutationGroup,
    ProductGroup,
    TableGroup,
    make_group,
    symmetric_group,
)
from gmcnn.testing import assert_group_axioms

GROUPS = ["C7", "D5", "D3xC4", "C4xC6", "S4", "D31xC23"]


@pytest.mark.parametrize("spec", GROUPS)
def test_group_axioms(spec):
    assert_group_axioms(make_group(spec))


def test_dihedral_is_reverse_composition_of_affine_maps():
    n = 7
    group = DihedralGroup(n)

    def affine(g):  # x -> (-1)^f x + r on Z_n, as the image of every x
        r, f = g % n, g // n
        return tuple(((-1) ** f * x + r) % n for x in range(n))

    for g1 in range(2 * n):
        for g2 in range(2 * n):
            composed = tuple(affine(g2)[y] for y in affine(g1))  # phi(g2) o phi(g1)
            assert composed == affine(int(group.multiply(g1, g2)))
    assert group.multiply(2, n + 3) == n + 1  # (2,0)*(3,1) = (3-2, 1)
    assert group.inverse[3] == n - 3 and group.inverse[n + 3] == n + 3


def test_neighbourhood_orders():
    assert CyclicGroup(8).neighbourhood(2).tolist() == [6, 7, 0, 1, 2]
    assert DihedralGroup(5).neighbourhood(1).tolist() == [4, 9, 0, 5, 1, 6]
    product = make_group("C5xC6")
    assert product.neighbourhood(1).tolist() == [e1 * 6 + e2 for e1 in (4, 0, 1) for e2 in (5, 0, 1)]
    assert len(make_group(["C32", "C32"]).neighbourhood(3)) == 49
    assert len(make_group(["D14", "D14"]).neighbourhood(3)) == 196
    assert len(make_group(["D14", "D14"]).neighbourhood(2)) == 100


def test_product_layout_is_row_major():
    group = make_group("D3xC4")
    assert group.multiply(1 * 4 + 3, 2 * 4 + 1) == (1 + 2) % 3 * 4 + (3 + 1) % 4
    assert group.layout == (6, 4)
    assert make_group(["C2", "C3", "C4"]).layout == (2, 3, 4)


def test_symmetric_group_and_word_length_neighbourhood():
    s4 = symmetric_group(4)
    assert s4.order == 24
    assert s4.max_radius() == 6  # length of the longest permutation in Coxeter generators
    assert s4.neighbourhood(0).tolist() == [s4.identity]
    assert len(s4.neighbourhood(1)) == 4  # identity and three adjacent transpositions
    assert len(s4.neighbourhood(6)) == 24
    perms = s4.permutations
    for a, b in [(3, 5), (7, 11), (20, 2)]:
        assert (perms[a][perms[b]] == perms[s4.multiply(a, b)]).all()


def test_generated_permutation_group():
    rotation = [1, 2, 3, 0]
    reflection = [3, 2, 1, 0]
    square = PermutationGroup([rotation, reflection])
    assert square.order == 8
    assert_group_axioms(square)
    with pytest.raises(ValueError, match="not a permutation"):
        PermutationGroup([[0, 0, 1]])


def test_table_group_rejects_non_groups():
    with pytest.raises(ValueError, match="permutation"):
        TableGroup([[0, 1], [0, 1]])


@pytest.mark.parametrize("spec,half", [("C8xC8", "C4xC4"), ("D6xD6", "D3xD3"), ("D4xC6", "D2xC3")])
def test_even_subgroup(spec, half):
    group = make_group(spec)
    sub = group.even_subgroup()
    assert sub.group == make_group(half)
    assert sub.index == 4 and len(sub.coset_representatives) == 4
    assert sorted(sub.pooling_index.reshape(-1).tolist()) == list(range(group.order))
    assert_group_axioms(sub.group)
    # the subgroup's layout is the 2x-downsampled image: element (a, b) of H sits at (2a, 2b)
    rows, cols = group.layout
    image = np.arange(group.order).reshape(rows, cols)
    assert (sub.embedding == image[::2, ::2].reshape(-1)).all()


def test_even_subgroup_of_c4xc4_is_2x2_blocks():
    sub = make_group("C4xC4").even_subgroup()
    image = np.arange(16).reshape(4, 4)
    blocks = {tuple(sorted(image[2 * a:2 * a + 2, 2 * b:2 * b + 2].reshape(-1))) for a in range(2)
              for b in range(2)}
    assert {tuple(sorted(col)) for col in sub.pooling_index.T.tolist()} == blocks


def test_generic_subgroup_and_cosets():
    s4 = symmetric_group(4)
    fixing_last = [i for i, p in enumerate(s4.permutations) if p[3] == 3]
    sub = s4.subgroup(fixing_last)
    assert sub.group.order == 6 and sub.index == 4
    assert_group_axioms(sub.group)
    assert sorted(sub.pooling_index.reshape(-1).tolist()) == list(range(24))
    three_cycle = next(g for g in range(24) if s4.multiply(g, g) != s4.identity)
    with pytest.raises(ValueError, match="not a subgroup"):
        s4.subgroup([s4.identity, three_cycle])


def test_even_subgroup_needs_even_order():
    with pytest.raises(ValueError, match="odd"):
        make_group("C5xC5").even_subgroup()


def test_large_product_is_not_materialised():
    group = make_group(["C64", "C64"])
    index = group.multiply(np.arange(group.order)[None, :],
                           group.inverse[group.neighbourhood(3)][:, None])
    assert index.shape == (49, 4096)
    assert "table" not in group.__dict__  # no 4096 x 4096 table was built
    assert isinstance(group, ProductGroup)


@pytest.mark.parametrize("spec,message", [
    ("Q8", "unknown group 'Q8'"), ("C32xZ4", "unknown group 'Z4'"), ("", "empty"),
])
def test_bad_group_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        make_group(spec)


@pytest.mark.parametrize("spec,t", [("C6", 3), ("D4", 2), ("C32xC32", 16), ("S3", 4)])
def test_radius_too_large(spec, t):
    with pytest.raises(ValueError, match=f"t={t} is too large"):
        make_group(spec).neighbourhood(t)
