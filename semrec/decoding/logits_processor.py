"""The trie constraint as a Hugging Face ``LogitsProcessor``, for ``model.generate()`` users.

``generate(num_beams=W, max_new_tokens=L, length_penalty=0.0, logits_processor=[proc])``
over a fixed-length catalog ranks by the same ``full_vocab`` score as
:class:`~semrec.decoding.beam_search.ConstrainedBeamSearch`, but it prefills every prompt
once per beam; prefer the decoder. Each call re-derives every row's trie node from the
tokens generated after the prompt (a loop over at most ``max_depth`` positions, vectorised
over rows), so it is correct whatever reordering ``generate()`` does between calls.

Variable-length catalogs need an end token: pass ``eos_token_id`` and it is allowed (and
only it) once a row has spelled a whole item. Its log-probability then enters the
sequence score, which the decoder's scores do not contain.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from semrec.decoding.trie import SIDTrie


class TrieLogitsProcessor(LogitsProcessor):
    """Masks every token that does not continue the generated suffix to a real item's SID.

    Args:
        trie: the valid SIDs.
        prompt_length: padded prompt length, i.e. ``input_ids.shape[1]`` passed to generate.
        eos_token_id: end token allowed after a complete item (and for rows that have left
            the trie, so sampling never sees an all ``-inf`` row); None for fixed-length
            catalogs with ``max_new_tokens`` = SID length.
        renormalize: return ``log_softmax`` over the allowed tokens (the decoder's
            ``"renormalized"`` score when ``generate()`` passes log-probabilities, as its beam
            search does).
    """

    def __init__(
        self,
        trie: SIDTrie,
        prompt_length: int,
        eos_token_id: int | None = None,
        renormalize: bool = False,
    ) -> None:
        if prompt_length < 0:
            raise ValueError(f"prompt_length must be >= 0, got {prompt_length}")
        self.trie = trie
        self.prompt_length = prompt_length
        self.eos_token_id = eos_token_id
        self.renormalize = renormalize

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        trie = self.trie.to(scores.device)
        if input_ids.shape[1] < self.prompt_length:
            raise ValueError(
                f"TrieLogitsProcessor got sequences of length {input_ids.shape[1]} < its "
                f"prompt_length {self.prompt_length}; build one processor per prompt batch"
            )
        nodes = trie.walk(input_ids[:, self.prompt_length :])
        allowed = trie.allowed_mask(nodes, scores.shape[-1])
        if self.eos_token_id is not None:
            allowed[:, self.eos_token_id] |= trie.is_terminal(nodes) | nodes.lt(0)
        masked = scores.masked_fill(~allowed, float("-inf"))
        if self.renormalize:
            masked = masked.float().log_softmax(dim=-1).nan_to_num(nan=float("-inf"))
        return masked


def sequences_to_items(
    trie: SIDTrie, sequences: torch.Tensor, prompt_length: int
) -> torch.LongTensor:
    """Item index spelled by each generated row (tokens after ``prompt_length``), -1 if none.

    A row's item is the first complete SID it spells; anything after it (EOS, padding) is
    ignored. Rows that leave the trie or stop early map to -1.
    """
    trie = trie.to(sequences.device)
    generated = sequences[:, prompt_length:]
    nodes = torch.zeros(len(sequences), dtype=torch.long, device=sequences.device)
    items = torch.full_like(nodes, -1)
    for t in range(generated.shape[1]):  # positions, not rows
        walking = items.lt(0) & nodes.ge(0)
        nodes = torch.where(walking, trie.step(nodes, generated[:, t]), nodes)
        items = torch.where(walking, trie.item_of(nodes), items)
    return items
