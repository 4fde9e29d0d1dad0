"""Collision detection and resolution on hand-checked code matrices."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from semrec.tokenizers.collisions import (
    append_suffix_level,
    collision_groups,
    collision_rate,
    conflicts_with,
    is_prefix_free,
    reassign_last_level,
    sid_lengths,
)

# Items 0,1 collide on (0,0,0); items 3,4,5 on (1,2,3); 2 and 6 are unique.
CODES = torch.tensor([[0, 0, 0], [0, 0, 0], [0, 0, 1], [1, 2, 3], [1, 2, 3], [1, 2, 3], [2, 0, 0]])


def test_collision_groups_and_rate():
    groups = collision_groups(CODES)
    assert [g.tolist() for g in groups] == [[0, 1], [3, 4, 5]]
    assert collision_rate(CODES) == pytest.approx(5 / 7)
    assert collision_groups(torch.eye(3, dtype=torch.long)) == []
    assert collision_rate(torch.eye(3, dtype=torch.long)) == 0.0


def test_reassign_uses_only_free_codes_under_the_same_prefix():
    out = reassign_last_level(CODES, codebook_size=4, seed=0)
    assert torch.equal(out[:, :2], CODES[:, :2])  # only the last level changes
    for untouched in (0, 2, 3, 6):  # keepers (lowest index) and unique items
        assert torch.equal(out[untouched], CODES[untouched])
    assert out[1, 2].item() in {2, 3}  # (0,0,*) already uses 0 and 1
    moved = {out[4, 2].item(), out[5, 2].item()}
    assert len(moved) == 2 and moved <= {0, 1, 2}  # (1,2,*) already uses 3
    assert collision_rate(out) == 0.0


def test_reassign_is_seeded_and_random():
    first = reassign_last_level(CODES, 4, seed=5)
    assert torch.equal(first, reassign_last_level(CODES, 4, seed=5))
    picks = {reassign_last_level(CODES, 4, seed=s)[1, 2].item() for s in range(20)}
    assert picks == {2, 3}


def test_reassign_keeps_the_item_with_best_priority():
    priority = torch.tensor([5.0, 1.0, 0.0, 0.3, 0.1, 0.2, 0.0])
    out = reassign_last_level(CODES, 4, seed=0, priority=priority)
    assert torch.equal(out[1], CODES[1])  # item 1 beats item 0
    assert torch.equal(out[4], CODES[4])  # item 4 has the smallest priority of 3,4,5
    assert out[0, 2].item() in {2, 3}
    assert collision_rate(out) == 0.0


def test_reassign_overflow_raises_or_resolves_what_it_can():
    codes = torch.tensor([[0, 1], [0, 1], [0, 1], [1, 0]])  # three items under prefix (0,)
    with pytest.raises(ValueError, match=r"3 items share the prefix \[0\].*'suffix' strategy"):
        reassign_last_level(codes, codebook_size=2)
    partial = reassign_last_level(codes, codebook_size=2, strict=False)
    assert partial[:, 1].tolist()[:3].count(0) == 1  # one item moved to the only free code
    assert [g.tolist() for g in collision_groups(partial)] != []  # the third still collides
    resolved = append_suffix_level(partial)
    assert collision_rate(resolved) == 0.0 and is_prefix_free(resolved)


def test_reassign_rejects_padding_and_out_of_range_codes():
    with pytest.raises(ValueError, match="item 1"):
        reassign_last_level(torch.tensor([[0, 0], [0, -1]]), 4)
    with pytest.raises(ValueError, match="beyond codebook_size=4"):
        reassign_last_level(torch.tensor([[0, 4], [0, 4]]), 4)


def test_append_suffix_level():
    out = append_suffix_level(CODES)
    assert out[:, 3].tolist() == [0, 1, -1, 0, 1, 2, -1]
    assert torch.equal(out[:, :3], CODES)
    assert is_prefix_free(out) and collision_rate(out) == 0.0
    every = append_suffix_level(CODES, suffix_all=True)
    assert every[:, 3].tolist() == [0, 1, 0, 0, 1, 2, 0]
    priority = torch.tensor([0.0, 0.0, 0.0, 0.5, 0.2, 0.9, 0.0])
    ranked = append_suffix_level(CODES, priority=priority)
    assert ranked[3:6, 3].tolist() == [1, 0, 2]


def test_conflicts_and_prefix_freedom():
    existing = torch.tensor([[0, 0, 1, -1], [0, 0, 0, 0], [0, 0, 0, 1]])
    new = torch.tensor(
        [
            [0, 0, 1, -1],  # identical
            [0, 0, -1, -1],  # prefix of existing items
            [0, 0, 0, -1],  # prefix of (0,0,0,0)
            [0, 0, 1, 5],  # extends (0,0,1)
            [3, 3, 3, -1],  # free
        ]
    )
    assert conflicts_with(existing, new).tolist() == [True, True, True, True, False]
    assert is_prefix_free(existing)
    assert not is_prefix_free(torch.tensor([[0, 0, 0, -1], [0, 0, 0, 1]]))


def test_sid_lengths_rejects_holes():
    assert sid_lengths(torch.tensor([[1, 2, -1], [1, 2, 3]])).tolist() == [2, 3]
    with pytest.raises(ValueError, match="item 0"):
        sid_lengths(torch.tensor([[1, -1, 3]]))


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 1), st.integers(0, 5)), min_size=1, max_size=30
    ),
    seed=st.integers(0, 1000),
)
def test_reassign_properties(rows, seed):
    codes = torch.tensor(rows, dtype=torch.long)
    size = 6
    prefixes = [tuple(r[:2]) for r in rows]
    if max(prefixes.count(p) for p in prefixes) > size:
        with pytest.raises(ValueError, match="cannot be resolved"):
            reassign_last_level(codes, size, seed)
        return
    out = reassign_last_level(codes, size, seed)
    assert collision_rate(out) == 0.0
    assert torch.equal(out[:, :2], codes[:, :2])
    colliding = {int(i) for group in collision_groups(codes) for i in group}
    for item in range(len(rows)):
        if item not in colliding:
            assert torch.equal(out[item], codes[item])
        elif not torch.equal(out[item], codes[item]):
            used_before = {r[2] for r in rows if tuple(r[:2]) == prefixes[item]}
            assert out[item, 2].item() not in used_before
    # Exactly one item per original collision group keeps its code.
    for group in collision_groups(codes):
        kept = [int(i) for i in group if torch.equal(out[i], codes[i])]
        assert kept == [int(group[0])]
