"""k-core filtering and the leave-one-out split, against hand-computed and brute-force answers."""

from __future__ import annotations

import numpy as np
import pytest

from semrec.data import DataError, Example, RecDataset, kcore_filter, leave_one_out


def toy(rows: list[tuple[str, str, int]], item_ids: list[str] | None = None) -> RecDataset:
    """Dataset from (user, item, timestamp) rows in file order; ids indexed by first use."""
    user_ids = list(dict.fromkeys(u for u, _, _ in rows))
    item_ids = item_ids or list(dict.fromkeys(i for _, i, _ in rows))
    return RecDataset(
        name="toy",
        user_ids=user_ids,
        item_ids=item_ids,
        users=[user_ids.index(u) for u, _, _ in rows],
        items=[item_ids.index(i) for _, i, _ in rows],
        timestamps=[t for _, _, t in rows],
        source="toy.inter",
    )


ITEMS = ["i0", "i1", "i2", "i3", "i4", "i5"]
# u1 chronologically: i0(10) i1(20) i2(30) i4(30) i5(40): i2 and i4 tie, i2 is first in file
ROWS = [
    ("u1", "i0", 10),
    ("u2", "i3", 5),
    ("u1", "i2", 30),
    ("u1", "i1", 20),
    ("u1", "i4", 30),
    ("u1", "i5", 40),
    ("u2", "i4", 6),
    ("u2", "i5", 7),
]


def test_leave_one_out_by_hand() -> None:
    split = leave_one_out(toy(ROWS, ITEMS), max_history=20)
    assert split.test == [Example(0, (0, 1, 2, 4), 5), Example(1, (3, 4), 5)]
    assert split.valid == [Example(0, (0, 1, 2), 4), Example(1, (3,), 4)]
    # train part of u1 is [0, 1, 2]: targets s[1], s[2]; u2's train part [3] yields none
    assert split.train == [Example(0, (0,), 1), Example(0, (0, 1), 2)]
    assert split.train_item_counts().tolist() == [1, 1, 1, 1, 0, 0]
    assert (split.num_users, split.num_items, split.dropped_users) == (2, 6, 0)
    assert split.summary()["train_examples"] == 2


def test_timestamp_ties_follow_file_order() -> None:
    swapped = list(ROWS)
    swapped[2], swapped[4] = swapped[4], swapped[2]  # now i4 comes before i2 in the file
    split = leave_one_out(toy(swapped, ITEMS))
    assert split.test[0] == Example(0, (0, 1, 4, 2), 5)
    assert split.valid[0] == Example(0, (0, 1, 4), 2)


def test_history_cap_and_train_example_cap() -> None:
    ds = toy(ROWS, ITEMS)
    capped = leave_one_out(ds, max_history=2)
    assert capped.test[0] == Example(0, (2, 4), 5)
    assert capped.valid[0] == Example(0, (1, 2), 4)
    assert capped.train == [Example(0, (0,), 1), Example(0, (0, 1), 2)]
    recent = leave_one_out(ds, max_train_examples_per_user=1)
    assert recent.train == [Example(0, (0, 1), 2)]
    assert recent.train_item_counts().tolist() == [1, 1, 1, 1, 0, 0]  # counts ignore the cap


def test_short_users_error_or_drop() -> None:
    rows = ROWS + [("u3", "i0", 1), ("u3", "i1", 2), ("u4", "i1", 3)]
    ds = toy(rows, ITEMS)
    with pytest.raises(DataError) as err:
        leave_one_out(ds)
    message = str(err.value)
    assert message.startswith("toy.inter: user 'u3' has 2 interaction(s)")
    assert "2 of 4 users have fewer than 3" in message
    assert "dataset.short_users: drop" in message and "k-core" in message

    split = leave_one_out(ds, short_users="drop")
    assert split.dropped_users == 2 and split.summary()["dropped_users"] == 2
    assert [ex.user for ex in split.test] == [0, 1]
    assert split.train_item_counts().tolist() == [1, 1, 1, 1, 0, 0]


def test_bad_arguments() -> None:
    ds = toy(ROWS, ITEMS)
    with pytest.raises(ValueError, match="max_history"):
        leave_one_out(ds, max_history=0)
    with pytest.raises(ValueError, match="short_users"):
        leave_one_out(ds, short_users="ignore")  # type: ignore[arg-type]


