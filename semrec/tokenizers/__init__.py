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
from semrec.tokenizers.behavior_codebook import BehaviorCodebookTokenizer
from semrec.tokenizers.lsh import DynamicLSHTokenizer, LSHTokenizer
from semrec.tokenizers.rqkmeans import RQKMeansTokenizer
from semrec.tokenizers.rqvae_usm import RandomIDTokenizer, RQVAEUSMTokenizer, VanillaIDTokenizer
from semrec.tokenizers.ttds import TTDSTokenizer
from semrec.tokenizers.ulmrec_user import ULMRecUserTokenizer

__all__ = [
    "TOKENIZERS",
    "BehaviorCodebookTokenizer",
    "DynamicLSHTokenizer",
    "FittedCodes",
    "ItemTokenizer",
    "LSHTokenizer",
    "PrecomputedTokenizer",
    "RQKMeansTokenizer",
    "RQVAEUSMTokenizer",
    "RandomIDTokenizer",
    "TTDSTokenizer",
    "ULMRecUserTokenizer",
    "VanillaIDTokenizer",
    "SIDConflictWarning",
    "load_tokenizer",
]
