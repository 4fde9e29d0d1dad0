"""Packing instruction pairs: several (prompt, response) pairs in one training sequence.

Text-task pairs vary in length (an LC-Rec alignment pair may hold 40 tokens, a sequential
prompt 150), so a batch of pairs padded to its longest wastes work even with length
bucketing. A *pack* lays pairs end to end in one row instead. Each pair keeps its own
positions (restarting at 0, as in its standalone sequence) and attends only to its own
earlier tokens (a block-diagonal causal mask), so every pair scores exactly as it does
alone (tested); only the padding goes away.

:func:`pack_indices` groups pairs by best-fit decreasing, deterministically;
:func:`collate_packs` builds the batch (``attention_mask`` as a boolean ``[B, 1, T, T]``
mask, True: may attend, and ``position_ids``), the same batch layout as the compact
format's windows.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from semrec.prompts.batching import IGNORE_INDEX, EncodedPair, causal_attention_mask


def pack_indices(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Groups of indices into ``lengths`` whose lengths sum to at most ``capacity``.

    Best-fit decreasing: the longest item first, each into the fullest pack it still fits
    (a new pack when none has room). Every index is in exactly one group; an item longer
    than ``capacity`` is a group of its own. Each group lists its indices in ascending order.
    """
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    packs: list[list[int]] = []
    # (room left, pack index) of the packs that can still take something, sorted
    open_packs: list[tuple[int, int]] = []
    for index in order:
        length = lengths[index]
        slot = bisect.bisect_left(open_packs, (length, -1))
        if slot == len(open_packs):
            packs.append([index])
            room, pack = capacity - length, len(packs) - 1
        else:
            room, pack = open_packs.pop(slot)
            packs[pack].append(index)
            room -= length
        if room > 0:
            bisect.insort(open_packs, (room, pack))
    return [sorted(pack) for pack in packs]


def collate_packs(packs: Sequence[Sequence[EncodedPair]], pad_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch of packs: ``input_ids``, ``labels``, a block-diagonal causal
    ``attention_mask`` ``[B, 1, T, T]`` and ``position_ids`` restarting at every pair."""
    width = max(sum(len(ids) for ids, _ in pack) for pack in packs)
    batch = len(packs)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((batch, width), dtype=torch.long)
    segment = torch.full((batch, width), -1, dtype=torch.long)  # -1: padding
    for row, pack in enumerate(packs):
        start = 0
        for number, (ids, labs) in enumerate(pack):
            if len(ids) != len(labs):
                raise ValueError(f"a pair has {len(ids)} input ids and {len(labs)} labels")
            stop = start + len(ids)
            input_ids[row, start:stop] = torch.tensor(ids, dtype=torch.long)
            labels[row, start:stop] = torch.tensor(labs, dtype=torch.long)
            positions[row, start:stop] = torch.arange(len(ids))
            segment[row, start:stop] = number
            start = stop
    same = (segment.unsqueeze(2) == segment.unsqueeze(1)) & (segment.unsqueeze(1) >= 0)
    return {
        "input_ids": input_ids,
        "attention_mask": causal_attention_mask(same),
        "position_ids": positions,
        "labels": labels,
    }
