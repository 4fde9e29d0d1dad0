"""What every item embedder shares: the registry, the interface and the on-disk cache.

An item embedder turns a dataset (its item texts, or its training interactions) into one
vector per item, the table that tokenizers quantise into semantic IDs. Entries of
:data:`ITEM_EMBEDDERS` are classes built from their config ``params`` as keyword
arguments.

:func:`embed_cached` stores results under ``cache_dir()/embeddings/<hash>.safetensors``,
keyed by the embedder's class and :meth:`~ItemEmbedder.cache_key` and by a fingerprint of
exactly the data it reads (:meth:`~ItemEmbedder.data_fingerprint`): for embedders fitted
on interactions the train examples and ``num_items``, never a valid or test target.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from semrec.artifacts import cache_dir, content_hash, read_cached_tensor, write_cached_tensor
from semrec.data.dataset import RecDataset
from semrec.data.split import Split, fingerprint_examples
from semrec.registry import Registry


class ItemEmbedder(ABC):
    """Makes the item vectors [num_items, d] that a tokenizer quantises.

    ``uses_interactions``: the output depends on the split (it is fitted on
    ``split.train``, never on valid or test targets); otherwise only on the item texts.
    ``caches_itself``: :meth:`embed` already stores its result (the text embedder goes
    through :func:`~semrec.text.encoders.encode_cached`), so :func:`embed_cached` does not
    store it a second time. ``seeded_by_run``: a run passes its ``seed`` to the
    constructor unless the config's params set one (learned CF models, so that runs over
    several seeds vary the embeddings too).
    """

    uses_interactions: ClassVar[bool]
    caches_itself: ClassVar[bool] = False
    seeded_by_run: ClassVar[bool] = False

    @abstractmethod
    def embed(self, dataset: RecDataset, split: Split, item_texts: list[str]) -> torch.Tensor:
        """FloatTensor [dataset.num_items, d]; row ``i`` is item ``i``."""

    @abstractmethod
    def cache_key(self) -> dict[str, Any]:
        """JSON facts besides the data that determine the output (parameters, model id)."""

    def data_fingerprint(self, dataset: RecDataset, split: Split, item_texts: list[str]) -> str:
        """Hash of exactly the data :meth:`embed` reads.

        With ``uses_interactions``: ``split.train`` and ``split.num_items``; otherwise the
        item texts. Override in an embedder that reads anything else.
        """
        if self.uses_interactions:
            return content_hash(split.num_items, fingerprint_examples(split.train))
        return content_hash(item_texts)


ITEM_EMBEDDERS: Registry[type[ItemEmbedder]] = Registry("item embedder")


def build_item_embedder(name: str, **params: Any) -> ItemEmbedder:
    """Instantiate the item embedder registered as ``name`` with ``params``."""
    return ITEM_EMBEDDERS.get(name)(**params)


def embed_cached(
    embedder: ItemEmbedder, dataset: RecDataset, split: Split, item_texts: list[str]
) -> torch.Tensor:
    """``embedder.embed(...)``, reusing ``cache_dir()/embeddings/<hash>.safetensors`` if present.

    The hash covers the embedder's class and ``cache_key()`` and its
    :meth:`~ItemEmbedder.data_fingerprint`. Output with NaN or inf raises a ``ValueError``
    naming the first bad item, and is not cached.
    """
    if split.num_items != dataset.num_items:
        raise ValueError(
            f"split has {split.num_items} items but dataset {dataset.name!r} has "
            f"{dataset.num_items}: they come from different datasets"
        )
    if embedder.caches_itself:
        return _checked(embedder, embedder.embed(dataset, split, item_texts), dataset)
    key = {"embedder": type(embedder).__qualname__, **embedder.cache_key()}
    data = embedder.data_fingerprint(dataset, split, item_texts)
    path = cache_dir() / "embeddings" / f"{content_hash(key, data)}.safetensors"
    cached = read_cached_tensor(path, dataset.num_items)
    if cached is not None:
        return cached
    embeddings = _checked(embedder, embedder.embed(dataset, split, item_texts), dataset)
    write_cached_tensor(path, embeddings, key)
    return embeddings


def _checked(embedder: ItemEmbedder, embeddings: Any, dataset: RecDataset) -> torch.Tensor:
    """``embeddings`` as a float32 CPU tensor [num_items, d], or a ``ValueError`` saying why not."""
    name = type(embedder).__name__
    if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2:
        raise ValueError(f"{name}.embed must return a 2-D tensor, got {type(embeddings).__name__}")
    if embeddings.shape[0] != dataset.num_items:
        raise ValueError(
            f"{name}.embed returned {embeddings.shape[0]} rows for {dataset.num_items} items"
        )
    embeddings = embeddings.detach().to("cpu", torch.float32).contiguous()
    bad = (~torch.isfinite(embeddings).all(dim=1)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"{name} ({embedder.cache_key()}) returned NaN or inf embeddings for {len(bad)} of "
            f"{dataset.num_items} items, first item {bad[0]} ({dataset.item_ids[bad[0]]!r}); "
            "nothing was cached"
        )
    return embeddings
