"""Item embedders: the item vectors that tokenizers quantise into semantic IDs.

Importing this package registers the built-in embedders in :data:`ITEM_EMBEDDERS`:
``text`` (a text encoder over the item texts), ``cooccurrence`` (PPMI + SVD over the
training sequences), ``lightgcn`` (LightGCN on the train interactions), ``sasrec`` and
``gru4rec`` (a CF model fitted on train only), ``hybrid`` (a text and a CF embedder,
standardised, weighted and concatenated).
:func:`embed_cached` caches their output by content hash.
"""

from semrec.embedders.base import ITEM_EMBEDDERS, ItemEmbedder, build_item_embedder, embed_cached
from semrec.embedders.cold_start import TextToCF
from semrec.embedders.collaborative import GRU4RecEmbedder, RecommenderEmbedder, SASRecEmbedder
from semrec.embedders.cooccurrence import CooccurrenceEmbedder, cooccurrence_counts, ppmi
from semrec.embedders.hybrid import HybridEmbedder
from semrec.embedders.lightgcn import LightGCNEmbedder
from semrec.embedders.text import TextEmbedder

ITEM_EMBEDDERS.plan(
    "dccf", "DCCF (Semantic Convergence's CF model); use 'lightgcn', the graph model DCCF extends"
)

__all__ = [
    "ITEM_EMBEDDERS",
    "CooccurrenceEmbedder",
    "GRU4RecEmbedder",
    "HybridEmbedder",
    "LightGCNEmbedder",
    "ItemEmbedder",
    "RecommenderEmbedder",
    "SASRecEmbedder",
    "TextEmbedder",
    "TextToCF",
    "build_item_embedder",
    "cooccurrence_counts",
    "embed_cached",
    "ppmi",
]
