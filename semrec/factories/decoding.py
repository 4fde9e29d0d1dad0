"""Evaluation-time decoding from ``eval:``: the SID trie, beam search, exact ranking."""

from __future__ import annotations

import torch

from semrec.config import EvalConfig
from semrec.decoding import ConstrainedBeamSearch, SIDTrie
from semrec.errors import RunError
from semrec.tokenizers import ItemTokenizer
from semrec.tokenizers.collisions import PAD


def sid_trie(tokenizer: ItemTokenizer, codes: torch.Tensor, hf_tokenizer) -> SIDTrie:
    """The trie of the SIDs of ``codes`` [n, levels] (row = item), in ``hf_tokenizer`` ids.

    The tokenizer is asked once per distinct (level, code), not once per item: at 1M items
    that is 0.5 s instead of 6 s.
    """
    token_ids = torch.full_like(codes, PAD)
    for level in range(codes.shape[1]):
        column = codes[:, level]
        used = torch.unique(column[column != PAD])
        ids = hf_tokenizer.convert_tokens_to_ids(
            [tokenizer.token(level, code) for code in used.tolist()]
        )
        table = torch.full((int(used.max()) + 1 if len(used) else 1,), PAD, dtype=codes.dtype)
        table[used] = torch.tensor(ids, dtype=codes.dtype)
        present = column != PAD
        token_ids[present, level] = table[column[present]]
    return SIDTrie.from_sequences(token_ids, vocab_size=len(hf_tokenizer))


def eval_autocast(cfg: EvalConfig) -> torch.dtype | None:
    """``eval.precision``: decoding runs in fp32 unless it says ``bf16`` (autocast)."""
    return torch.bfloat16 if cfg.precision == "bf16" else None


def beam_search(cfg: EvalConfig, num_beams: int | None = None) -> ConstrainedBeamSearch:
    """The constrained beam search of ``eval:`` (``num_beams`` overrides ``eval.num_beams``).

    A renormalised score reads only the SID rows of the output layer, so only those are
    computed (the same scores, without the text vocabulary's rows)."""
    return ConstrainedBeamSearch(
        num_beams=num_beams or cfg.num_beams,
        score_mode=cfg.score_mode,
        sid_rows_only=cfg.score_mode == "renormalized",
        autocast_dtype=eval_autocast(cfg),
    )


def exact_ranker(cfg: EvalConfig, n_items: int):
    """The exact full-ranking scorer (``eval.exact_ranking``), or None."""
    if not cfg.exact_ranking:
        return None
    if n_items > cfg.exact_max_items:
        raise RunError(
            f"eval.exact_ranking: the catalogue has {n_items} items, more than "
            f"eval.exact_max_items={cfg.exact_max_items}; raise that limit (exact ranking "
            "scores every item for every test user) or turn exact ranking off"
        )
    from semrec.decoding import ExactRanker

    return ExactRanker(
        score_mode=cfg.score_mode,
        autocast_dtype=eval_autocast(cfg),
        # renormalised scores need only the SID rows of the output layer (~15x faster)
        sid_rows_only=cfg.score_mode == "renormalized",
    )
