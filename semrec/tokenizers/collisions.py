"""Detecting and resolving semantic-ID collisions: pure functions on code matrices.

A code matrix is a LongTensor [n_items, levels]. A *collision* is two or more items with
the same full row. Variable-length SIDs pad their tail with -1 (:data:`PAD`); the
resolvers here take fixed-length matrices (no padding) and may produce padded ones.

Two resolutions:

* :func:`reassign_last_level` (TS-Rec): in each group of items sharing a SID, one item
  keeps its code and the others move, at random, to last-level codes that no item with the
  same prefix uses. Lengths stay fixed and the vocabulary does not grow.
* :func:`append_suffix_level` (LC-Rec's and TTDS's fallback): items in a collision group get
  an extra level numbering them 0..g-1. Unique items get no suffix (-1) unless
  ``suffix_all`` is set, in which case every item gets one and lengths stay fixed.
  Either way the SID set stays prefix-free: a unique item's prefix is never shared.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

#: Code for "this item has no token at this level" (tail padding of variable-length SIDs).
PAD = -1

#: What a tokenizer may do about collisions (:func:`resolve_collisions`).
COLLISION_STRATEGIES = ("reassign", "suffix", "none")
#: What ``reassign`` does when a prefix holds more items than the last level has codes.
OVERFLOW_POLICIES = ("error", "suffix")


def collision_groups(codes: torch.Tensor) -> list[torch.Tensor]:
    """Index groups (size >= 2) of items whose full code rows are identical.

    Each group is sorted ascending; groups are ordered by their smallest index.
    """
    _check_matrix(codes)
    if codes.shape[0] == 0:
        return []
    inverse, counts = _unique_rows(codes)
    shared = counts[inverse] > 1  # only rows in a group are split out (fast at 1M items)
    members = torch.nonzero(shared).flatten()
    members = members[torch.argsort(inverse[members], stable=True)]
    sizes = counts[counts > 1]
    groups = torch.split(members, sizes.tolist())
    firsts = members[torch.cumsum(sizes, 0) - sizes]  # each group's smallest index
    return [groups[i] for i in torch.argsort(firsts).tolist()]


def collision_rate(codes: torch.Tensor) -> float:
    """Fraction of items whose full SID is shared with at least one other item."""
    _check_matrix(codes)
    if codes.shape[0] == 0:
        return 0.0
    colliding = sum(group.numel() for group in collision_groups(codes))
    return colliding / codes.shape[0]


def reassign_last_level(
    codes: torch.Tensor,
    codebook_size: int,
    seed: int = 0,
    *,
    priority: torch.Tensor | None = None,
    strict: bool = True,
    fixed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Resolve collisions by moving all but one item of each group to a free last-level code.

    "Free" means no item with the same prefix (all levels but the last) uses that code, so
    the moved item stays under its prefix and cannot collide again. The item that keeps its
    code is the one with the smallest ``priority`` (e.g. quantisation error), ties and the
    no-priority case going to the lowest index; the others get distinct free codes drawn at
    random with ``seed``. Items outside collision groups are never touched.

    A prefix shared by more items than ``codebook_size`` cannot be resolved: with
    ``strict`` this raises ValueError; otherwise as many items as possible move and the rest
    keep colliding (resolve them with :func:`append_suffix_level`).

    ``fixed`` (bool [n]) marks items that never move, e.g. the catalogue's items when new
    ones are added: in a group with fixed members, every non-fixed member moves.
    """
    _check_fixed_length(codes)
    if codes.shape[1] == 0:
        raise ValueError("codes need at least one level to reassign")
    if bool((codes[:, -1] >= codebook_size).any()):
        raise ValueError(
            f"last-level codes go up to {int(codes[:, -1].max())}, "
            f"beyond codebook_size={codebook_size}"
        )
    _check_priority(priority, codes.shape[0])
    out = codes.clone()
    groups = collision_groups(codes)
    if not groups:
        return out

    prefix_of = _row_ids(codes[:, :-1])
    groups_by_prefix: dict[int, list[torch.Tensor]] = defaultdict(list)
    for group in groups:  # ordered by smallest index, so prefixes are visited in that order
        groups_by_prefix[int(prefix_of[group[0]])].append(group)

    generator = torch.Generator().manual_seed(seed)
    for prefix_id, prefix_groups in groups_by_prefix.items():
        members = (prefix_of == prefix_id).nonzero().flatten()
        used = set(codes[members, -1].tolist())
        free = [code for code in range(codebook_size) if code not in used]
        movers = [i for group in prefix_groups for i in _movers(group, priority, fixed)]
        if len(movers) > len(free) and strict:
            prefix = codes[members[0], :-1].tolist()
            raise ValueError(
                f"{members.numel()} items share the prefix {prefix} but the last level has "
                f"only {codebook_size} codes, so their collisions cannot be resolved by "
                "reassignment; use a bigger last-level codebook or the 'suffix' strategy"
            )
        picks = torch.randperm(len(free), generator=generator)[: len(movers)].tolist()
        for item, pick in zip(movers, picks):
            out[item, -1] = free[pick]
    return out


