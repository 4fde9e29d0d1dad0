"""One copy of each prompt's KV cache for all of its beams.

A beam search over SIDs keeps ``num_beams`` continuations of each prompt. Copying the
prompt's keys and values once per beam (what ``generate()`` and a plain cache reorder do)
makes the cache ``num_beams`` times the prompt's: about 140 MB per prompt for SmolLM2-135M
at 20 beams. Here each attention layer keeps the prompt part once, ``[B, H, T, D]``, and
only the few generated SID tokens per beam, ``[B * beams, H, d, D]``; the full keys and
values of a layer are assembled for its attention call only (one layer at a time, freed
after it) and a beam reorder moves the generated part only.

This works through the public layered ``Cache`` API of transformers (>= 4.56): the
prefill's ``DynamicLayer`` objects are replaced by :class:`SharedPrefixLayer`. Caches of
other layer types (sliding windows, quantized, linear attention) are left to the plain
per-beam copy (:func:`can_share`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer


class SharedPrefixLayer(DynamicLayer):
    """One layer's cache: the prompts' keys/values once, each beam's generated tokens.

    Beam row ``r`` continues prompt ``r // beams``; reorders (:meth:`reorder_cache`) must
    keep every beam within its prompt's block of rows, as a per-prompt beam search does.
    """

    is_croppable = False

    def __init__(self, prefix_keys: torch.Tensor, prefix_values: torch.Tensor, beams: int):
        super().__init__()
        batch, heads, _, dim = prefix_keys.shape
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values
        self.beams = beams
        self.device = prefix_keys.device
        self.keys = prefix_keys.new_empty(batch * beams, heads, 0, dim)
        self.values = prefix_values.new_empty(batch * beams, heads, 0, prefix_values.shape[-1])
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the beams' new tokens; the whole keys and values for this attention call."""
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        return self._whole(self.prefix_keys, self.keys), self._whole(
            self.prefix_values, self.values
        )

    def _whole(self, prefix: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        batch, heads, length, dim = prefix.shape
        out = prefix.new_empty(batch, self.beams, heads, length + generated.shape[-2], dim)
        out[:, :, :, :length] = prefix[:, None]
        out[:, :, :, length:] = generated.view(batch, self.beams, heads, -1, dim)
        return out.view(batch * self.beams, heads, -1, dim)

    def get_seq_length(self) -> int:
        return self.prefix_keys.shape[-2] + self.keys.shape[-2]

    def get_mask_sizes(self, query_length: int | torch.Tensor) -> tuple[int, int]:
        if isinstance(query_length, torch.Tensor):  # transformers < 5: the cache_position
            query_length = query_length.shape[0]
        return self.get_seq_length() + query_length, 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.keys = self.keys.index_select(0, beam_idx.to(self.keys.device))
        self.values = self.values.index_select(0, beam_idx.to(self.values.device))

    def _unsupported(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "a shared-prompt beam cache only appends and reorders beams within a prompt"
        )

    crop = batch_repeat_interleave = batch_select_indices = _unsupported


def can_share(kv_cache: Any) -> bool:
    """True for a layered transformers cache of plain full-attention ``DynamicLayer``s."""
    layers = getattr(kv_cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def share_prompt_cache(kv_cache: Any, beams: int) -> Any:
    """The prefill cache of ``B`` prompts as the cache of ``B * beams`` beams (beam ``r`` on
    prompt ``r // beams``), without copying the prompts' keys and values. In place."""
    kv_cache.layers = [
        SharedPrefixLayer(layer.keys, layer.values, beams) for layer in kv_cache.layers
    ]
    return kv_cache
