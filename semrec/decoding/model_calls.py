"""Model calls shared by the beam search and the exact ranker.

Plumbing around a Hugging Face causal LM that must hold across transformers versions
(>= 4.56 up to 5.x):

- the KV cache goes in under the name the model's ``forward`` declares (``cache`` from
  transformers 5.x, ``past_key_values`` before) and is read back from the output under
  either name (:func:`cache_argument`, :func:`returned_cache`);
- caches are reshaped through the public ``Cache`` API only (``reorder_cache``, which
  every transformers ``Cache`` has had since 4.36; :func:`gather_cache_rows`);
- :class:`StepLogits` returns last-position logits, optionally only the SID rows of the
  output layer; :func:`child_log_probs` turns them into per-child log-probabilities for
  both score modes.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from semrec.decoding.trie import Children, SIDTrie

ScoreMode = Literal["full_vocab", "renormalized"]
SCORE_MODES: tuple[str, ...] = ("full_vocab", "renormalized")
NEG_INF = float("-inf")
LOWEST = torch.finfo(torch.float32).min
"""Selection key for a real item whose score is -inf/NaN: below every finite score, above
"no item" (-inf)."""

# ---------------------------------------------------------------------- the cache argument


def cache_argument(model: nn.Module) -> str:
    """Keyword under which ``model.forward`` takes the KV cache: ``cache`` or ``past_key_values``.

    The signature of the real forward is read (peft wrappers unwrapped; decorators that
    keep ``__wrapped__`` are seen through). A forward taking only ``**kwargs`` (a wrapper
    that passes them on) gets the name the installed transformers uses.
    """
    parameters = inspect.signature(_unwrap_peft(model).forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    return installed_cache_argument()


@functools.cache
def installed_cache_argument() -> str:
    """``cache`` if the installed transformers' Llama forward declares it, else ``past_key_values``."""
    from transformers import LlamaForCausalLM

    parameters = inspect.signature(LlamaForCausalLM.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def returned_cache(output: Any) -> Any:
    """The KV cache in a model output (``.cache`` or ``.past_key_values``); raises if none."""
    found = getattr(output, "cache", None)
    if found is None and "cache" not in getattr(output, "__dataclass_fields__", {}):
        found = getattr(output, "past_key_values", None)  # transformers < 5: no `cache` field
    if found is None:
        raise RuntimeError(
            f"the model returned no KV cache ({type(output).__name__} has neither .cache nor "
            ".past_key_values) although use_cache=True was passed"
        )
    return found


def gather_cache_rows(kv_cache: Any, index: torch.Tensor, *, copy_first: bool = False) -> Any:
    """The cache with row ``i`` holding old row ``index[i]`` (rows may repeat).

    Uses ``Cache.reorder_cache``, in place unless ``copy_first`` (then a deep copy is
    reordered and returned, and ``kv_cache`` is left as it was).
    """
    if not hasattr(kv_cache, "reorder_cache"):
        raise TypeError(
            f"the model returned a {type(kv_cache).__name__} cache, which cannot be reordered "
            "(expected a transformers Cache with reorder_cache)"
        )
    if copy_first:
        kv_cache = copy.deepcopy(kv_cache)
    kv_cache.reorder_cache(index)
    return kv_cache


# ---------------------------------------------------------------------- model calls


class StepLogits:
    """Calls the model on new tokens; returns the LAST position's logits and the cache.

    With ``sid_rows_only`` the logits are over the trie's SID tokens only (column ``j`` is
    token ``trie.sid_token_ids[j]``; ``token_column`` maps token ids to columns).
    """

    def __init__(self, model: nn.Module, trie: SIDTrie, sid_rows_only: bool = False) -> None:
        self.model = model
        self.token_column: torch.Tensor | None = None
        self._call: Callable[..., tuple[torch.Tensor, Any]]
        if not sid_rows_only:
            self._cache_name = cache_argument(model)
            self._kwargs = last_logits_only(model)
            self._call = self._full_call
            return
        causal_lm = _unwrap_peft(model, sid_rows_only=True)
        _check_plain_head(causal_lm)
        self._body = causal_lm.base_model
        if self._body is causal_lm:
            raise TypeError(
                f"sid_rows_only needs a causal LM with a separate body and head; "
                f"{type(causal_lm).__name__} has no base_model_prefix body"
            )
        self._cache_name = cache_argument(self._body)
        head = causal_lm.get_output_embeddings()
        check_vocabulary(trie, head.weight.shape[0])
        sid_ids = trie.sid_token_ids
        self._sid_ids = sid_ids
        self._head = head
        self._rows = head_rows(head, sid_ids)
        self.token_column = torch.zeros(trie.vocab_size, dtype=torch.long, device=sid_ids.device)
        self.token_column[sid_ids] = torch.arange(len(sid_ids), device=sid_ids.device)
        self._call = self._sliced_call

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        kv_cache: Any,
    ) -> tuple[torch.Tensor, Any]:
        """``input_ids`` ``[N, t]`` after ``kv_cache`` (None for a prefill); mask covers both."""
        return self._call(input_ids, attention_mask, position_ids, kv_cache)

    def _inputs(self, input_ids, attention_mask, position_ids, kv_cache) -> dict[str, Any]:
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            self._cache_name: kv_cache,
            "use_cache": True,
        }

    def _full_call(self, *args):
        out = self.model(**self._inputs(*args), **self._kwargs)
        return out.logits[:, -1], returned_cache(out)

    def _sliced_call(self, *args):
        out = self._body(**self._inputs(*args))
        hidden = out.last_hidden_state[:, -1]
        if self._rows is None:  # unknown head type: full head, then keep the SID columns
            return self._head(hidden)[:, self._sid_ids], returned_cache(out)
        weight, bias = self._rows
        return F.linear(hidden, weight, bias), returned_cache(out)


