"""Trie-constrained decoding of item semantic IDs.

- :class:`SIDTrie`: tensor prefix trie over the valid SID token sequences;
- :class:`ConstrainedBeamSearch`: batched beam search that encodes each prompt once;
- :class:`ExactRanker`: exact scores of every item (each prompt encoded once), its top-K;
- :class:`TrieLogitsProcessor`: the same constraint inside ``model.generate()``;
- :func:`exact_item_scores`: brute-force scoring of every item (correctness reference).

Typical use (prompts LEFT padded; item ``i`` is row ``i`` of the SID token-id table)::

    trie = SIDTrie.from_sequences(sid_token_ids, vocab_size=len(tokenizer))
    decoder = ConstrainedBeamSearch(num_beams=20)
    result = decoder.search(model, trie, batch["input_ids"], batch["attention_mask"], top_k=10)
    result.items  # [B, 10] item indices, best first; result.scores their log-probabilities
    # a user's history (item ids, padded with -1) is never recommended back:
    decoder.search(model, trie, ids, mask, top_k=10, exclude_items=history)
    ExactRanker().top_k(model, trie, ids, mask, k=10)  # exact, every item scored
"""

from semrec.decoding.beam_search import ConstrainedBeamSearch, DecodeResult, ScoreMode
from semrec.decoding.exact import ExactRanker
from semrec.decoding.logits_processor import TrieLogitsProcessor, sequences_to_items
from semrec.decoding.reference import exact_item_scores
from semrec.decoding.trie import SIDTrie

__all__ = [
    "ConstrainedBeamSearch",
    "DecodeResult",
    "ExactRanker",
    "SIDTrie",
    "ScoreMode",
    "TrieLogitsProcessor",
    "exact_item_scores",
    "sequences_to_items",
]
