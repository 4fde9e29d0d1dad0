"""``text``: item vectors from a text encoder over the items' texts (no interactions)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from semrec.data.dataset import RecDataset
from semrec.data.split import Split
from semrec.embedders.base import ITEM_EMBEDDERS, ItemEmbedder
from semrec.text.encoders import TextEncoder, build_text_encoder, encode_cached


@ITEM_EMBEDDERS.register("text")
class TextEmbedder(ItemEmbedder):
    """Encodes ``item_texts`` with a text encoder, cached by :func:`encode_cached`.

    Args:
        encoder: a registered text encoder's name (built with ``encoder_params``; its model
            still loads only on the first encode), or an already-built
            :class:`~semrec.text.encoders.TextEncoder` (notebooks, tests).
        encoder_params: keyword arguments of the named encoder.
    """

    uses_interactions: ClassVar[bool] = False
    caches_itself: ClassVar[bool] = True

    def __init__(
        self,
        encoder: str | TextEncoder = "sentence_transformer",
        encoder_params: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(encoder, str):
            self.encoder = build_text_encoder(encoder, **(encoder_params or {}))
        elif encoder_params:
            raise ValueError(
                "encoder_params apply only to an encoder given by name, not to "
                f"the built {type(encoder).__name__}"
            )
        else:
            self.encoder = encoder

    def cache_key(self) -> dict[str, Any]:
        return {"encoder": self.encoder.cache_key()}

    def embed(self, dataset: RecDataset, split: Split, item_texts: list[str]) -> torch.Tensor:
        if len(item_texts) != dataset.num_items:
            raise ValueError(
                f"{len(item_texts)} item texts for the {dataset.num_items} items of "
                f"{dataset.name!r}"
            )
        return encode_cached(self.encoder, item_texts)
