"""An unfitted item tokenizer from ``tokenizer:``."""

from __future__ import annotations

from semrec.config import TokenizerConfig
from semrec.data import RecDataset
from semrec.run_directory import RunError
from semrec.tokenizers import TOKENIZERS, ItemTokenizer


def new_tokenizer(cfg: TokenizerConfig, dataset: RecDataset) -> ItemTokenizer:
    """The registered tokenizer ``cfg.name``; ``precomputed`` defaults to the dataset's SIDs."""
    params = dict(cfg.params)
    if cfg.name == "precomputed" and params.get("index") is None:
        sids = dataset.precomputed_sids
        if sids is None:
            raise RunError(
                f"tokenizer 'precomputed' needs SIDs: dataset {dataset.source} has no index "
                "file; set tokenizer.params.index to an LC-Rec index.json"
            )
        params["index"] = sids
    return TOKENIZERS.get(cfg.name)(**params)
