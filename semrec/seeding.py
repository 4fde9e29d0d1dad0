"""One way to make a fit reproducible: a seeded, private torch RNG state, optionally
deterministic kernels and a thread count, all restored when the fit ends.

Every training loop of semrec (the LLM's Lightning fit aside, which Lightning seeds) runs
inside :func:`seeded`: the sequential recommenders (:mod:`semrec.cf`), LightGCN, the
tokenizers' small CPU trainer, RQ-VAE model construction and the dynamic tokenizers'
initialisation. A change to seeding, threads or determinism is made here once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded(
    seed: int, *, deterministic: bool = False, num_threads: int | None = None
) -> Iterator[torch.Generator]:
    """Run the block with torch's global RNG seeded by ``seed``; yields a generator seeded
    the same way (for data order).

    The caller's RNG state is restored afterwards (``torch.random.fork_rng``, CPU only), so
    a fit neither depends on nor disturbs what ran before it. ``deterministic`` switches on
    deterministic kernels (warn-only) and ``num_threads`` sets torch's intra-op threads for
    the block; both are restored too.
    """
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
            if num_threads is not None:
                torch.set_num_threads(num_threads)
            yield torch.Generator().manual_seed(seed)
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=warn_only)
        torch.set_num_threads(threads)
