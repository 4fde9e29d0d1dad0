"""Exact full-catalog ranking: ``log p(SID(item) | prompt)`` for every item.

:class:`ExactRanker` scores what :class:`~semrec.decoding.beam_search.ConstrainedBeamSearch`
approximates (same ``score_mode`` semantics, same model calls), so its top-K is the
decoder's top-K with ``num_beams >= n_items``. Unlike the brute-force reference
(:func:`~semrec.decoding.reference.exact_item_scores`, which re-encodes the prompt for
every item) each prompt is encoded once; the trie's internal nodes are then scored level
by level: at depth ``d`` every (prompt, internal node) pair is a row, a chunk of rows gets
its prompts' KV cache (``Cache.reorder_cache`` on a copy) and the node's ``d`` prefix
tokens, and the last position's logits give the log-probabilities of the node's
children. An item's score is the sum of the edge log-probabilities on its path.
"""

from __future__ import annotations

import torch
from torch import nn

from semrec.decoding.beam_search import DecodeResult, FinishedPool, exclusion_mask
from semrec.decoding.model_calls import (
    LOWEST,
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
from semrec.decoding.trie import SIDTrie


class ExactRanker:
    """Scores every item of a trie for each prompt, encoding each prompt once.

    Cost, for B prompts of padded length T and a trie with ``n_d`` internal (non-leaf)
    nodes at depth ``d``: one prefill of the B prompts, then ``sum_d B * n_d`` rows of
    ``d`` tokens each (for 4-level SIDs over 10k items, ~20k rows and ~50k tokens per
    prompt; beam search with 20 beams feeds 60), every row attending to its prompt's T
    cached positions and computing one output-layer row set (the full vocabulary, or only
    the SID tokens with ``sid_rows_only``; the full head is most of the work for a large
    vocabulary). Memory is bounded per chunk: ``chunk_size`` rows x (T + depth) cached
    positions x the model's KV size per position, plus ``chunk_size`` x vocabulary logits.

    Args:
        score_mode: ``"full_vocab"`` or ``"renormalized"``, as for the decoder.
        autocast_dtype: run the model under ``torch.autocast`` with this dtype; scores are
            accumulated in float32.
        chunk_size: (prompt, prefix) rows per forward pass.
        sid_rows_only: compute only the SID rows of the output layer (needs
            ``score_mode="renormalized"``; see the decoder).
    """

    def __init__(
        self,
        score_mode: ScoreMode = "full_vocab",
        autocast_dtype: torch.dtype | None = None,
        chunk_size: int = 256,
        sid_rows_only: bool = False,
    ) -> None:
        check_score_mode(score_mode)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if sid_rows_only and score_mode != "renormalized":
            raise ValueError("sid_rows_only=True needs score_mode='renormalized'")
        self.score_mode = score_mode
        self.autocast_dtype = autocast_dtype
        self.chunk_size = chunk_size
        self.sid_rows_only = sid_rows_only

    def __repr__(self) -> str:
        return (
            f"ExactRanker(score_mode={self.score_mode!r}, autocast_dtype={self.autocast_dtype}, "
            f"chunk_size={self.chunk_size}, sid_rows_only={self.sid_rows_only})"
        )

    def item_scores(
        self,
        model: nn.Module,
        trie: SIDTrie,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``log p(SID(item) | prompt)`` FloatTensor ``[B, n_items]`` for LEFT-padded prompts.

        NaN or ``+inf`` log-probabilities count as ``-inf``, as in the decoder.
        """
        attention_mask = check_prompts(input_ids, attention_mask)
        device = input_ids.device
        trie = trie.to(device)
        step_fn = StepLogits(model, trie, self.sid_rows_only)
        with eval_context(model, device, self.autocast_dtype):
            edges = self._edge_log_probs(step_fn, trie, input_ids, attention_mask)
        path = torch.zeros_like(edges)  # path[:, n]: summed log-probs from the root to n
        for depth in range(1, trie.max_depth + 1):  # nodes are numbered breadth-first
            nodes = torch.nonzero(trie.node_depth == depth).squeeze(1)
            path[:, nodes] = path[:, trie.node_parent[nodes]] + edges[:, nodes]
        return path[:, trie.item_node]

    def top_k(
        self,
        model: nn.Module,
        trie: SIDTrie,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        k: int = 10,
        exclude_items: torch.Tensor | None = None,
    ) -> DecodeResult:
        """The ``k`` best items per prompt (excluding ``exclude_items``, ids padded with -1)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        scores = self.item_scores(model, trie, input_ids, attention_mask)
        batch, n_items = scores.shape
        excluded = exclusion_mask(exclude_items, batch, n_items, scores.device)
        pool = FinishedPool(batch, k, scores.device, excluded)
        items = torch.arange(n_items, device=scores.device).expand(batch, -1)
        pool.add(scores.clamp(min=LOWEST), scores, items)
        return pool.result(k)

    # ------------------------------------------------------------------ internals

    def _edge_log_probs(
        self,
        step_fn: StepLogits,
        trie: SIDTrie,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """``[B, n_nodes]``: log-probability of the edge into each node (0 for the root)."""
        batch, device = len(input_ids), input_ids.device
        positions, prompt_len = prompt_positions(attention_mask)
        logits, prompt_cache = step_fn(input_ids, attention_mask, positions, None)
        if step_fn.token_column is None:
            check_vocabulary(trie, logits.shape[-1])
        edges = torch.zeros(batch, trie.num_nodes, device=device)
        prompts = torch.arange(batch, device=device)
        self._score_children(edges, trie, step_fn, logits, prompts, torch.zeros_like(prompts))

        inner = trie.child_count > 0
        for depth in range(1, trie.max_depth):
            nodes = torch.nonzero(inner & (trie.node_depth == depth)).squeeze(1)
            row_prompt = prompts.repeat_interleave(len(nodes))
            row_node = nodes.repeat(batch)
            for lo in range(0, len(row_node), self.chunk_size):
                b = row_prompt[lo : lo + self.chunk_size]
                n = row_node[lo : lo + self.chunk_size]
                cache = gather_cache_rows(prompt_cache, b, copy_first=True)
                mask = torch.cat([attention_mask[b], attention_mask.new_ones(len(b), depth)], 1)
                pos = prompt_len[b, None] + torch.arange(depth, device=device)
                logits, _ = step_fn(trie.path_tokens(n, depth), mask, pos, cache)
                del cache
                self._score_children(edges, trie, step_fn, logits, b, n)
        return edges

    def _score_children(
        self,
        edges: torch.Tensor,
        trie: SIDTrie,
        step_fn: StepLogits,
        logits: torch.Tensor,
        prompts: torch.Tensor,
        nodes: torch.Tensor,
    ) -> None:
        """Write the log-probabilities of ``nodes``' children (rows of ``logits``) into ``edges``."""
        kids = trie.children(nodes)
        log_probs = child_log_probs(logits, kids, self.score_mode, step_fn.token_column)
        rows = prompts[:, None].expand_as(kids.nodes)
        edges[rows[kids.valid], kids.nodes[kids.valid]] = log_probs[kids.valid]
