"""Which process of a multi-process (DDP/FSDP/DeepSpeed) run this is, before and during training.

Lightning's strategies start the processes (its own launcher for ``devices > 1`` on one
node, or ``torchrun`` / SLURM); semrec only asks which one it is, so that one process
writes the run directory and the others read it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def is_rank_zero() -> bool:
    """True in the process that writes the run directory (global rank 0).

    Read from the launcher's environment, so it is known before Lightning's Trainer starts,
    in Lightning's order: ``RANK`` (torchrun) decides; else a non-zero ``LOCAL_RANK`` or
    ``NODE_RANK`` (Lightning's own launcher, whose children also inherit an interactive
    SLURM job's ``SLURM_PROCID=0``) means another process; else ``SLURM_PROCID`` or
    ``JSM_NAMESPACE_RANK``. A process started by none of them is rank zero.
    """
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    for name in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        if int(os.environ.get(name, "0")) != 0:
            return False
    for name in ("SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if name in os.environ:
            return int(os.environ[name]) == 0
    return True


def shard(rows: Sequence[T], rank: int, world: int) -> list[T]:
    """Process ``rank``'s share of ``rows`` (every ``world``-th, starting at ``rank``): the
    shares of all ranks are disjoint, cover ``rows``, and differ in size by at most one."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world} processes")
    return list(rows[rank::world])


def shard_batches(batches: Sequence[list[int]], rank: int, world: int) -> list[list[int]]:
    """Process ``rank``'s part of each global batch: every rank gets as many batches, and
    every index lands in exactly one rank's batch (no padding, no dropped examples).

    A global batch smaller than ``world`` (the epoch's remainder) joins another batch,
    since every rank must step together. With ``world == 1`` the batches are unchanged.
    """
    if world == 1:
        return [list(batch) for batch in batches]
    full = [list(batch) for batch in batches if len(batch) >= world]
    short = [index for batch in batches if len(batch) < world for index in batch]
    if not full:
        raise ValueError(
            f"{len(short)} training examples cannot give each of {world} processes a batch"
        )
    full[-1].extend(short)
    return [shard(batch, rank, world) for batch in full]
