"""Candidate ranking (ULMRec, LlamaRec): a retriever proposes candidates, the LLM ranks them.

- :mod:`~semrec.ranking.candidates`: top-K candidates per example from an in-framework
  sequential recommender, fitted without the targets it proposes for;
- :mod:`~semrec.ranking.verbalizer`: scores lettered candidates by the LM-head logits of
  their letters at the answer position (no generation, no extra parameters).
"""

from semrec.ranking.candidates import CandidateSets, retrieve_candidates
from semrec.ranking.verbalizer import VerbalizerRanker, candidate_letters

__all__ = ["CandidateSets", "VerbalizerRanker", "candidate_letters", "retrieve_candidates"]