def child_log_probs(
    logits: torch.Tensor,
    kids: Children,
    score_mode: ScoreMode,
    token_column: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-probability of each child token ``[N, C]`` given ``logits`` ``[N, V]``.

    ``"full_vocab"``: log-softmax over the whole vocabulary; ``"renormalized"``: over the
    node's children only. Padding slots, NaNs and ``+inf`` give ``-inf``. Computed in fp32.
    """
    logits = logits.float()
    columns = kids.tokens if token_column is None else token_column[kids.tokens]
    if score_mode == "full_vocab":
        picked = logits.log_softmax(dim=-1).gather(1, columns)
    else:
        picked = logits.gather(1, columns).masked_fill(~kids.valid, NEG_INF)
        picked = picked.log_softmax(dim=-1)
    bad = ~kids.valid | picked.isnan() | (picked == float("inf"))
    return picked.masked_fill(bad, NEG_INF)


@contextlib.contextmanager
def eval_context(model: nn.Module, device: torch.device, dtype: torch.dtype | None):
    """Eval mode, no grad and autocast to ``dtype`` for the block; training mode restored.

    ``dtype=None`` turns autocast OFF, so decoding runs in the weights' precision even inside
    an outer autocast (Lightning's ``bf16-mixed`` training validates under one).
    """
    was_training = model.training
    model.eval()
    if dtype is None:
        autocast = torch.autocast(device_type=device.type, enabled=False)
    else:
        autocast = torch.autocast(device_type=device.type, dtype=dtype)
    try:
        with torch.no_grad(), autocast:
            yield
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------- checks


def check_score_mode(score_mode: str) -> None:
    if score_mode not in SCORE_MODES:
        raise ValueError(f"score_mode must be one of {SCORE_MODES}, got {score_mode!r}")


def check_vocabulary(trie: SIDTrie, n_logits: int) -> None:
    largest = int(trie.node_token.max())
    if largest >= n_logits:
        raise ValueError(
            f"the trie uses token id {largest} but the model has only {n_logits} output "
            "logits; add the SID tokens to the tokenizer and resize the model's embeddings"
        )


def check_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The attention mask as long (all ones if None); raises unless prompts are LEFT padded."""
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


def prompt_positions(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(position ids ``[B, T]`` of left-padded prompts, prompt lengths ``[B]``)."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0), attention_mask.sum(dim=1)


# ---------------------------------------------------------------------- model introspection


def _unwrap_peft(model: nn.Module, sid_rows_only: bool = False) -> nn.Module:
    """The transformers model inside a peft ``PeftModel`` (adapters stay injected)."""
    peft_config = getattr(model, "peft_config", None)
    if peft_config is not None and hasattr(model, "get_base_model"):
        active = getattr(model, "active_adapter", None)
        config = peft_config.get(active) if isinstance(peft_config, dict) else None
        if sid_rows_only and config is not None and getattr(config, "is_prompt_learning", False):
            raise TypeError(
                "sid_rows_only does not support prompt-learning peft adapters "
                f"({type(config).__name__}): they change the inputs, not only the weights"
            )
        return model.get_base_model()
    return model


def last_logits_only(model: nn.Module) -> dict[str, Any]:
    """Keyword arguments making ``model`` compute the last position's logits only (``{}``
    when its forward has no ``logits_to_keep``)."""
    parameters = inspect.signature(_unwrap_peft(model).forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}


def _check_plain_head(causal_lm: nn.Module) -> None:
    config = getattr(causal_lm, "config", None)
    for name in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        if getattr(config, name, None) not in (None, 1, 1.0):
            raise TypeError(
                f"sid_rows_only assumes logits = lm_head(hidden); {type(causal_lm).__name__} "
                f"post-processes logits (config.{name}={getattr(config, name)!r})"
            )


def head_rows(
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
