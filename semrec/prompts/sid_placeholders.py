"""SID placeholders: task texts that name items and users, resolved to SIDs when batched.

With a dynamic tokenizer the SIDs change during training, so the tasks must not bake them
into an epoch's samples. They render through a :class:`~semrec.tasks.TaskContext` whose
``sids`` / ``user_sids`` are placeholders (``⟦i12⟧``, ``⟦u7⟧``), and
:class:`SIDPlaceholders` replaces them with the current SID strings at collate time. It also
says which items and users a batch mentions (the rows of the DM-VAE loss).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from semrec.tokenizers import ItemTokenizer

_PLACEHOLDER = re.compile("\u27e6([iu])(\\d+)\u27e7")


def item_placeholder(item: int) -> str:
    return f"\u27e6i{item}\u27e7"


def user_placeholder(user: int) -> str:
    return f"\u27e6u{user}\u27e7"


class SIDPlaceholders:
    """Resolves placeholders with the current codes of ``items`` (and ``users``)."""

    def __init__(self, items: ItemTokenizer, users: ItemTokenizer | None = None) -> None:
        self.tokenizers = {"i": items, "u": users}
        self._cache: dict[str, tuple[torch.Tensor, list[str]]] = {}

    def item_sids(self) -> list[str]:
        return [item_placeholder(i) for i in range(self.tokenizers["i"].n_items)]

    def user_sids(self) -> list[str] | None:
        users = self.tokenizers["u"]
        return None if users is None else [user_placeholder(u) for u in range(users.n_items)]

    def _sids(self, kind: str) -> list[str]:
        tokenizer = self.tokenizers[kind]
        if tokenizer is None:
            raise ValueError("a text names a user SID, but this run gives users no SIDs")
        codes = tokenizer.codes
        cached = self._cache.get(kind)
        if cached is None or not torch.equal(cached[0], codes):
            cached = (codes.clone(), tokenizer.sid_strings())
            self._cache[kind] = cached
        return cached[1]

    def resolve(self, text: str) -> str:
        """``text`` with every placeholder replaced by that item's or user's current SID."""
        if "\u27e6" not in text:
            return text
        tables = {
            kind: self._sids(kind) for kind in {m.group(1) for m in _PLACEHOLDER.finditer(text)}
        }
        return _PLACEHOLDER.sub(lambda m: tables[m.group(1)][int(m.group(2))], text)

    def stand_in(self, text: str) -> str:
        """``text`` with every placeholder replaced by a fixed full-length SID (code 0 at
        every level): its token count does not depend on the current codes (batch lengths
        must not, or a resumed run would batch an epoch differently)."""
        if "\u27e6" not in text:
            return text
        fixed = {}
        for kind, tokenizer in self.tokenizers.items():
            if tokenizer is not None:
                fixed[kind] = "".join(
                    tokenizer.token(level, 0) for level in range(len(tokenizer.codebook_sizes))
                )
        return _PLACEHOLDER.sub(lambda m: fixed[m.group(1)], text)

    @staticmethod
    def mentioned(texts: Sequence[str]) -> dict[str, list[int]]:
        """The items (``items``) and users (``users``) the texts name, in order of mention."""
        found: dict[str, list[int]] = {"items": [], "users": []}
        for text in texts:
            for match in _PLACEHOLDER.finditer(text):
                found["items" if match.group(1) == "i" else "users"].append(int(match.group(2)))
        return found


class ResolvingEncoder:
    """A :class:`~semrec.prompts.batching.PromptEncoder` that resolves placeholders first."""

    def __init__(self, encoder, placeholders: SIDPlaceholders) -> None:
        self.encoder = encoder
        self.placeholders = placeholders

    def encode_pair(self, instruction: str, response: str) -> tuple[list[int], list[int]]:
        resolve = self.placeholders.resolve
        return self.encoder.encode_pair(resolve(instruction), resolve(response))

    def prompt_ids(self, instruction: str) -> list[int]:
        return self.encoder.prompt_ids(self.placeholders.resolve(instruction))

    def response_ids(self, response: str) -> list[int]:
        return self.encoder.response_ids(self.placeholders.resolve(response))

    def collate_pairs(self, encoded):
        return self.encoder.collate_pairs(encoded)

    def collate_packs(self, packs):
        return self.encoder.collate_packs(packs)

    def collate_prompts(self, prompt_ids):
        return self.encoder.collate_prompts(prompt_ids)
