"""Per-token log-probabilities of SID completions, each prompt encoded once, and the frozen
reference model they are compared with.

A GRPO group is ``G`` completions of one prompt. :func:`completion_log_probs` runs the
prompt once (with gradients), repeats its KV cache for the ``G`` completions and runs only
their SID tokens, as the beam search shares a prompt's cache among its beams: a group costs
one prompt encoding, not ``G``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from semrec.decoding.model_calls import (
    cache_argument,
    check_prompts,
    gather_cache_rows,
    last_logits_only,
    prompt_positions,
    returned_cache,
)


def completion_log_probs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completions: torch.Tensor,
    output_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """``log p(token | prompt, earlier tokens)`` ``[B, G, L]`` of ``completions`` ``[B, G, L]``.

    Prompts ``input_ids`` ``[B, T]`` are left padded. The softmax runs over the whole
    vocabulary, or over ``output_ids`` (sorted token ids) only, as a ``train.softmax:
    sid_tokens`` training scores. Gradients flow unless the caller disables them. Token ids
    of empty slots must still be valid ids (e.g. a pad token); mask their log-probs out.
    """
    batch, group, length = completions.shape
    mask = check_prompts(input_ids, attention_mask)
    positions, lengths = prompt_positions(mask)
    cache_name = cache_argument(model)
    prefill = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **{cache_name: None},
        **last_logits_only(model),
    )
    rows = torch.arange(batch, device=input_ids.device).repeat_interleave(group)
    logits = [prefill.logits[:, -1][rows, None]]
    flat = completions.reshape(batch * group, length)
    if length > 1:
        cache = gather_cache_rows(returned_cache(prefill), rows)
        steps = torch.arange(length - 1, device=input_ids.device)
        out = model(
            input_ids=flat[:, :-1],
            attention_mask=torch.cat([mask[rows], torch.ones_like(flat[:, :-1])], dim=1),
            position_ids=lengths[rows, None] + steps,
            use_cache=True,
            **{cache_name: cache},
        )
        logits.append(out.logits)
    scores = torch.cat(logits, dim=1).float()
    targets = flat
    if output_ids is not None:
        output_ids = output_ids.to(scores.device)
        scores = scores[..., output_ids]
        targets = torch.searchsorted(output_ids, flat).clamp(max=len(output_ids) - 1)
    picked = scores.log_softmax(dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    return picked.view(batch, group, length)


class FrozenReference:
    """The model as it is now (after SFT), kept as the reference of post-training.

    Only the trainable tensors are copied (LoRA matrices and SID rows for an LLM; the whole
    scratch model): the frozen base is shared, so there is no second model in memory. With
    LoRA, disabling the adapter is not the reference here, since SFT trained the adapter
    itself. :meth:`weights` swaps the copies in for a block (no gradients) and puts the
    current values back after it.
    """

    def __init__(self, model: nn.Module) -> None:
        self.state = {
            name: param.detach().clone()
            for name, param in model.named_parameters()
            if param.requires_grad
        }
        if not self.state:
            raise ValueError("the model has no trainable parameters to post-train")

    @contextlib.contextmanager
    def weights(self, model: nn.Module) -> Iterator[None]:
        """Inside the block ``model`` computes as the reference (eval mode, no grad)."""
        params = dict(model.named_parameters())
        missing = sorted(set(self.state) - set(params))
        if missing:
            raise KeyError(f"the model has no parameters {missing[:3]} of the reference")
        current = {name: params[name].detach().clone() for name in self.state}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for name, value in self.state.items():
                    if value.device != params[name].device:
                        self.state[name] = value = value.to(params[name].device)
                    params[name].copy_(value)
                yield
        finally:
            with torch.no_grad():
                for name, value in current.items():
                    params[name].copy_(value)
            model.train(was_training)
