"""LlamaRec-style verbalizer: rank lettered candidates by their letters' LM-head logits.

The prompt lists the candidates as ``(A) ... (T)``; the answer is one letter. At the
answer position (the last prompt token) the model's logit of each letter token is that
candidate's score: one forward pass per prompt, no generation, no extra parameters.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence

import torch
from torch import nn

from semrec.decoding.model_calls import prompt_positions


def candidate_letters(n: int) -> list[str]:
    """``["A", "B", ...]`` for ``n`` candidates (at most 26)."""
    if not 1 <= n <= 26:
        raise ValueError(f"candidate letters go from A to Z: 1..26 candidates, got {n}")
    return list(string.ascii_uppercase[:n])


def letter_token_ids(response_ids: Callable[[str], list[int]], letters: Sequence[str]) -> list[int]:
    """The token id of each letter as a response (``response_ids(letter)`` = [id, eos]).

    Raises ``ValueError`` when a letter is not one token of its own, or two letters share one.
    """
    ids = []
    for letter in letters:
        tokens = response_ids(letter)[:-1]  # the EOS that ends every response
        if len(tokens) != 1:
            raise ValueError(
                f"the verbalizer needs each candidate letter to be one token; {letter!r} is "
                f"{len(tokens)} tokens {tokens} in this tokenizer"
            )
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"candidate letters share tokens: {dict(zip(letters, ids))}")
    return ids


class VerbalizerRanker:
    """Scores the candidates of left-padded prompts by the logits of ``letter_ids``."""

    def __init__(self, letter_ids: Sequence[int]) -> None:
        self.letter_ids = torch.tensor(list(letter_ids), dtype=torch.long)

    @torch.no_grad()
    def scores(
        self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """FloatTensor [B, n_letters]: the letter logits at each prompt's last position."""
        was_training = model.training
        model.eval()
        try:
            positions, _ = prompt_positions(attention_mask)
            logits = model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=positions
            ).logits[:, -1]
        finally:
            model.train(was_training)
        return logits[:, self.letter_ids.to(logits.device)].float()

    def rank(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        candidates: torch.Tensor,
    ) -> torch.Tensor:
        """Candidates [B, C] (letter order, ``-1`` padded) reordered best first; ``-1`` last."""
        width = candidates.shape[1]
        if width > len(self.letter_ids):
            raise ValueError(f"{width} candidates but only {len(self.letter_ids)} letters")
        scores = self.scores(model, input_ids, attention_mask)[:, :width].cpu()
        candidates = candidates.cpu()
        scores[candidates < 0] = float("-inf")
        order = scores.argsort(dim=1, descending=True, stable=True)
        return candidates.gather(1, order)
