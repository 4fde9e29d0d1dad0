"""Brute-force exact scoring of every item: the correctness reference for the decoder.

Each item's full SID is appended to the (unpadded) prompt and teacher-forced through the
model in one forward pass without any cache, so nothing here shares code with the beam
search except the model. Cost is ``B * n_items`` sequences: for tests and small catalogs.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from semrec.decoding.model_calls import ScoreMode, check_prompts, check_score_mode
from semrec.decoding.trie import PAD, SIDTrie


@torch.no_grad()
def exact_item_scores(
    model: nn.Module,
    trie: SIDTrie,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    score_mode: ScoreMode = "full_vocab",
    item_chunk: int = 512,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``log p(SID(item) | prompt)`` for every prompt and item: FloatTensor ``[B, n_items]``.

    ``score_mode`` has the decoder's meaning: ``"full_vocab"`` sums ``log_softmax`` over the
    vocabulary; ``"renormalized"`` renormalises each step over the tokens that continue some
    item's SID (found here by brute-force grouping of the raw sequences, not the trie).
    Prompts are LEFT padded, as for the decoder.
    """
    check_score_mode(score_mode)
    attention_mask = check_prompts(input_ids, attention_mask)
    device = input_ids.device
    seqs = trie.sequences.to(device)
    n_items, max_len = seqs.shape
    is_token = seqs != PAD
    targets = seqs.clamp(min=0)

    was_training = model.training
    model.eval()
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    out = torch.empty(len(input_ids), n_items, device=device)
    try:
        for b in range(len(input_ids)):
            prompt = input_ids[b][attention_mask[b].bool()]
            start = len(prompt) - 1  # logits at this position predict the first SID token
            for lo in range(0, n_items, item_chunk):
                hi = min(lo + item_chunk, n_items)
                ids = torch.cat([prompt.expand(hi - lo, -1), targets[lo:hi]], dim=1)
                mask = torch.cat([torch.ones_like(prompt).expand(hi - lo, -1), is_token[lo:hi]], 1)
                with autocast:
                    logits = model(input_ids=ids, attention_mask=mask.long()).logits
                logits = logits[:, start : start + max_len].float()
                if score_mode == "renormalized":
                    for d in range(max_len):
                        allowed = _allowed_tokens(seqs, lo, hi, d, logits.shape[-1])
                        logits[:, d] = logits[:, d].masked_fill(~allowed, float("-inf"))
                logp = logits.log_softmax(dim=-1).gather(2, targets[lo:hi, :, None]).squeeze(2)
                out[b, lo:hi] = logp.masked_fill(~is_token[lo:hi], 0.0).sum(dim=1)
    finally:
        model.train(was_training)
    return out


def _allowed_tokens(seqs: torch.Tensor, lo: int, hi: int, depth: int, vocab: int) -> torch.Tensor:
    """``[hi - lo, vocab]`` bool: the tokens at ``depth`` of every item sharing the prefix."""
    same_prefix = (seqs[lo:hi, None, :depth] == seqs[None, :, :depth]).all(dim=-1)
    same_prefix &= (seqs[:, depth] != PAD)[None, :]
    rows, others = torch.nonzero(same_prefix, as_tuple=True)
    allowed = torch.zeros(hi - lo, vocab, dtype=torch.bool, device=seqs.device)
    allowed[rows, seqs[others, depth]] = True
    return allowed
