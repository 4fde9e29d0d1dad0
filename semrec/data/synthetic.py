"""A small synthetic dataset with a learnable rule, for smoke tests and tutorials.

Source ``synthetic``: ``name`` is ``"synthetic"`` or ``"synthetic-<users>-<items>"``. Every
user walks a fixed cycle over the items (item ``i`` is always followed by ``successor(i)``),
starting at a user-specific item, so the next item is a deterministic function of the last
one: a model that learns the rule reaches HR@1 = 1 on the held-out items. Item texts name
the item and its group, so text-based tokenizers give related items shared prefixes.
"""

from __future__ import annotations

import numpy as np

from semrec.data.dataset import DataError, RecDataset
from semrec.data.loaders import DATASET_LOADERS

SEQUENCE_LENGTH = 8
STRIDE = 7  # coprime with the default item count, so the walk visits every item


def successor(item: int, num_items: int) -> int:
    """The item that always follows ``item``."""
    return (item + STRIDE) % num_items


@DATASET_LOADERS.register("synthetic")
def load_synthetic(path: str | None = None, name: str | None = None) -> RecDataset:
    """Build the synthetic dataset (``path`` is ignored)."""
    name = name or "synthetic"
    parts = name.split("-")
    try:
        num_users, num_items = (int(parts[1]), int(parts[2])) if len(parts) == 3 else (48, 24)
    except ValueError:
        raise DataError(
            f"synthetic dataset name {name!r} must be 'synthetic-<users>-<items>'"
        ) from None
    if np.gcd(STRIDE, num_items) != 1 or num_items < SEQUENCE_LENGTH:
        raise DataError(f"synthetic dataset {name!r}: items must be >= 8 and coprime with {STRIDE}")
    users, items, stamps = [], [], []
    for user in range(num_users):
        item = (user * 5) % num_items
        for step in range(SEQUENCE_LENGTH):
            users.append(user)
            items.append(item)
            stamps.append(step)
            item = successor(item, num_items)
    groups = ["red", "green", "blue", "gold"]
    item_text = [
        {"title": f"item {i}", "categories": f"{groups[i % len(groups)]} group"}
        for i in range(num_items)
    ]
    return RecDataset(
        name=name,
        user_ids=[f"u{u}" for u in range(num_users)],
        item_ids=[f"i{i}" for i in range(num_items)],
        users=np.array(users, dtype=np.int64),
        items=np.array(items, dtype=np.int64),
        timestamps=np.array(stamps, dtype=np.int64),
        item_text=item_text,
        source=f"<synthetic:{name}>",
    )
