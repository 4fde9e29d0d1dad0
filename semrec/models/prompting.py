"""From (instruction, response) text to token ids: chat template, loss mask, padding."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from semrec.prompts.batching import IGNORE_INDEX, EncodedPair, left_pad
from semrec.prompts.packing import collate_packs

PLAIN_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"


@dataclass
class PromptFormatter:
    """The :class:`~semrec.prompts.batching.PromptEncoder` of a Hugging Face tokenizer.

    Wraps instructions in the model's chat template (or a plain one) and tokenizes.

    The response is followed by the tokenizer's EOS token; the training loss covers the
    response and that EOS only (labels of prompt and padding are ``-100``).
    """

    tokenizer: PreTrainedTokenizerBase
    use_chat_template: bool = True
    system_prompt: str | None = None
    max_prompt_tokens: int = 512

    @property
    def chat(self) -> bool:
        return self.use_chat_template and bool(getattr(self.tokenizer, "chat_template", None))

    def prompt_text(self, instruction: str) -> str:
        if not self.chat:
            return PLAIN_TEMPLATE.format(instruction=instruction)
        messages = [{"role": "user", "content": instruction}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def prompt_ids(self, instruction: str) -> list[int]:
        ids = self.tokenizer(
            self.prompt_text(instruction), add_special_tokens=not self.chat
        ).input_ids
        if len(ids) > self.max_prompt_tokens:
            raise ValueError(
                f"prompt of {len(ids)} tokens exceeds model.max_prompt_tokens="
                f"{self.max_prompt_tokens}; shorten dataset.max_history or raise the limit. "
                f"Prompt starts: {instruction[:120]!r}"
            )
        return ids

    def response_ids(self, response: str) -> list[int]:
        ids = self.tokenizer(response, add_special_tokens=False).input_ids
        return ids + [self.tokenizer.eos_token_id]

    def encode_pair(self, instruction: str, response: str) -> tuple[list[int], list[int]]:
        """(input_ids, labels) for one training pair."""
        prompt = self.prompt_ids(instruction)
        answer = self.response_ids(response)
        return prompt + answer, [IGNORE_INDEX] * len(prompt) + answer

    def collate_pairs(self, encoded: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        """Right-pad a batch of encoded pairs for teacher-forced training."""
        length = max(len(ids) for ids, _ in encoded)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(encoded), length), pad, dtype=torch.long)
        labels = torch.full((len(encoded), length), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(encoded), length), dtype=torch.long)
        for row, (ids, labs) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(labs)] = torch.tensor(labs)
            attention[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    def collate_packs(self, packs: list[tuple[EncodedPair, ...]]) -> dict[str, torch.Tensor]:
        """A batch of packed pairs: each attends only to itself (block-diagonal mask)."""
        return collate_packs(packs, self.tokenizer.pad_token_id)

    def collate_prompts(self, prompt_ids: list[list[int]]) -> dict[str, torch.Tensor]:
        """Left-pad prompts for generation."""
        return left_pad(prompt_ids, self.tokenizer.pad_token_id)
