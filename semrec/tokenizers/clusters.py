"""Token-specific item clusters (TS-Rec Eq. 6): for each SID token, the items that carry it.

``I_s = {i | s in e_i}``: an item joins the cluster of every token in its SID, whatever the
level. TS-Rec's semantic extractor reads a random sample of each cluster
(:func:`sample_clusters`) and describes what its items share.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def token_clusters(item_tokens: Sequence[Sequence[str]]) -> dict[str, list[int]]:
    """Token -> ascending item indices whose SID contains it.

    ``item_tokens[i]`` is item ``i``'s SID as token strings (``ItemTokenizer.item_tokens``).
    Tokens are listed in order of first appearance; unused codebook entries get no cluster.
    """
    clusters: dict[str, list[int]] = {}
    for item, tokens in enumerate(item_tokens):
        for token in dict.fromkeys(tokens):  # a token twice in one SID counts the item once
            clusters.setdefault(token, []).append(item)
    return clusters


def sample_clusters(
    clusters: dict[str, list[int]], size: int, seed: int = 0
) -> dict[str, list[int]]:
    """At most ``size`` items per cluster, drawn without replacement, in ascending order.

    Each token's draw uses its own generator seeded by ``(seed, token)``, so a token's sample
    does not change when other tokens are added or removed.
    """
    if size < 1:
        raise ValueError(f"items per token must be >= 1, got {size}")
    sampled = {}
    for token, items in clusters.items():
        if len(items) <= size:
            sampled[token] = list(items)
        else:
            sampled[token] = sorted(random.Random(f"{seed}:{token}").sample(items, size))
    return sampled