def reference_leave_one_out(rows, max_history, max_train):
    """Plain-Python reference: sort each user's rows by (timestamp, file position)."""
    per_user: dict[int, list[tuple[int, int, int]]] = {}
    for position, (user, item, timestamp) in enumerate(rows):
        per_user.setdefault(user, []).append((timestamp, position, item))
    train, valid, test = [], [], []
    for user in sorted(per_user):
        seq = [item for _, _, item in sorted(per_user[user])]
        n = len(seq)
        user_train = [Example(user, tuple(seq[:t][-max_history:]), seq[t]) for t in range(1, n - 2)]
        train += user_train[-max_train:]
        valid.append(Example(user, tuple(seq[: n - 2][-max_history:]), seq[n - 2]))
        test.append(Example(user, tuple(seq[: n - 1][-max_history:]), seq[n - 1]))
    return train, valid, test


def test_leave_one_out_matches_reference_on_random_data() -> None:
    rng = np.random.default_rng(0)
    num_users, num_items, n = 30, 12, 400
    users = np.concatenate([np.repeat(np.arange(num_users), 3), rng.integers(0, num_users, n)])
    items = rng.integers(0, num_items, len(users))
    timestamps = rng.integers(0, 8, len(users))  # many ties
    ds = RecDataset(
        "random",
        [f"u{u}" for u in range(num_users)],
        [f"i{i}" for i in range(num_items)],
        users=users,
        items=items,
        timestamps=timestamps,
    )
    split = leave_one_out(ds, max_history=4, max_train_examples_per_user=5)
    rows = list(zip(users.tolist(), items.tolist(), timestamps.tolist()))
    train, valid, test = reference_leave_one_out(rows, max_history=4, max_train=5)
    assert (split.train, split.valid, split.test) == (train, valid, test)


def test_kcore_by_hand() -> None:
    # k=2. Round 1 drops user D (1 interaction) and items z, w (1 each); then C is left
    # with only x and goes in round 2. What remains: A and B with x and y.
    rows = [
        ("A", "x", 1),
        ("C", "z", 2),
        ("B", "y", 3),
        ("A", "y", 4),
        ("C", "x", 5),
        ("D", "w", 6),
        ("B", "x", 7),
    ]
    ds = toy(rows, item_ids=["w", "x", "y", "z"])
    ds.item_text = [{"title": t} for t in "WXYZ"]
    ds.precomputed_sids = [[f"<a_{k}>"] for k in range(4)]
    ds.user_features = [{"name": u} for u in ds.user_ids]
    core = kcore_filter(ds, 2)
    assert core.user_ids == ["A", "B"]
    assert core.item_ids == ["x", "y"]
    assert core.users.tolist() == [0, 1, 0, 1]
    assert core.items.tolist() == [0, 1, 1, 0]
    assert core.timestamps.tolist() == [1, 3, 4, 7]
    assert core.item_text == [{"title": "X"}, {"title": "Y"}]
    assert core.precomputed_sids == [["<a_1>"], ["<a_2>"]]
    assert core.user_features == [{"name": "A"}, {"name": "B"}]
    assert kcore_filter(ds, 1) is ds
    empty = kcore_filter(ds, 3)
    assert (empty.num_users, empty.num_items, empty.num_interactions) == (0, 0, 0)


def test_kcore_result_is_a_core_on_random_data() -> None:
    rng = np.random.default_rng(1)
    users, items = rng.integers(0, 40, 300), rng.integers(0, 25, 300)
    ds = RecDataset(
        "random",
        [f"u{u}" for u in range(40)],
        [f"i{i}" for i in range(25)],
        users=users,
        items=items,
        timestamps=np.arange(300),
    )
    core = kcore_filter(ds, 4)
    assert core.num_interactions > 0
    assert np.bincount(core.users).min() >= 4 and np.bincount(core.items).min() >= 4
    pairs = {(ds.user_ids[u], ds.item_ids[i]) for u, i in zip(users, items)}
    core_pairs = {(core.user_ids[u], core.item_ids[i]) for u, i in zip(core.users, core.items)}
    assert core_pairs <= pairs
    # brute force: repeatedly remove any interaction whose user or item has < k
    alive = list(range(300))
    changed = True
    while changed:
        uc = np.bincount(users[alive], minlength=40)
        ic = np.bincount(items[alive], minlength=25)
        survivors = [j for j in alive if uc[users[j]] >= 4 and ic[items[j]] >= 4]
        changed = len(survivors) != len(alive)
        alive = survivors
    assert core.timestamps.tolist() == alive
