"""Sinkhorn-Knopp and LC-Rec's uniform-semantic-mapping index construction."""

from __future__ import annotations

import math

import pytest
import torch

from semrec.tokenizers.collisions import PAD, collision_groups, is_prefix_free
from semrec.tokenizers.distances import pairwise_distances
from semrec.tokenizers.sinkhorn import (
    resolve_by_uniform_mapping,
    sinkhorn,
    sinkhorn_codes,
)


# ------------------------------------------------------------------------------ sinkhorn
def test_sinkhorn_symmetric_2x2_matches_the_closed_form():
    # Kernel [[1, e^-1], [e^-1, 1]]: by symmetry q = K / (1 + e^-1).
    q = sinkhorn(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), epsilon=1.0)
    a = 1 / (1 + math.exp(-1))
    assert torch.allclose(q, torch.tensor([[a, 1 - a], [1 - a, a]]), atol=1e-6)


def test_sinkhorn_2x2_when_both_items_prefer_the_same_code():
    # Both rows are cheapest at code 0, but each code must get mass 1. For a doubly
    # stochastic [[a, 1-a], [1-a, a]] the cross ratio a^2/(1-a)^2 equals
    # K00*K11/(K01*K10) = e^-4 / e^-2, so a = 1 / (1 + e): item 1 (whose preference for
    # code 0 is stronger) takes code 0, item 0 is pushed to code 1.
    q = sinkhorn(torch.tensor([[0.0, 1.0], [0.0, 2.0]]), epsilon=0.5, iterations=500)
    a = 1 / (1 + math.e)
    assert torch.allclose(q, torch.tensor([[a, 1 - a], [1 - a, a]]), atol=1e-5)
    assert q.argmax(dim=1).tolist() == [1, 0]


def test_sinkhorn_4x2_gives_uniform_columns_and_the_optimal_split():
    # All four items prefer code 0 (plain argmin would put them all there). Uniform
    # marginals force 2 + 2; the optimal transport keeps the two strongest preferences
    # (items 2 and 3, cost gaps 3 and 4) on code 0.
    cost = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, 4.0]])
    assert cost.argmin(dim=1).tolist() == [0, 0, 0, 0]
    q = sinkhorn(cost, epsilon=0.1, iterations=1000)
    assert torch.allclose(q.sum(dim=0), torch.tensor([2.0, 2.0]), atol=1e-4)
    assert torch.allclose(q.sum(dim=1), torch.ones(4), atol=1e-6)
    assert q.argmax(dim=1).tolist() == [1, 1, 0, 0]


def test_sinkhorn_codes_is_scale_free_and_balances_a_batch():
    cost = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, 4.0]])
    assert sinkhorn_codes(cost, epsilon=0.01, iterations=500).tolist() == [1, 1, 0, 0]
    assert sinkhorn_codes(cost * 1000 + 7, epsilon=0.01, iterations=500).tolist() == [1, 1, 0, 0]


@pytest.mark.parametrize(
    "cost, kwargs",
    [
        (torch.zeros(0, 3), {}),
        (torch.zeros(2), {}),
        (torch.tensor([[0.0, float("nan")]]), {}),
        (torch.zeros(2, 2), {"epsilon": 0.0}),
        (torch.zeros(2, 2), {"iterations": 0}),
    ],
)
def test_sinkhorn_rejects_bad_input(cost, kwargs):
    with pytest.raises(ValueError, match="sinkhorn"):
        sinkhorn(cost, **kwargs)


def test_pairwise_l2_distances_match_brute_force():
    g = torch.Generator().manual_seed(0)
    x, codebook = torch.randn(5, 3, generator=g), torch.randn(4, 3, generator=g)
    brute = ((x[:, None, :] - codebook[None, :, :]) ** 2).sum(dim=2)
    assert torch.allclose(pairwise_distances(x, codebook, "l2"), brute, atol=1e-5)


