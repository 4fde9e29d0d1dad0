"""What the data layer needs from a prompt formatter, and the padding it shares with models.

:class:`PromptEncoder` is the interface :class:`~semrec.prompts.task_pairs.TaskPairs` renders
text pairs through; the model side implements it
(:class:`~semrec.models.prompting.PromptFormatter`) and the pipeline passes one in, so
``semrec.data`` never imports ``semrec.models``.
"""

from __future__ import annotations

from typing import Protocol

import torch

IGNORE_INDEX = -100  # the label of a position the loss skips (prompt, padding)

#: one training pair as (input_ids, labels), labels ``IGNORE_INDEX`` on the prompt
EncodedPair = tuple[list[int], list[int]]


class PromptEncoder(Protocol):
    """Turns (instruction, response) texts into token ids and batches."""

    def encode_pair(self, instruction: str, response: str) -> EncodedPair:
        """(input_ids, labels) of one training pair; prompt labels are ``IGNORE_INDEX``."""
        ...

    def collate_pairs(self, encoded: list[EncodedPair]) -> dict[str, torch.Tensor]:
        """A right-padded training batch (``input_ids``, ``attention_mask``, ``labels``)."""
        ...

    def collate_packs(self, packs: list[tuple[EncodedPair, ...]]) -> dict[str, torch.Tensor]:
        """A training batch of packed pairs (:func:`~semrec.prompts.packing.collate_packs`)."""
        ...

    def prompt_ids(self, instruction: str) -> list[int]:
        """Token ids of a generation prompt."""
        ...

    def response_ids(self, response: str) -> list[int]:
        """Token ids of a response, ending with EOS."""
        ...

    def collate_prompts(self, prompt_ids: list[list[int]]) -> dict[str, torch.Tensor]:
        """A left-padded generation batch."""
        ...


def causal_attention_mask(visible: torch.Tensor) -> torch.Tensor:
    """The boolean ``[B, 1, T, T]`` attention mask (True: may attend) of a batch whose
    ``visible[b, q, k]`` says which keys each query may see besides causality.

    A query that may see nothing (padding) attends to itself, so no row is fully masked
    (SDPA returns NaN for one).
    """
    width = visible.shape[-1]
    causal = torch.ones(width, width, dtype=torch.bool, device=visible.device).tril()
    eye = torch.eye(width, dtype=torch.bool, device=visible.device)
    return ((causal & visible) | eye).unsqueeze(1)


def left_pad(prompt_ids: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of left-padded prompts (for generation)."""
    length = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompt_ids), length), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, length - len(ids) :] = torch.tensor(ids)
        attention[row, length - len(ids) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention}
