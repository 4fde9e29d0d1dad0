"""Item tokenizers: turn item embeddings into short semantic IDs (SIDs).

Importing this package registers the built-in tokenizers in :data:`TOKENIZERS`.
(The package lives inside ``semrec``: a top-level ``tokenizers`` would shadow Hugging
Face's ``tokenizers``, which ``transformers`` imports.)
"""

from semrec.tokenizers.base import (
    TOKENIZERS,
    FittedCodes,
    ItemTokenizer,
    PrecomputedTokenizer,
    SIDConflictWarning,
    load_tokenizer,
)
from semrec.tokenizers.rqkmeans import RQKMeansTokenizer

TOKENIZERS.plan("rqvae_usm", "LC-Rec RQ-VAE with uniform semantic mapping, issue #4")
TOKENIZERS.plan("behavior_codebook", "Semantic Convergence alignment tokenization")
TOKENIZERS.plan("ulmrec_user", "ULMRec user indices")
TOKENIZERS.plan("ttds", "TTDS twin-tower dynamic tokenizer")

__all__ = [
    "TOKENIZERS",
    "FittedCodes",
    "ItemTokenizer",
    "PrecomputedTokenizer",
    "RQKMeansTokenizer",
    "SIDConflictWarning",
    "load_tokenizer",
]