def append_suffix_level(
    codes: torch.Tensor,
    *,
    priority: torch.Tensor | None = None,
    suffix_all: bool = False,
) -> torch.Tensor:
    """Add one level that numbers the members of each collision group 0..g-1.

    Members are numbered by ascending ``priority`` (ties and no priority: by index).
    Items outside collision groups get -1 (no suffix token), or 0 with ``suffix_all``.
    The suffix level's codebook size is the largest group size (at least 1).
    """
    _check_fixed_length(codes)
    _check_priority(priority, codes.shape[0])
    suffix = torch.full((codes.shape[0],), 0 if suffix_all else PAD, dtype=torch.long)
    for group in collision_groups(codes):
        ranked = torch.tensor(_rank(group, priority), dtype=torch.long)
        suffix[ranked] = torch.arange(ranked.numel())
    return torch.cat([codes, suffix.unsqueeze(1)], dim=1)


def sid_lengths(codes: torch.Tensor) -> torch.Tensor:
    """Number of tokens per item (levels before the -1 tail). Padding must be a tail."""
    _check_matrix(codes)
    present = codes != PAD
    lengths = present.sum(dim=1)
    # A row is well formed iff its first `length` entries are the present ones.
    positions = torch.arange(codes.shape[1]).unsqueeze(0)
    if not torch.equal(present, positions < lengths.unsqueeze(1)):
        bad = int((present != (positions < lengths.unsqueeze(1))).any(dim=1).nonzero()[0])
        raise ValueError(f"item {bad} has a -1 code before a real one: {codes[bad].tolist()}")
    return lengths


