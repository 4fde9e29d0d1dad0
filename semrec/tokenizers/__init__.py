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

__all__ = [
    "TOKENIZERS",
    "FittedCodes",
    "ItemTokenizer",
    "PrecomputedTokenizer",
    "RQKMeansTokenizer",
    "SIDConflictWarning",
    "load_tokenizer",
]
