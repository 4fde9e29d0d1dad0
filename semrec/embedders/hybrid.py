"""``hybrid``: a text embedder's and a CF embedder's item vectors, standardised and concatenated.

For sparse data (a handful of interactions per user) co-occurrence or CF vectors are thin,
while item titles carry more; the hybrid lets the tokenizer see both. Each part is
standardised first, so that neither dominates by scale alone: every column is centred, then
the part is divided by its mean row norm (after centring, the mean item is at the origin and
the average item at distance 1 from it). The parts are multiplied by ``sqrt(text_weight)``
and ``sqrt(1 - text_weight)`` and concatenated, so the squared distance of two items is
``text_weight * d_text**2 + (1 - text_weight) * d_cf**2``, the weighted sum of their
standardised parts' squared distances.

Config::

    items:
      embedder:
        name: hybrid
        params:
          text: {name: text}                               # the encoder: section
          cf: {name: cooccurrence, params: {dim: 64}}
          text_weight: 0.5
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch

from semrec.artifacts import content_hash
from semrec.data.dataset import RecDataset
from semrec.data.split import Split
from semrec.embedders.base import ITEM_EMBEDDERS, ItemEmbedder, build_item_embedder, embed_cached

WHERE = "items.embedder.params"
"""Where a run's config holds a hybrid's params (its error messages name keys under it)."""

PART_KEYS = ("name", "params")

PartBuilder = Callable[[str, dict[str, Any]], ItemEmbedder]
"""Builds a part from its registry name and params (a run's builder gives ``text`` the
``encoder:`` section and seeds learned CF models)."""


def build_by_name(name: str, params: dict[str, Any]) -> ItemEmbedder:
    """The default :data:`PartBuilder`: :func:`~semrec.embedders.base.build_item_embedder`."""
    return build_item_embedder(name, **params)


def checked_text_weight(value: object) -> float:
    """``text_weight`` as a float; ``ValueError`` naming the key unless a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{WHERE}.text_weight must be a number in [0, 1], got {value!r}")
    return float(value)


def standardized(vectors: torch.Tensor) -> torch.Tensor:
    """``vectors`` with every column centred and divided by the mean row norm (float64)."""
    centred = vectors.double() - vectors.double().mean(dim=0)
    scale = centred.norm(dim=1).mean()
    if not scale > 0:
        raise ValueError("all items have the same vector")
    return centred / scale


@ITEM_EMBEDDERS.register("hybrid")
class HybridEmbedder(ItemEmbedder):
    """Weighted concatenation of two standardised item embedders (see the module docs).

    Args:
        text: the text part, ``{name: <item embedder>, params: {...}}`` (default
            ``{name: text}``, the run's ``encoder:`` section) or a built embedder.
        cf: the collaborative part, in the same form (default ``{name: cooccurrence}``).
        text_weight: in [0, 1]; the text part's share of the squared distances. A part with
            weight 0 is left out (not computed), so 1 gives the standardised text vectors
            and 0 the standardised CF vectors.
        build: how a part given as ``{name, params}`` is built (a run passes its own
            builder; not a config key).

    The parts go through :func:`~semrec.embedders.base.embed_cached` (so each is cached on
    its own and reused across weights); the combination is cheap and not stored again.
    ``uses_interactions`` is true when a part uses them, and the data fingerprint and cache
    key cover both parts and the weight.
    """

    uses_interactions: ClassVar[bool] = True  # per instance: whether a part does
    caches_itself: ClassVar[bool] = True

    @classmethod
    def parameter_names(cls) -> list[str]:
        """The keys ``items.embedder.params`` may hold (``build`` is not one)."""
        return ["text", "cf", "text_weight"]

    def __init__(
        self,
        text: Mapping[str, Any] | ItemEmbedder | None = None,
        cf: Mapping[str, Any] | ItemEmbedder | None = None,
        text_weight: float = 0.5,
        *,
        build: PartBuilder = build_by_name,
    ) -> None:
        self.text_weight = checked_text_weight(text_weight)
        self.text = _part("text", {"name": "text"} if text is None else text, build)
        self.cf = _part("cf", {"name": "cooccurrence"} if cf is None else cf, build)
        self.uses_interactions = self.text.uses_interactions or self.cf.uses_interactions

    def weighted_parts(self) -> list[tuple[str, ItemEmbedder, float]]:
        """(key, part, weight) of the parts with a weight above 0, text first."""
        parts = [("text", self.text, self.text_weight), ("cf", self.cf, 1.0 - self.text_weight)]
        return [(key, part, weight) for key, part, weight in parts if weight > 0]

    def cache_key(self) -> dict[str, Any]:
        return {
            "text": _part_key(self.text),
            "cf": _part_key(self.cf),
            "text_weight": self.text_weight,
        }

    def data_fingerprint(self, dataset: RecDataset, split: Split, item_texts: list[str]) -> str:
        return content_hash(
            self.text.data_fingerprint(dataset, split, item_texts),
            self.cf.data_fingerprint(dataset, split, item_texts),
        )

    def embed(self, dataset: RecDataset, split: Split, item_texts: list[str]) -> torch.Tensor:
        blocks = []
        for key, part, weight in self.weighted_parts():
            vectors = embed_cached(part, dataset, split, item_texts)
            try:
                blocks.append(standardized(vectors) * weight**0.5)
            except ValueError as err:
                raise ValueError(
                    f"{WHERE}.{key}: the {type(part).__name__} vectors cannot be "
                    f"standardised: {err}"
                ) from None
        return torch.cat(blocks, dim=1).float()


def _part(key: str, spec: Mapping[str, Any] | ItemEmbedder, build: PartBuilder) -> ItemEmbedder:
    """The part ``key`` of a hybrid: built from ``{name, params}``, or given built."""
    if isinstance(spec, ItemEmbedder):
        return spec
    where = f"{WHERE}.{key}"
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ValueError(
            f"{where}: expected {{name: <item embedder>, params: {{...}}}}, got {spec!r}"
        )
    unknown = sorted(set(spec) - set(PART_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; a part has {', '.join(PART_KEYS)}")
    name, params = spec["name"], spec.get("params") or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"{where}.params: expected a mapping, got {params!r}")
    try:
        factory = ITEM_EMBEDDERS.get(name)
    except KeyError as err:
        raise ValueError(f"{where}.name: {err}") from None
    if issubclass(factory, HybridEmbedder):
        raise ValueError(f"{where}.name: a part of a hybrid cannot be a hybrid itself")
    try:
        return build(name, dict(params))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def _part_key(part: ItemEmbedder) -> dict[str, Any]:
    return {"embedder": type(part).__qualname__, **part.cache_key()}
