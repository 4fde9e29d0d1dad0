"""Trie-constrained beam search over item SIDs, batched over prompts.

Each prompt is encoded once (one prefill with ``use_cache=True``); its KV cache is then
gathered to the beams, so the prompt is never re-encoded per beam as ``generate()`` does.
Beam bookkeeping is all tensors: at each step the live beams' children come from the
trie's CSR table, candidates of all beams of a prompt compete in one ``topk``, and the
cache is reordered with one index per layer.

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
pruned and the result is the exact top-K.

Whatever the logits (``-inf``, NaN), only real items are returned: a candidate is a child
edge of the trie or nothing; NaN scores count as ``-inf`` and still rank above slots that
hold no item. Slots with no item (fewer than K items reachable) hold item -1, score
``-inf`` and ``valid=False``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from semrec.decoding.trie import Children, SIDTrie

try:  # transformers >= 4.56 stores caches as a list of layers
    from transformers.cache_utils import DynamicLayer
except ImportError:  # pragma: no cover - older transformers: always reorder fully
    DynamicLayer = None

ScoreMode = Literal["full_vocab", "renormalized"]
SCORE_MODES: tuple[str, ...] = ("full_vocab", "renormalized")
_NEG_INF = float("-inf")
# Selection key for a real item whose score is -inf/NaN: below every finite score, above "no item".
_LOWEST = torch.finfo(torch.float32).min


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
    """

    def __init__(
        self,
        num_beams: int = 20,
        score_mode: ScoreMode = "full_vocab",
        sid_rows_only: bool = False,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        if score_mode not in SCORE_MODES:
            raise ValueError(f"score_mode must be one of {SCORE_MODES}, got {score_mode!r}")
        if sid_rows_only and score_mode != "renormalized":
            raise ValueError(
                "sid_rows_only=True needs score_mode='renormalized': a softmax over the full "
                "vocabulary needs every row of the output layer"
            )
        self.num_beams = num_beams
        self.score_mode = score_mode
        self.sid_rows_only = sid_rows_only
        self.autocast_dtype = autocast_dtype

    def __repr__(self) -> str:
        return (
            f"ConstrainedBeamSearch(num_beams={self.num_beams}, score_mode={self.score_mode!r}, "
            f"sid_rows_only={self.sid_rows_only}, autocast_dtype={self.autocast_dtype})"
        )

    @torch.no_grad()
    def search(
        self,
        model: nn.Module,
        trie: SIDTrie,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        top_k: int = 10,
    ) -> DecodeResult:
        """Top-``top_k`` items for each LEFT-padded prompt in ``input_ids`` ``[B, T]``.

        ``model`` is a Hugging Face causal LM (or a peft model wrapping one). It is put in
        eval mode for the search and restored afterwards.
        """
        if not 1 <= top_k <= self.num_beams:
            raise ValueError(f"top_k must be in [1, num_beams={self.num_beams}], got {top_k}")
        attention_mask = _check_prompts(input_ids, attention_mask)
        device = input_ids.device
        trie = trie.to(device)
        step_fn = _StepLogits(model, trie, self.sid_rows_only)
        was_training = model.training
        model.eval()
        try:
            with self._autocast(device):
                return self._search(step_fn, trie, input_ids, attention_mask, top_k)
        finally:
            model.train(was_training)

    # ------------------------------------------------------------------ internals

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def _search(
        self,
        step_fn: _StepLogits,
        trie: SIDTrie,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        top_k: int,
    ) -> DecodeResult:
        batch, width = input_ids.shape[0], self.num_beams
        device = input_ids.device
        prompt_len = attention_mask.sum(dim=1)
        positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        logits, cache = step_fn(input_ids, attention_mask, positions, None)
        if step_fn.token_column is None:
            _check_vocabulary(trie, logits.shape[-1])

        nodes = torch.zeros(batch, 1, dtype=torch.long, device=device)  # [B, w] live trie nodes
        scores = torch.zeros(batch, 1, device=device)  # [B, w] their summed log-probs
        pool = _FinishedPool(batch, width, device)
        beam_mask = attention_mask
        for depth in range(trie.max_depth):
            live = nodes.shape[1]
            kids = trie.children(nodes.reshape(-1))
            fan = kids.tokens.shape[1]
            total = scores.reshape(-1, 1) + self._step_scores(logits, kids, step_fn.token_column)
            key = torch.where(kids.valid, total.clamp(min=_LOWEST), _NEG_INF)
            terminal = trie.is_terminal(kids.nodes)
            pool.add(
                key.masked_fill(~terminal, _NEG_INF).reshape(batch, -1),
                total.reshape(batch, -1),
                trie.item_of(kids.nodes).reshape(batch, -1),
            )

            live_key = key.masked_fill(terminal, _NEG_INF).reshape(batch, live * fan)
            if live_key.shape[1] < width:  # fewer candidates than beams: pad with nothing
                live_key = F.pad(live_key, (0, width - live_key.shape[1]), value=_NEG_INF)
            best_key, best = live_key.topk(width, dim=1)
            alive = best_key > _NEG_INF
            if not bool(alive.any()):
                break
            best = best.clamp(max=live * fan - 1)  # padded slots point at a real (dead) one
            nodes = torch.where(alive, kids.nodes.reshape(batch, -1).gather(1, best), -1)
            scores = torch.where(alive, total.reshape(batch, -1).gather(1, best), _NEG_INF)
            tokens = kids.tokens.reshape(batch, -1).gather(1, best)

            source = (torch.arange(batch, device=device)[:, None] * live + best // fan).reshape(-1)
            _reorder_cache(cache, source, input_ids.shape[1] if depth > 0 else None)
            beam_mask = torch.cat([beam_mask[source], beam_mask.new_ones(len(source), 1)], dim=1)
            step_pos = (prompt_len.repeat_interleave(width) + depth)[:, None]
            logits, cache = step_fn(tokens.reshape(-1, 1), beam_mask, step_pos, cache)
        return pool.result(top_k)

    def _step_scores(
        self, logits: torch.Tensor, kids: Children, token_column: torch.Tensor | None
    ) -> torch.Tensor:
        """Log-probability of each child token ``[N, C]``; -inf for padding slots and NaNs."""
        logits = logits.float()
        columns = kids.tokens if token_column is None else token_column[kids.tokens]
        if self.score_mode == "full_vocab":
            picked = logits.log_softmax(dim=-1).gather(1, columns)
        else:
            picked = logits.gather(1, columns).masked_fill(~kids.valid, _NEG_INF)
            picked = picked.log_softmax(dim=-1)
        bad = ~kids.valid | picked.isnan() | (picked == float("inf"))
        return picked.masked_fill(bad, _NEG_INF)


class _FinishedPool:
    """The ``width`` best finished items per prompt, kept sorted by selection key."""

    def __init__(self, batch: int, width: int, device: torch.device) -> None:
        self.width = width
        self.keys = torch.full((batch, width), _NEG_INF, device=device)
        self.scores = torch.full((batch, width), _NEG_INF, device=device)
        self.items = torch.full((batch, width), -1, dtype=torch.long, device=device)

    def add(self, keys: torch.Tensor, scores: torch.Tensor, items: torch.Tensor) -> None:
        keys = torch.cat([self.keys, keys], dim=1)
        self.keys, best = keys.topk(self.width, dim=1)
        self.scores = torch.cat([self.scores, scores], dim=1).gather(1, best)
        self.items = torch.cat([self.items, items], dim=1).gather(1, best)

    def result(self, top_k: int) -> DecodeResult:
        valid = self.keys[:, :top_k] > _NEG_INF
        return DecodeResult(
            items=torch.where(valid, self.items[:, :top_k], -1),
            scores=torch.where(valid, self.scores[:, :top_k], _NEG_INF),
            valid=valid,
        )


# ---------------------------------------------------------------------- model calls


class _StepLogits:
    """Calls the model for one prefill or decode step; returns last-position logits + cache.

    With ``sid_rows_only`` the logits are over the trie's SID tokens only (column ``j`` is
    token ``trie.sid_token_ids[j]``; ``token_column`` maps token ids to columns).
    """

    def __init__(self, model: nn.Module, trie: SIDTrie, sid_rows_only: bool) -> None:
        self.model = model
        self.token_column: torch.Tensor | None = None
        self._call: Callable[..., tuple[torch.Tensor, Any]]
        if not sid_rows_only:
            self._kwargs = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
            self._call = self._full_call
            return
        causal_lm = _unwrap_peft(model)
        _check_plain_head(causal_lm)
        self._body = causal_lm.base_model
        if self._body is causal_lm:
            raise TypeError(
                f"sid_rows_only needs a causal LM with a separate body and head; "
                f"{type(causal_lm).__name__} has no base_model_prefix body"
            )
        head = causal_lm.get_output_embeddings()
        _check_vocabulary(trie, head.weight.shape[0])
        sid_ids = trie.sid_token_ids
        self._sid_ids = sid_ids
        self._head = head
        self._rows = _head_rows(head, sid_ids)
        self.token_column = torch.zeros(trie.vocab_size, dtype=torch.long, device=sid_ids.device)
        self.token_column[sid_ids] = torch.arange(len(sid_ids), device=sid_ids.device)
        self._call = self._sliced_call

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Any,
    ) -> tuple[torch.Tensor, Any]:
        return self._call(input_ids, attention_mask, position_ids, cache)

    def _full_call(self, input_ids, attention_mask, position_ids, cache):
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            **self._kwargs,
        )
        return out.logits[:, -1], out.past_key_values

    def _sliced_call(self, input_ids, attention_mask, position_ids, cache):
        out = self._body(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        hidden = out.last_hidden_state[:, -1]
        if self._rows is None:  # unknown head type: full head, then keep the SID columns
            return self._head(hidden)[:, self._sid_ids], out.past_key_values
        weight, bias = self._rows
        return F.linear(hidden, weight, bias), out.past_key_values


def _unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft ``PeftModel`` (adapters stay injected)."""
    peft_config = getattr(model, "peft_config", None)
    if peft_config is not None and hasattr(model, "get_base_model"):
        active = getattr(model, "active_adapter", None)
        config = peft_config.get(active) if isinstance(peft_config, dict) else None
        if config is not None and getattr(config, "is_prompt_learning", False):
            raise TypeError(
                "sid_rows_only does not support prompt-learning peft adapters "
                f"({type(config).__name__}): they change the inputs, not only the weights"
            )
        return model.get_base_model()
    return model


def _check_plain_head(causal_lm: nn.Module) -> None:
    config = getattr(causal_lm, "config", None)
    for name in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        if getattr(config, name, None) not in (None, 1, 1.0):
            raise TypeError(
                f"sid_rows_only assumes logits = lm_head(hidden); {type(causal_lm).__name__} "
                f"post-processes logits (config.{name}={getattr(config, name)!r})"
            )


def _head_rows(
    head: nn.Module, ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight rows, bias rows) of ``ids`` in the effective output layer, or None if unknown."""
    if type(head) is nn.Linear:
        bias = head.bias[ids] if head.bias is not None else None
        return head.weight[ids], bias
    try:  # peft wrappers whose .weight is the effective (merged) weight
        from peft.utils.other import ModulesToSaveWrapper, TrainableTokensWrapper
    except ImportError:  # pragma: no cover - peft is a dependency
        return None
    if isinstance(head, TrainableTokensWrapper | ModulesToSaveWrapper):
        inner = head.original_module
        if (
            isinstance(head, ModulesToSaveWrapper)
            and head.active_adapters
            and not head.disable_adapters
        ):
            inner = head.modules_to_save[head.active_adapters[0]]
        if type(inner) is not nn.Linear:
            return None
        bias = inner.bias[ids] if inner.bias is not None else None
        return head.weight[ids], bias
    return None


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    forward = _unwrap_peft(model).forward if hasattr(model, "peft_config") else model.forward
    return "logits_to_keep" in inspect.signature(forward).parameters


def _reorder_cache(cache: Any, source: torch.Tensor, shared_length: int | None) -> None:
    """Gather the cache rows of ``source`` (one row per new beam), in place.

    Beams only ever descend from beams of the same prompt, and all beams of a prompt hold
    identical copies of the prompt's KV. So once the cache has one row per beam, only the
    positions from ``shared_length`` on (the generated suffix) need moving: a few tokens
    instead of the whole prompt. That shortcut is taken for plain ``DynamicLayer`` caches
    (transformers >= 4.56); anything else gets a full ``reorder_cache``.
    """
    layers = getattr(cache, "layers", None)
    if shared_length is not None and layers and all(type(lay) is DynamicLayer for lay in layers):
        for layer in layers:
            if layer.keys is None or layer.keys.dim() != 4 or len(layer.keys) != len(source):
                break
        else:
            for layer in layers:
                layer.keys[:, :, shared_length:] = layer.keys[source, :, shared_length:]
                layer.values[:, :, shared_length:] = layer.values[source, :, shared_length:]
            return
    if hasattr(cache, "reorder_cache"):
        cache.reorder_cache(source)
        return
    raise TypeError(
        f"the model returned a {type(cache).__name__} cache, which cannot be reordered for beam "
        "search (expected a transformers Cache with reorder_cache)"
    )


def _check_vocabulary(trie: SIDTrie, n_logits: int) -> None:
    largest = int(trie.node_token.max())
    if largest >= n_logits:
        raise ValueError(
            f"the trie uses token id {largest} but the model has only {n_logits} output "
            "logits; add the SID tokens to the tokenizer and resize the model's embeddings"
        )


def _check_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be [batch, length>0], got {tuple(input_ids.shape)}")
    if attention_mask is None:
        return torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
            f"{tuple(input_ids.shape)}"
        )
    mask = attention_mask.long()
    not_left_padded = (mask[:, -1] != 1) | (mask[:, 1:] < mask[:, :-1]).any(dim=1)
    if bool(not_left_padded.any()):
        rows = torch.nonzero(not_left_padded).flatten()[:5].tolist()
        raise ValueError(
            f"prompts must be LEFT padded (attention_mask 0...01...1); rows {rows} are not "
            "(set tokenizer.padding_side = 'left')"
        )
    return mask
