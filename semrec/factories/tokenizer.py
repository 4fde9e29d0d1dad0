"""Unfitted tokenizers: the items' from ``items.tokenizer``, the users' from ``users.tokenizer``."""

from __future__ import annotations

from semrec.config import TokenizerConfig
from semrec.data import RecDataset
from semrec.errors import RunError
from semrec.tokenizers import TOKENIZERS, ItemTokenizer
from semrec.tokenizers.base import DEFAULT_USER_PREFIXES


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


def new_user_tokenizer(cfg: TokenizerConfig) -> ItemTokenizer:
    """The registered tokenizer ``cfg.name`` for users, with the user level prefixes by default."""
    params = dict(cfg.params)
    if cfg.name == "precomputed" and params.get("index") is None:
        raise RunError(
            "users.tokenizer 'precomputed' needs users.tokenizer.params.index (a JSON file "
            "mapping user ids to SID tokens); datasets ship no user index"
        )
    params.setdefault("level_prefixes", DEFAULT_USER_PREFIXES)
    return TOKENIZERS.get(cfg.name)(**params)
