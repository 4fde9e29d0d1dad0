"""semrec: LLM-based generative recommendation with semantic IDs.

``semrec.load_recommender(DIR)`` serves a run exported with ``semrec export``; it is
imported on first use, so ``import semrec`` does not load torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_recommender"]


def __getattr__(name: str) -> Any:
    if name == "load_recommender":
        from semrec.serving.recommender import load_recommender

        return load_recommender
    raise AttributeError(f"module 'semrec' has no attribute {name!r}")
