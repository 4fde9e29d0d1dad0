"""In-framework baselines, evaluated on the same split and protocol as the LLM.

``BASELINES`` maps a name to a class; ``BASELINES.get(name)(**params)`` gives an object
with one method::

    evaluate(split, examples, ks, exclude=None) -> {"<part>/<metric>": value}

``examples`` maps a part name (``"valid"``, ``"test"``) to its examples; ``exclude``
(optional) maps the same names to per-example lists of items never to recommend
(``eval.mask_history``). Models that learn fit on ``split`` first (train examples, early
stopping on ``split.valid``) and add ``fit/...`` entries (epochs run, best epoch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from semrec.cf import GRU4Rec, SASRec
from semrec.data.split import Example, Split
from semrec.evaluation.popularity import evaluate_popularity
from semrec.registry import Registry


class Baseline(Protocol):
    def evaluate(
        self,
        split: Split,
        examples: Mapping[str, Sequence[Example]],
        ks: Sequence[int],
        exclude: Mapping[str, Sequence[Sequence[int]] | None] | None = None,
    ) -> dict[str, float]: ...


BASELINES: Registry[type[Baseline]] = Registry("baseline")


@BASELINES.register("popularity")
class Popularity:
    """Every user gets the items most frequent in training (see :mod:`.popularity`)."""

    def evaluate(
        self,
        split: Split,
        examples: Mapping[str, Sequence[Example]],
        ks: Sequence[int],
        exclude: Mapping[str, Sequence[Sequence[int]] | None] | None = None,
    ) -> dict[str, float]:
        out: dict[str, float] = {}
        for part, part_examples in examples.items():
            banned = (exclude or {}).get(part)
            scores = evaluate_popularity(
                split,
                list(part_examples),
                list(ks),
                None if banned is None else [list(b) for b in banned],
            )
            out.update({f"{part}/{name}": value for name, value in scores.items()})
        return out


BASELINES.register("sasrec")(SASRec)
BASELINES.register("gru4rec")(GRU4Rec)
