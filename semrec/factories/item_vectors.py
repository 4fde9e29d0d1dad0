"""The vectors a run's tokenizer reads: embedder output, cold-start fill-in, LLM targets.

:class:`ItemVectors` builds the configured embedder (``embedder:``; ``text``, alone or as a
``hybrid``'s part, uses the ``encoder:`` section), reads its output through the embedding
cache, and, with ``embedder.cold_start: text``, gives items without a training interaction
vectors from a text-to-CF regressor fitted on the warm items
(:mod:`semrec.embedders.cold_start`). It also embeds the texts of new items (``semrec
add-items``) into the same space.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any

import torch

from semrec.config import ExperimentConfig
from semrec.errors import RunError
from semrec.factories.data import PreparedData


class ItemVectors:
    """The item vectors of one run's data under its ``embedder:`` and ``encoder:`` config."""

    def __init__(
        self, config: ExperimentConfig, data: PreparedData, echo: Callable[[str], None] = print
    ) -> None:
        self.config = config
        self.data = data
        self.echo = echo

    @cached_property
    def embedder(self):
        """The configured item embedder, built by :meth:`build_embedder`."""
        cfg = self.config.items.embedder
        return self.build_embedder(cfg.name, cfg.params)

    def build_embedder(self, name: str, params: dict[str, Any]):
        """An item embedder as this run builds it: ``text`` with the ``encoder:`` section, a
        learned CF model seeded by the run, and a ``hybrid``'s parts the same way."""
        from semrec.embedders import ITEM_EMBEDDERS, HybridEmbedder, TextEmbedder

        if name == "text":
            if params:
                raise ValueError(
                    "the text embedder takes its encoder from the encoder: section "
                    "(encoder.name, encoder.params); leave its params empty"
                )
            return TextEmbedder(self.text_encoder())
        factory = ITEM_EMBEDDERS.get(name)
        params = dict(params)
        if factory.seeded_by_run:
            params.setdefault("seed", self.config.seed)
        if issubclass(factory, HybridEmbedder):
            params["build"] = self.build_embedder
        return factory(**params)

    def text_encoder(self):
        """The ``encoder:`` section's text encoder (its model loads on the first encode)."""
        from semrec.text.encoders import build_text_encoder

        encoder = self.config.encoder
        return build_text_encoder(encoder.name, **encoder.params)

    def data_fingerprint(self) -> Any:
        """What the embedder reads of the data beyond the item texts (None for text)."""
        if not self.embedder.uses_interactions:
            return None
        d = self.data
        return self.embedder.data_fingerprint(d.dataset, d.split, d.item_texts)

    @cached_property
    def embedder_output(self) -> torch.Tensor:
        """The embedder's own item vectors [n_items, d], from its cache when it has run before."""
        from semrec.embedders import embed_cached

        d = self.data
        return embed_cached(self.embedder, d.dataset, d.split, d.item_texts)

    @cached_property
    def cold_start_regressor(self):
        """``embedder.cold_start: text``: the text-to-CF regressor fitted on the warm items."""
        from semrec.data.split import items_in_train
        from semrec.embedders import TextToCF

        warm = torch.from_numpy(items_in_train(self.data.split))
        cf = self.embedder_output[warm]
        return TextToCF(seed=self.config.seed).fit(self.text_embeddings()[warm], cf)

    def item_embeddings(self) -> torch.Tensor:
        """The tokenizer's input [n_items, d]: embedder output, cold items filled from text."""
        from semrec.data.split import items_in_train

        embeddings = self.embedder_output.clone()
        name = self.config.items.embedder.name
        source = f"{name} ({self.config.encoder.name})" if name == "text" else name
        note = ""
        if self.embedder.uses_interactions:
            cold = torch.from_numpy(~items_in_train(self.data.split))
            note = f"; {int(cold.sum())} items without train interactions"
            if self.config.items.embedder.cold_start == "text" and bool(cold.any()):
                regressor = self.cold_start_regressor
                embeddings[cold] = regressor.predict(self.text_embeddings()[cold])
                r2 = regressor.validation_r2
                fit = f"; cross-validated R^2 on the warm items {r2:.2f}" if r2 is not None else ""
                note += (
                    " got vectors from a text-to-CF ridge regressor "
                    f"({self.config.encoder.name}{fit})"
                )
        self.echo(f"[embed] {source}: {tuple(embeddings.shape)} item embeddings{note}")
        return embeddings

    def text_embeddings(self, texts: list[str] | None = None) -> torch.Tensor:
        """The ``encoder:`` section's embeddings of ``texts`` (default: the item texts), cached."""
        from semrec.text.encoders import encode_cached

        return encode_cached(self.text_encoder(), self.data.item_texts if texts is None else texts)

    def llm_alignment_targets(self) -> torch.Tensor:
        """Each item's mean LLM input embedding over its text (a tokenizer's LLM alignment).

        The LLM is the run's backbone (its tokenizer and input embeddings); the scratch
        backbone reads no text, so its runs align to the embedded SmolLM2's instead. Cached
        like any text embedding.
        """
        from semrec.text.encoders import LLMMeanEncoder, encode_cached

        backbone = self.config.model.backbone
        source = "embedded" if backbone == "scratch" else backbone
        targets = encode_cached(LLMMeanEncoder(source, layer="input"), self.data.item_texts)
        note = " (the scratch backbone reads no text)" if backbone == "scratch" else ""
        self.echo(
            f"[tokenize] LLM alignment targets: mean input embeddings of {source}{note} over "
            f"the item texts, {tuple(targets.shape)}"
        )
        return targets

    def new_item_vectors(
        self, records: list[dict[str, Any]], texts: list[str | None], source: str
    ) -> torch.Tensor:
        """Vectors in the tokenizer's input space for new items (``semrec add-items``).

        A record's own ``embedding`` is used as given; the others are embedded from their
        ``texts`` (through the cold-start regressor for a CF embedder).
        """
        given = [record.get("embedding") for record in records]
        missing = [i for i, vector in enumerate(given) if vector is None]
        width = self.embedder_output.shape[1]  # the space the tokenizer was fitted in
        for record, vector in zip(records, given):
            if vector is not None and len(vector) != width:
                raise RunError(
                    f"{source}: item {record['id']!r} has an 'embedding' of {len(vector)} "
                    f"numbers; the tokenizer was fitted on {width}-number item vectors"
                )
        if missing:
            missing_texts = [texts[i] for i in missing]
            if not self.embedder.uses_interactions:
                from_text = self.text_embeddings(missing_texts)
            elif self.config.items.embedder.cold_start == "text":
                from_text = self.cold_start_regressor.predict(self.text_embeddings(missing_texts))
            else:
                raise RunError(
                    f"{source}: item {records[missing[0]]['id']!r} has no 'embedding', and a "
                    f"{self.config.items.embedder.name} embedder cannot embed an item without "
                    "interactions; give each new item an 'embedding', or fit the run with "
                    "embedder.cold_start: text"
                )
        vectors = torch.zeros(len(records), width)
        for i, vector in enumerate(given):
            if vector is not None:
                vectors[i] = torch.tensor(vector, dtype=torch.float32)
        if missing:
            vectors[missing] = from_text
        return vectors