def conflicts_with(existing: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """For each row of ``new``: does its SID equal, extend or prefix an existing SID?

    Such an item cannot be told apart from an existing one by a prefix-trie decoder.
    Both matrices may be -1 padded. Returns a BoolTensor [len(new)].
    """
    full, proper_prefixes = set(), set()
    for sid in _sids(existing):
        full.add(sid)
        proper_prefixes.update(sid[:cut] for cut in range(1, len(sid)))
    flags = [
        sid in full
        or sid in proper_prefixes
        or any(sid[:cut] in full for cut in range(1, len(sid)))
        for sid in _sids(new)
    ]
    return torch.tensor(flags, dtype=torch.bool)


def is_prefix_free(codes: torch.Tensor) -> bool:
    """True if no item's SID is a proper prefix of another's (needed by trie decoding)."""
    sids = set(_sids(codes))
    return not any(sid[:cut] in sids for sid in sids for cut in range(1, len(sid)))


def _sids(codes: torch.Tensor) -> list[tuple[int, ...]]:
    lengths = sid_lengths(codes).tolist()
    return [tuple(row[:length]) for row, length in zip(codes.tolist(), lengths)]


def _rank(group: torch.Tensor, priority: torch.Tensor | None) -> list[int]:
    """Group members best first: ascending priority, then ascending index."""
    members = group.tolist()
    if priority is None:
        return sorted(members)
    return sorted(members, key=lambda i: (float(priority[i]), i))


def _movers(
    group: torch.Tensor, priority: torch.Tensor | None, fixed: torch.Tensor | None
) -> list[int]:
    """The members of a collision group that must move: all but the best, or all non-fixed."""
    ranked = _rank(group, priority)
    if fixed is None or not bool(fixed[group].any()):
        return ranked[1:]
    return [i for i in ranked if not bool(fixed[i])]


def _row_ids(matrix: torch.Tensor) -> torch.Tensor:
    """An id per row such that equal rows get equal ids."""
    if matrix.shape[1] == 0:
        return torch.zeros(matrix.shape[0], dtype=torch.long)
    return _unique_rows(matrix)[0]


def _unique_rows(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(matrix, dim=0, return_inverse=True, return_counts=True)[1:]``.

    Rows are packed into one int64 key each (columns as digits of their own range, first
    column most significant: the keys sort as the rows do, so the ids are the same) when the
    ranges fit in 62 bits, which a 1-D unique sorts ~100x faster than rows at 1M items.
    """
    low = matrix.min(dim=0).values
    spans = (matrix.max(dim=0).values - low + 1).tolist()
    capacity = 1
    for span in spans:
        capacity *= span
    if capacity >= 2**62:
        _, inverse, counts = torch.unique(matrix, dim=0, return_inverse=True, return_counts=True)
        return inverse, counts
    keys = torch.zeros(matrix.shape[0], dtype=torch.long)
    for column, span in enumerate(spans):
        keys = keys * span + (matrix[:, column] - low[column])
    _, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
    return inverse, counts


def _check_matrix(codes: torch.Tensor) -> None:
    if not isinstance(codes, torch.Tensor) or codes.ndim != 2:
        shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"codes must be a 2-D LongTensor [items, levels], got {shape}")
    if codes.dtype != torch.long:
        raise ValueError(f"codes must have dtype torch.long, got {codes.dtype}")


def _check_fixed_length(codes: torch.Tensor) -> None:
    _check_matrix(codes)
    if bool((codes < 0).any()):
        item = int((codes < 0).any(dim=1).nonzero()[0])
        raise ValueError(
            f"codes must be fixed-length here (no -1 padding); item {item} has "
            f"{codes[item].tolist()}"
        )


def _check_priority(priority: torch.Tensor | None, n: int) -> None:
    if priority is not None and tuple(priority.shape) != (n,):
        raise ValueError(f"priority must have shape [{n}], got {tuple(priority.shape)}")


def resolve_collisions(
    raw: torch.Tensor,
    codebook_sizes: list[int],
    strategy: str,
    *,
    seed: int = 0,
    priority: torch.Tensor | None = None,
    on_overflow: str = "error",
    suffix_all: bool = False,
) -> tuple[torch.Tensor, list[int], dict[str, Any]]:
    """A quantiser's raw codes made collision-free: (codes, codebook sizes, resolution facts).

    ``strategy`` is one of :data:`COLLISION_STRATEGIES`: ``"reassign"``
    (:func:`reassign_last_level`; if a prefix overflows, ``on_overflow="suffix"`` then gives
    the remaining colliders an extra level, ``"error"`` raises ValueError), ``"suffix"``
    (:func:`append_suffix_level`) or ``"none"``. The item with the smallest ``priority``
    (e.g. quantisation error) keeps its code.
    """
    if strategy not in COLLISION_STRATEGIES:
        raise ValueError(f"collision must be one of {COLLISION_STRATEGIES}, got {strategy!r}")
    if on_overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"on_overflow must be one of {OVERFLOW_POLICIES}, got {on_overflow!r}")
    sizes = list(codebook_sizes)
    if strategy == "none":
        return raw, sizes, {"strategy": "none"}
    if strategy == "suffix":
        codes = append_suffix_level(raw, priority=priority, suffix_all=suffix_all)
        return (
            codes,
            [*sizes, _suffix_size(codes)],
            {"strategy": "suffix", "items_with_suffix": int((codes[:, -1] != PAD).sum())},
        )
    codes = reassign_last_level(
        raw, sizes[-1], seed, priority=priority, strict=on_overflow == "error"
    )
    resolution: dict[str, Any] = {
        "strategy": "reassign",
        "items_reassigned": int((codes != raw).any(dim=1).sum()),
    }
    if collision_groups(codes):  # only reachable with on_overflow="suffix"
        codes = append_suffix_level(codes, priority=priority)
        sizes.append(_suffix_size(codes))
        resolution["items_with_suffix"] = int((codes[:, -1] != PAD).sum())
    return codes, sizes, resolution


def _suffix_size(codes: torch.Tensor) -> int:
    """Codebook size of an appended suffix level: its largest code + 1 (at least 1)."""
    return max(int(codes[:, -1].max()) + 1, 1)