# ------------------------------------------------------------------ index construction
def test_uniform_mapping_hand_example():
    # Items 0 and 1 collide on (0, 0); item 2 already holds (0, 1), so the free codes under
    # prefix 0 are {0, 2, 3}. The two closest by mean distance are 0 (mean 0) and 2 (mean 2);
    # Sinkhorn on [[0, 1], [0, 3]] gives code 0 to item 1 (stronger preference) and 2 to 0.
    codes = torch.tensor([[0, 0], [0, 0], [0, 1], [1, 0]])
    distances = torch.tensor(
        [
            [0.0, 5.0, 1.0, 9.0],
            [0.0, 5.0, 3.0, 1.0],
            [4.0, 0.0, 4.0, 4.0],
            [0.0, 1.0, 1.0, 1.0],
        ]
    )
    out, report = resolve_by_uniform_mapping(codes, distances, epsilon=0.01, iterations=500)
    assert out.tolist() == [[0, 2], [0, 0], [0, 1], [1, 0]]
    assert report["rounds"] == 1 and report["stopped"] == "no_collisions"
    assert report["fallback"] == "none" and report["items_moved_by_sinkhorn"] == 1


def test_uniform_mapping_random_collisions_are_all_resolved_without_touching_others():
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 3, (200, 3), generator=g)  # 27 SIDs for 200 items
    codes[:, -1] = torch.randint(0, 2, (200,), generator=g)
    distances = torch.rand(200, 32, generator=g)
    out, report = resolve_by_uniform_mapping(codes, distances)
    assert collision_groups(out) == [] and out.shape == codes.shape
    assert torch.equal(out[:, :-1], codes[:, :-1])
    was_unique = torch.ones(200, dtype=torch.bool)
    for group in collision_groups(codes):
        was_unique[group] = False
    assert torch.equal(out[was_unique], codes[was_unique])
    assert report["items_moved_by_sinkhorn"] + report["items_moved_by_fallback"] == int(
        (out != codes).any(dim=1).sum()
    )


def test_uniform_mapping_separates_many_identical_items_by_fallback():
    # 30 items with identical residuals: Sinkhorn cannot tell them apart, the greedy
    # fallback gives each its own nearest free code; the 5 other items keep theirs.
    codes = torch.zeros(35, 2, dtype=torch.long)
    codes[30:, 1] = torch.arange(1, 6)
    distances = torch.arange(64, dtype=torch.float).repeat(35, 1)
    out, report = resolve_by_uniform_mapping(codes, distances)
    assert collision_groups(out) == []
    assert torch.equal(out[30:], codes[30:])
    assert report["fallback"] == "greedy_nearest_free"
    assert report["stopped"] == "no_progress" and report["items_moved_by_fallback"] == 29
    # Nearest free codes: 0 stays with item 0, codes 1..5 are taken, so 6..34 are used.
    assert sorted(out[:30, 1].tolist()) == [0, *range(6, 35)]


def test_uniform_mapping_appends_a_suffix_when_a_prefix_is_full():
    codes = torch.tensor([[1, 0]] * 5 + [[0, 0]])
    distances = torch.zeros(6, 3)
    out, report = resolve_by_uniform_mapping(codes, distances, max_rounds=2)
    assert report["fallback"] == "greedy_nearest_free+suffix"
    assert collision_groups(out) == [] and is_prefix_free(out)
    assert out.shape == (6, 3) and out[5].tolist() == [0, 0, PAD]
    assert report["items_with_suffix"] == 3  # items 1, 2 took codes 1, 2; 0, 3, 4 share code 0


def test_uniform_mapping_max_rounds_zero_goes_straight_to_fallback():
    codes = torch.tensor([[0, 0], [0, 0]])
    out, report = resolve_by_uniform_mapping(
        codes, torch.tensor([[0.0, 1.0], [0.0, 2.0]]), max_rounds=0
    )
    assert report["rounds"] == 0 and report["stopped"] == "max_rounds"
    assert report["fallback"] == "greedy_nearest_free"
    assert out.tolist() == [[0, 0], [0, 1]]  # tie at the shared code: item 0 keeps it


def test_uniform_mapping_rejects_padded_codes_and_mismatched_rows():
    with pytest.raises(ValueError, match="padding"):
        resolve_by_uniform_mapping(torch.tensor([[0, -1]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="rows"):
        resolve_by_uniform_mapping(torch.tensor([[0, 1]]), torch.zeros(2, 2))
