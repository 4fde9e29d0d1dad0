"""Trie-constrained beam search over item SIDs, batched over prompts.

Each prompt is encoded once (one prefill with ``use_cache=True``), so the prompt is never
re-encoded per beam as ``generate()`` does, and its KV cache is shared by its beams
(:mod:`semrec.decoding.shared_prefix`): only the generated SID tokens are kept per beam
(``share_prompt_cache=False``, or a cache type it cannot share: copied to each beam).
Beam bookkeeping is all tensors: at each step the live beams' children come from the
trie's CSR table, candidates of all beams of a prompt compete in one ``topk``, and the
cache is reordered through the public ``Cache.reorder_cache`` (see
:mod:`semrec.decoding.model_calls` for the transformers-version plumbing).

Score semantics (``score_mode``):

- ``"full_vocab"``: an item's score is the sum over its SID tokens of ``log_softmax`` over
  the whole vocabulary, i.e. ``log p(SID | prompt)`` under the model. This is what
  ``generate(num_beams=..., length_penalty=0)`` ranks by.
- ``"renormalized"``: at each step the softmax runs over the allowed tokens only, so the
  scores of all items under a prompt form a distribution over the catalog.

Beams: ``num_beams`` live (unfinished) prefixes are kept per prompt; a candidate that
reaches a terminal node (a whole item) moves to a pool of the ``num_beams`` best finished
items and frees its slot. With fixed-length SIDs this is exactly the classic beam search
(and ``generate()``'s); when ``num_beams`` is at least the number of items, nothing is ever
pruned and the result is the exact top-K. Excluded items (``exclude_items``, e.g. a user's
history) never enter the pool, so the top-K are the best items that are not excluded.

Whatever the logits (``-inf``, NaN), only real items are returned: a candidate is a child
edge of the trie or nothing; NaN scores count as ``-inf`` and still rank above slots that
hold no item. Slots with no item (fewer than K items reachable) hold item -1, score
``-inf`` and ``valid=False``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from semrec.decoding.model_calls import (
    LOWEST,
    NEG_INF,
    SCORE_MODES,
    ScoreMode,
    StepLogits,
    check_prompts,
    check_score_mode,
    check_vocabulary,
    child_log_probs,
    eval_context,
    gather_cache_rows,
    prompt_positions,
)
from semrec.decoding.shared_prefix import can_share, share_prompt_cache
from semrec.decoding.trie import SIDTrie

__all__ = ["SCORE_MODES", "ConstrainedBeamSearch", "DecodeResult", "ScoreMode"]


@dataclass(frozen=True)
class DecodeResult:
    """Top-K items per prompt, best first.

    ``items`` ``[B, K]`` are row indices into the trie's sequence list (-1 where ``valid`` is
    False), ``scores`` ``[B, K]`` their summed log-probabilities (``-inf`` where not valid).
    """

    items: torch.Tensor
    scores: torch.Tensor
    valid: torch.Tensor


class ConstrainedBeamSearch:
    """Beam search that can only spell SIDs present in a :class:`SIDTrie`.

    Args:
        num_beams: live prefixes kept per prompt (20 is the LC-Rec/TIGER default).
        score_mode: ``"full_vocab"`` or ``"renormalized"`` (see the module docstring).
        sid_rows_only: compute only the output-layer rows of SID tokens at SID steps
            (hidden state @ ``lm_head.weight[sid_ids].T``). Needs ``score_mode="renormalized"``
            (a full-vocabulary softmax needs every row). Supports plain ``nn.Linear`` heads
            and peft's ``trainable_token_indices`` / ``modules_to_save`` wrappers; other
            heads (e.g. LoRA on ``lm_head``) fall back to the full head, sliced afterwards.
            Models whose logits are not ``lm_head(last hidden state)`` (final logit
            soft-capping or scaling) and prompt-learning peft adapters are rejected.
        autocast_dtype: run the model under ``torch.autocast`` with this dtype (e.g.
            ``torch.bfloat16`` on CPUs with AMX); scores are always accumulated in float32.
        share_prompt_cache: keep one copy of each prompt's KV cache for all its beams
            (same results; off copies it per beam, the memory of ``generate()``).
    """

    def __init__(
        self,
        num_beams: int = 20,
        score_mode: ScoreMode = "full_vocab",
        sid_rows_only: bool = False,
        autocast_dtype: torch.dtype | None = None,
        share_prompt_cache: bool = True,
    ) -> None:
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        check_score_mode(score_mode)
        if sid_rows_only and score_mode != "renormalized":
            raise ValueError(
                "sid_rows_only=True needs score_mode='renormalized': a softmax over the full "
                "vocabulary needs every row of the output layer"
            )
        self.num_beams = num_beams
        self.score_mode = score_mode
        self.sid_rows_only = sid_rows_only
        self.autocast_dtype = autocast_dtype
        self.share_prompt_cache = share_prompt_cache

    def __repr__(self) -> str:
        return (
            f"ConstrainedBeamSearch(num_beams={self.num_beams}, score_mode={self.score_mode!r}, "
            f"sid_rows_only={self.sid_rows_only}, autocast_dtype={self.autocast_dtype}, "
            f"share_prompt_cache={self.share_prompt_cache})"
        )

    def search(
        self,
        model: nn.Module,
        trie: SIDTrie,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        top_k: int = 10,
        exclude_items: torch.Tensor | None = None,
    ) -> DecodeResult:
        """Top-``top_k`` items for each LEFT-padded prompt in ``input_ids`` ``[B, T]``.

        ``model`` is a Hugging Face causal LM (or a peft model wrapping one). It is put in
        eval mode for the search and restored afterwards. ``exclude_items`` ``[B, M]``
        (item ids, padded with -1) are never returned for their prompt.
        """
        if not 1 <= top_k <= self.num_beams:
            raise ValueError(f"top_k must be in [1, num_beams={self.num_beams}], got {top_k}")
        attention_mask = check_prompts(input_ids, attention_mask)
        device = input_ids.device
        trie = trie.to(device)
        excluded = exclusion_mask(exclude_items, len(input_ids), trie.num_items, device)
        step_fn = StepLogits(model, trie, self.sid_rows_only)
        with eval_context(model, device, self.autocast_dtype):
            return self._search(step_fn, trie, input_ids, attention_mask, top_k, excluded)

    # ------------------------------------------------------------------ internals

    def _search(
        self,
        step_fn: StepLogits,
        trie: SIDTrie,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        top_k: int,
        excluded: torch.Tensor | None,
    ) -> DecodeResult:
        batch, width = input_ids.shape[0], self.num_beams
        device = input_ids.device
        positions, prompt_len = prompt_positions(attention_mask)
        logits, cache = step_fn(input_ids, attention_mask, positions, None)
        if step_fn.token_column is None:
            check_vocabulary(trie, logits.shape[-1])
        shared = self.share_prompt_cache and can_share(cache)

        nodes = torch.zeros(batch, 1, dtype=torch.long, device=device)  # [B, w] live trie nodes
        scores = torch.zeros(batch, 1, device=device)  # [B, w] their summed log-probs
        pool = FinishedPool(batch, width, device, excluded)
        beam_mask = attention_mask
        for depth in range(trie.max_depth):
            live = nodes.shape[1]
            kids = trie.children(nodes.reshape(-1))
            fan = kids.tokens.shape[1]
            step = child_log_probs(logits, kids, self.score_mode, step_fn.token_column)
            total = scores.reshape(-1, 1) + step
            key = torch.where(kids.valid, total.clamp(min=LOWEST), NEG_INF)
            terminal = trie.is_terminal(kids.nodes)
            pool.add(
                key.masked_fill(~terminal, NEG_INF).reshape(batch, -1),
                total.reshape(batch, -1),
                trie.item_of(kids.nodes).reshape(batch, -1),
            )

            live_key = key.masked_fill(terminal, NEG_INF).reshape(batch, live * fan)
            if live_key.shape[1] < width:  # fewer candidates than beams: pad with nothing
                live_key = F.pad(live_key, (0, width - live_key.shape[1]), value=NEG_INF)
            best_key, best = live_key.topk(width, dim=1)
            alive = best_key > NEG_INF
            if not bool(alive.any()):
                break
            best = best.clamp(max=live * fan - 1)  # padded slots point at a real (dead) one
            nodes = torch.where(alive, kids.nodes.reshape(batch, -1).gather(1, best), -1)
            scores = torch.where(alive, total.reshape(batch, -1).gather(1, best), NEG_INF)
            tokens = kids.tokens.reshape(batch, -1).gather(1, best)

            source = (torch.arange(batch, device=device)[:, None] * live + best // fan).reshape(-1)
            if shared and depth == 0:  # one live beam per prompt: each of the width is on it
                cache = share_prompt_cache(cache, width)
            else:
                cache = gather_cache_rows(cache, source)
            beam_mask = torch.cat([beam_mask[source], beam_mask.new_ones(len(source), 1)], dim=1)
            step_pos = (prompt_len.repeat_interleave(width) + depth)[:, None]
            logits, cache = step_fn(tokens.reshape(-1, 1), beam_mask, step_pos, cache)
        return pool.result(top_k)


class FinishedPool:
    """The ``width`` best finished items per prompt, kept sorted by selection key.

    ``excluded`` ``[B, n_items + 1]`` (see :func:`exclusion_mask`) drops those items on
    entry; a key of ``-inf`` means "no item".
    """

    def __init__(
        self,
        batch: int,
        width: int,
        device: torch.device,
        excluded: torch.Tensor | None = None,
    ) -> None:
        self.width = width
        self.excluded = excluded
        self.keys = torch.full((batch, width), NEG_INF, device=device)
        self.scores = torch.full((batch, width), NEG_INF, device=device)
        self.items = torch.full((batch, width), -1, dtype=torch.long, device=device)

    def add(self, keys: torch.Tensor, scores: torch.Tensor, items: torch.Tensor) -> None:
        """Offer candidates ``[B, C]`` (key -inf: not an item); keeps the best ``width``."""
        if self.excluded is not None:
            dropped = self.excluded.gather(1, items % self.excluded.shape[1])  # -1: last column
            keys = keys.masked_fill(dropped, NEG_INF)
        keys = torch.cat([self.keys, keys], dim=1)
        self.keys, best = keys.topk(self.width, dim=1)
        self.scores = torch.cat([self.scores, scores], dim=1).gather(1, best)
        self.items = torch.cat([self.items, items], dim=1).gather(1, best)

    def result(self, top_k: int) -> DecodeResult:
        valid = self.keys[:, :top_k] > NEG_INF
        return DecodeResult(
            items=torch.where(valid, self.items[:, :top_k], -1),
            scores=torch.where(valid, self.scores[:, :top_k], NEG_INF),
            valid=valid,
        )


def exclusion_mask(
    exclude_items: torch.Tensor | None, batch: int, n_items: int, device: torch.device
) -> torch.Tensor | None:
    """Bool ``[B, n_items + 1]``: True where the prompt's item is excluded (last column: -1).

    ``exclude_items`` is a LongTensor ``[B, M]`` of item ids padded with -1 (or None).
    """
    if exclude_items is None:
        return None
    if (
        exclude_items.dim() != 2
        or len(exclude_items) != batch
        or exclude_items.dtype.is_floating_point
        or exclude_items.dtype == torch.bool
    ):
        raise ValueError(
            f"exclude_items must be an integer tensor [batch={batch}, M] of item ids padded "
            f"with -1, got {exclude_items.dtype} {tuple(exclude_items.shape)}"
        )
    exclude_items = exclude_items.to(device=device, dtype=torch.long)
    bad = (exclude_items < -1) | (exclude_items >= n_items)
    if bool(bad.any()):
        value = int(exclude_items[bad][0])
        raise ValueError(
            f"exclude_items holds item id {value}, outside [0, {n_items}) (-1 is padding)"
        )
    mask = torch.zeros(batch, n_items + 1, dtype=torch.bool, device=device)
    mask.scatter_(1, exclude_items % (n_items + 1), True)  # -1 lands in the last column
    mask[:, -1] = False
    return mask
